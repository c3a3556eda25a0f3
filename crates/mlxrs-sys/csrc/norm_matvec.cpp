// mlxrs C layer, hand-written part: a decoder layer's residual add, RMSNorm
// and the one-row projection after them as one custom CUDA kernel,
//
//   h = x + delta;  n = rms_norm(h, norm_weight, eps);  y = n @ W.T
//
// optionally followed by the SwiGLU of a stacked gate | up projection
// (`y = silu(y[:I]) * y[I:]`). A decode step of a small model is bound by
// the host's cost per kernel (docs/performance.md), and MLX 0.32 has no op
// fusing any two of these: unfused they are three to five kernels (add,
// rms_norm, the matrix-vector product, the compiled SwiGLU), here one.
//
// Every value is MLX's own to the bit, so a model's tokens do not move:
// - the add is `x + delta` in the arrays' type (MLX's `Add`);
// - the norm is MLX's `rms_norm_small` (rms_norm.cu): its block size,
//   chunks, loads per thread, summation order and two-level warp reduction,
//   recomputed by every thread block into shared memory;
// - a dense `W` is MLX's `gemv` (gemms/gemv.cu, the kernel a one-row
//   `matmul` takes): one warp per row, lane `l` summing columns
//   `[4l, 4l + 4) + 128i` in float (2 columns where K or the weight's
//   alignment do not allow 4, as gemv picks), then a warp reduction;
// - an affine quantized `W` is MLX's `qmv` (quantized/qmm/qmv.cu, what a
//   one-row `quantized_matmul` takes on sm90 for N, K <= 16384): tiles of 16
//   (4-bit) or 8 elements per lane, dequantized as `q * scale + bias` and
//   accumulated in the activation type (4-bit) or float (8-bit), then summed
//   in float and reduced over the warp;
// - the SwiGLU is what the compiled `silu(g) * u` computes: MLX's `Sigmoid`
//   and `Multiply` functors on the rounded halves.
// Anywhere else (CPU, Metal, more than one row, shapes or layouts these
// kernels do not take, inside a transformation, `MLXRS_FUSE_NORM_MATVEC=0`)
// the call declines and the caller runs MLX's ops. Every kernel was checked
// bit for bit against MLX's ops on an H100 (session 18, docs/performance.md).
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>

#include "mlx/backend/cuda/cuda.h"
#include "private.h"

namespace mx = mlx::core;

namespace mlxrs {
namespace {

/// Whether the kernels run: `MLXRS_FUSE_NORM_MATVEC=0` turns them off (A/B
/// timing, or to rule them out); anything else leaves them on.
bool fused_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("MLXRS_FUSE_NORM_MATVEC");
    return e == nullptr || std::string(e) != "0";
  }();
  return on;
}

/// MLX's rms_norm launch for a row of `axis` elements (rms_norm.cu's
/// `dispatch_num_chunks`): threads per row and vector loads per thread.
std::pair<int, int> norm_launch(int axis, int n_reads) {
  int nvec = (axis + n_reads - 1) / n_reads;
  auto chunks = [](int n) { return n <= 1 ? 1 : (n >= 8 ? 8 : n); };
  if (axis <= n_reads * 64) {
    return {64, 1};
  } else if (nvec % 128 == 0 && nvec / 128 <= 8) {
    return {128, chunks(nvec / 128)};
  } else if (nvec % 64 == 0 && nvec / 64 <= 8) {
    return {64, chunks(nvec / 64)};
  }
  return {128, chunks((nvec + 127) / 128)};
}

const char* cuda_type(mx::Dtype t) {
  if (t == mx::bfloat16) return "__nv_bfloat16";
  if (t == mx::float16) return "__half";
  return "float";
}

/// One kernel configuration.
struct Config {
  mx::Dtype t = mx::float32;
  int k = 0;       // input width
  int rows = 0;    // output values (the gate | up width / 2 with swiglu)
  bool resid = false;
  bool swiglu = false;
  int bits = 0;    // 0: dense weight
  int group = 0;
  int npt = 1;     // dense: columns per lane per step (MLX gemv's n_per_thread)
  uint32_t eps_bits = 0;

  auto key() const {
    return std::make_tuple(static_cast<int>(t.val()), k, rows, resid, swiglu, bits, group, npt,
                           eps_bits);
  }
  bool operator<(const Config& o) const { return key() < o.key(); }

  int n_reads() const { return t == mx::float32 ? 4 : 8; }
  /// Elements per lane per tile of MLX's qmv.
  int ept() const { return (t != mx::float32 && bits <= 4) ? 16 : 8; }
  /// Output values per warp: enough blocks to fill a large GPU twice over
  /// (each block recomputes the norm, so not many more than that).
  int per_warp() const {
    // Quantized tiles hold EPT accumulators per row: fewer rows per warp.
    int cap = bits == 0 ? 4 : (swiglu ? 1 : 2);
    int per = rows / (8 * 264);
    return per < 1 ? 1 : (per > cap ? cap : per);
  }
  int blocks() const {
    int per_block = 8 * per_warp();
    return (rows + per_block - 1) / per_block;
  }
};

constexpr int kThreads = 256;  // 8 warps

/// The kernel body (`cuda_kernel` writes the signature: inputs `x`, [`d`],
/// `nw`, `w`, [`scales`, `biases`]; outputs [`h`], `y`).
std::string body(const Config& c) {
  auto [nb, nch] = norm_launch(c.k, c.n_reads());
  float eps;
  std::memcpy(&eps, &c.eps_bits, sizeof(eps));
  char eps_text[64];
  std::snprintf(eps_text, sizeof(eps_text), "%.9e", static_cast<double>(eps));
  std::string s;
  s += "  using T = " + std::string(cuda_type(c.t)) + ";\n";
  s += "  constexpr uint32_t AXIS = " + std::to_string(c.k) + ";\n";
  s += "  constexpr int ROWS = " + std::to_string(c.rows) + ";\n";
  s += "  constexpr int NB = " + std::to_string(nb) + ";\n";
  s += "  constexpr int NCH = " + std::to_string(nch) + ";\n";
  s += "  constexpr int NR = " + std::to_string(c.n_reads()) + ";\n";
  s += "  constexpr int PER = " + std::to_string(c.per_warp()) + ";\n";
  s += "  constexpr int NW = " + std::string(c.swiglu ? "2" : "1") + ";\n";
  s += "  constexpr float EPS = " + std::string(eps_text) + "f;\n";
  if (c.bits > 0) {
    s += "  constexpr int BITS = " + std::to_string(c.bits) + ";\n";
    s += "  constexpr int GS = " + std::to_string(c.group) + ";\n";
    s += "  constexpr int EPT = " + std::to_string(c.ept()) + ";\n";
  }
  // The norm: MLX's rms_norm_small on threads [0, NB), into shared memory
  // (`LOAD_H`: the residual add, written out once by block 0).
  std::string norm = R"(
  auto block = cg::this_thread_block();
  auto warp = cg::tiled_partition<32>(block);
  __shared__ __align__(32) T xs[AXIS];
  __shared__ float temp[32];
  const uint32_t tid = threadIdx.x;
  const uint32_t lane = warp.thread_rank();
  const uint32_t wid = warp.meta_group_rank();
  T hn[NCH][NR];
  float normalizer = 0;
  if (tid < NB) {
#pragma unroll
    for (int i = 0; i < NCH; i++) {
      const uint32_t base = (NB * i + tid) * NR;
#pragma unroll
      for (int j = 0; j < NR; j++) {
        const uint32_t e = base + j;
        T v = T(0);
        if (e < AXIS) {
          LOAD_H
        }
        hn[i][j] = v;
        float t = static_cast<float>(v);
        normalizer += t * t;
      }
    }
  }
  normalizer = cg::reduce(warp, normalizer, cg::plus<float>{});
  if constexpr (NB > 32) {
    if (lane == 0 && wid < NB / 32) temp[wid] = normalizer;
    block.sync();
    normalizer = lane < NB / 32 ? temp[lane] : 0.0f;
    normalizer = cg::reduce(warp, normalizer, cg::plus<float>{});
  }
  normalizer = rsqrtf(normalizer / AXIS + EPS);
  if (tid < NB) {
#pragma unroll
    for (int i = 0; i < NCH; i++) {
      const uint32_t base = (NB * i + tid) * NR;
#pragma unroll
      for (int j = 0; j < NR; j++) {
        const uint32_t e = base + j;
        if (e < AXIS) {
          float v = static_cast<float>(hn[i][j]) * normalizer;
          xs[e] = nw[e] * static_cast<T>(v);
        }
      }
    }
  }
  block.sync();
  const int out0 = (blockIdx.x * 8 + wid) * PER;
  float acc[PER * NW];
)";
  const std::string load_h = c.resid ? "v = x[e] + d[e];\n          if (blockIdx.x == 0) h[e] = v;"
                                     : "v = x[e];";
  norm.replace(norm.find("LOAD_H"), 6, load_h);
  s += norm;
  if (c.bits == 0) {
    // MLX's gemv: lane l sums columns [NPT l, NPT l + NPT) + 32 NPT i.
    s += "  constexpr int NPT = " + std::to_string(c.npt) + ";\n";
    s += R"(
  struct alignas(sizeof(T) * NPT) Vec { T v[NPT]; };
#pragma unroll
  for (int a = 0; a < PER * NW; a++) acc[a] = 0.0f;
#pragma unroll
  for (int col = NPT * lane; col < AXIS; col += 32 * NPT) {
    const Vec xv = *reinterpret_cast<const Vec*>(xs + col);
#pragma unroll
    for (int a = 0; a < PER * NW; a++) {
      const int o = out0 + a / NW;
      if (o < ROWS) {
        const Vec m = *reinterpret_cast<const Vec*>(w + size_t(o + (a % NW) * ROWS) * AXIS + col);
#pragma unroll
        for (int j = 0; j < NPT; ++j) {
          acc[a] += static_cast<float>(m.v[j]) * static_cast<float>(xv.v[j]);
        }
      }
    }
  }
)";
  } else {
    // MLX's qmv: tiles of EPT elements, `q * scale + bias`, accumulated in
    // T below 8 bits (float for float T), float from 8 bits.
    s += R"(
  constexpr bool NARROW = BITS < 8 && !cuda::std::is_same_v<T, float>;
  using Acc = cuda::std::conditional_t<NARROW, T, float>;
  constexpr int GPR = AXIS / GS;
  constexpr int ROW_BYTES = AXIS * BITS / 8;
  struct alignas(sizeof(T) * EPT) Vec { T v[EPT]; };
  Acc sums[PER * NW][EPT];
#pragma unroll
  for (int a = 0; a < PER * NW; a++) {
#pragma unroll
    for (int i = 0; i < EPT; i++) sums[a][i] = Acc(0);
  }
  auto tile = [&](int idx) {
    const Vec xv = *reinterpret_cast<const Vec*>(xs + idx);
#pragma unroll
    for (int a = 0; a < PER * NW; a++) {
      const int o = out0 + a / NW;
      if (o < ROWS) {
        const size_t row = size_t(o + (a % NW) * ROWS);
        const uint2 packed = *reinterpret_cast<const uint2*>(
            reinterpret_cast<const uint8_t*>(w) + row * ROW_BYTES + idx * BITS / 8);
        const uint8_t* qb = reinterpret_cast<const uint8_t*>(&packed);
        const T sc = scales[row * GPR + idx / GS];
        const T bi = biases[row * GPR + idx / GS];
#pragma unroll
        for (int i = 0; i < EPT; i++) {
          const uint32_t q = BITS == 4 ? ((qb[i / 2] >> (4 * (i % 2))) & 0xf) : qb[i];
          DEQUANT_FMA
        }
      }
    }
  };
  // qmv's loop over whole warp tiles, then the remainder (`has_residue_k`).
  constexpr int PER_WARP = 32 * EPT;
#pragma unroll
  for (int r = 0; r < AXIS / PER_WARP; ++r) {
    tile(lane * EPT + r * PER_WARP);
  }
  if constexpr (AXIS % PER_WARP != 0) {
    const int idx = lane * EPT + AXIS - AXIS % PER_WARP;
    if (idx < AXIS) tile(idx);
  }
#pragma unroll
  for (int a = 0; a < PER * NW; a++) {
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < EPT; i++) sum += static_cast<float>(sums[a][i]);
    acc[a] = sum;
  }
)";
    // float: fused multiply-adds (what nvcc makes of qmv's float
    // expressions); bf16 / f16: the activation type's rounded mul and add,
    // then its fma (4-bit) or a float fma (8-bit), as cutlass's Array ops.
    std::string fma;
    if (c.t == mx::float32) {
      fma = "const float wq = fmaf(static_cast<float>(q), sc, bi);\n"
            "          sums[a][i] = fmaf(xv.v[i], wq, sums[a][i]);";
    } else {
      fma = "const T wq = __hadd(__hmul(static_cast<T>(static_cast<float>(q)), sc), bi);\n";
      fma += c.bits < 8 ? "          sums[a][i] = __hfma(xv.v[i], wq, sums[a][i]);"
                        : "          sums[a][i] = fmaf(static_cast<float>(xv.v[i]), "
                          "static_cast<float>(wq), sums[a][i]);";
    }
    s.replace(s.find("DEQUANT_FMA"), 11, fma);
  }
  s += R"(
#pragma unroll
  for (int a = 0; a < PER * NW; a++) acc[a] = cg::reduce(warp, acc[a], cg::plus<float>{});
  if (lane == 0) {
#pragma unroll
    for (int p = 0; p < PER; p++) {
      const int o = out0 + p;
      if (o < ROWS) {
)";
  // The compiled `silu(g) * u`: MLX's functors on the rounded halves.
  s += c.swiglu ? R"(
        const T g = static_cast<T>(acc[p * NW]);
        const T u = static_cast<T>(acc[p * NW + 1]);
        y[o] = Multiply{}(Multiply{}(g, Sigmoid{}(g)), u);
)"
                : R"(
        y[o] = static_cast<T>(acc[p * NW]);
)";
  s += R"(
      }
    }
  }
)";
  return s;
}

/// One `cuda_kernel` per configuration, made on first use.
mx::fast::CustomKernelFunction& kernel_for(const Config& c) {
  static std::mutex mu;
  static std::map<Config, mx::fast::CustomKernelFunction> kernels;
  std::lock_guard<std::mutex> lock(mu);
  auto it = kernels.find(c);
  if (it == kernels.end()) {
    std::string name = "mlxrs_norm_matvec_" + std::to_string(static_cast<int>(c.t.val())) +
                       "_" + std::to_string(c.k) + "_" + std::to_string(c.rows) + "_" +
                       std::to_string(c.resid) + std::to_string(c.swiglu) + "_" +
                       std::to_string(c.bits) + "_" + std::to_string(c.group) + "_" +
                       std::to_string(c.npt) + "_" + std::to_string(c.eps_bits);
    std::vector<std::string> ins = {"x"};
    if (c.resid) ins.push_back("d");
    ins.push_back("nw");
    ins.push_back("w");
    if (c.bits > 0) {
      ins.push_back("scales");
      ins.push_back("biases");
    }
    std::vector<std::string> outs;
    if (c.resid) outs.push_back("h");
    outs.push_back("y");
    std::string header =
        "#include <cooperative_groups/reduce.h>\n#include <cuda/std/type_traits>\n";
    if (c.swiglu) {
      header += "#include \"mlx/backend/cuda/device/binary_ops.cuh\"\n";
      header += "#include \"mlx/backend/cuda/device/unary_ops.cuh\"\n";
    }
    auto f = mx::fast::cuda_kernel(name, ins, outs, body(c), header,
                                   /* ensure_row_contiguous = */ true);
    it = kernels.emplace(c, std::move(f)).first;
  }
  return it->second;
}

bool is_float(mx::Dtype t) {
  return t == mx::bfloat16 || t == mx::float16 || t == mx::float32;
}

bool row_major(const mx::array& a) {
  return a.flags().row_contiguous;
}

/// The fused kernel's `(h, y)` when it applies to these arrays, else
/// nothing (the caller runs MLX's ops).
std::optional<std::pair<mx::array, mx::array>> norm_matvec(
    const mx::array& x, const std::optional<mx::array>& delta, const mx::array& nw, float eps,
    const mx::array& w, const std::optional<mx::array>& scales,
    const std::optional<mx::array>& biases, int bits, int group, bool swiglu,
    mx::StreamOrDevice s) {
  auto st = mx::to_stream(s);
  if (!fused_enabled() || st.device != mx::Device::gpu || !mx::cu::is_available()) {
    return std::nullopt;
  }
  auto t = x.dtype();
  if (!is_float(t) || x.ndim() < 1 || x.size() == 0) return std::nullopt;
  int k = x.shape().back();
  // One row: MLX's one-row kernels are what this reproduces.
  if (static_cast<int64_t>(x.size()) != k || k > 8192 || !row_major(x)) return std::nullopt;
  if (nw.ndim() != 1 || nw.shape(0) != k || nw.dtype() != t || !row_major(nw)) {
    return std::nullopt;
  }
  if (delta && (delta->shape() != x.shape() || delta->dtype() != t || !row_major(*delta))) {
    return std::nullopt;
  }
  // The weights' layout decides the kernel (and MLX's: a transposed weight
  // takes another summation order), and only an evaluated array's layout
  // is known; a model's weights are. The activations' layout is known only
  // when the kernel runs: MLX copies them then if they are not row-major.
  for (const auto* a : {&w, &nw}) {
    if (!a->is_available()) return std::nullopt;
  }
  if ((scales && !scales->is_available()) || (biases && !biases->is_available())) {
    return std::nullopt;
  }
  if (w.ndim() != 2 || !row_major(w)) return std::nullopt;
  int n = w.shape(0);
  Config c;
  c.t = t;
  c.k = k;
  c.resid = delta.has_value();
  c.swiglu = swiglu;
  std::memcpy(&c.eps_bits, &eps, sizeof(eps));
  if (bits == 0) {
    if (scales || biases || w.dtype() != t || w.shape(1) != k || k % 64 != 0) {
      return std::nullopt;
    }
    // MLX's gemv: 4 columns per lane where K allows and the weight's data
    // is aligned to them, else 2 (the activation row is a fresh buffer).
    // A weight not even aligned to 2 (gemv's one-column variant, never
    // checked on a GPU) is left to MLX.
    auto aligned = [&](int cols) {
      return w.offset() % (cols * static_cast<int64_t>(t.size())) == 0;
    };
    if (!aligned(2)) return std::nullopt;
    c.npt = k % 128 == 0 && aligned(4) ? 4 : 2;
  } else {
    if ((bits != 4 && bits != 8) || (group != 32 && group != 64 && group != 128) || !scales ||
        !biases || w.dtype() != mx::uint32 || k % group != 0 ||
        static_cast<int64_t>(w.shape(1)) * 32 != static_cast<int64_t>(k) * bits) {
      return std::nullopt;
    }
    // sm90 takes MLX's qmv only up to 16384 x 16384.
    if (n > 16384 || k > 16384) return std::nullopt;
    for (const auto* a : {&*scales, &*biases}) {
      if (a->ndim() != 2 || a->shape(0) != n || a->shape(1) != k / group || a->dtype() != t ||
          !row_major(*a)) {
        return std::nullopt;
      }
    }
    // qmv reads each lane's packed tile as one 8-byte load.
    if (w.offset() % 8 != 0) return std::nullopt;
    c.bits = bits;
    c.group = group;
    if (k % c.ept() != 0) return std::nullopt;
  }
  if (swiglu && n % 2 != 0) return std::nullopt;
  c.rows = swiglu ? n / 2 : n;
  for (const auto* a : {&x, &nw, &w}) {
    if (a->is_tracer()) return std::nullopt;
  }
  if ((delta && delta->is_tracer()) || (scales && scales->is_tracer()) ||
      (biases && biases->is_tracer())) {
    return std::nullopt;
  }
  auto& kern = kernel_for(c);
  std::vector<mx::array> ins = {x};
  if (delta) ins.push_back(*delta);
  ins.push_back(nw);
  ins.push_back(w);
  if (bits > 0) {
    ins.push_back(*scales);
    ins.push_back(*biases);
  }
  mx::Shape y_shape = x.shape();
  y_shape.back() = c.rows;
  std::vector<mx::Shape> shapes;
  std::vector<mx::Dtype> dtypes;
  if (c.resid) {
    shapes.push_back(x.shape());
    dtypes.push_back(t);
  }
  shapes.push_back(y_shape);
  dtypes.push_back(t);
  auto out = kern(ins, shapes, dtypes, {c.blocks() * kThreads, 1, 1}, {kThreads, 1, 1}, {},
                  std::nullopt, false, st);
  if (c.resid) {
    return std::make_pair(out[0], out[1]);
  }
  return std::make_pair(x, out[0]);
}

}  // namespace
}  // namespace mlxrs

extern "C" int mlxrs_fast_norm_matvec(mlx_array* h, mlx_array* y, bool* fused, const mlx_array x,
                                      const mlx_array delta, const mlx_array norm_weight,
                                      float eps, const mlx_array w, const mlx_array scales,
                                      const mlx_array biases, int bits, int group_size,
                                      bool swiglu, const mlx_stream s) {
  MLXRS_TRY
  if (h == nullptr || y == nullptr || fused == nullptr) {
    throw std::invalid_argument("mlxrs: null out-pointer");
  }
  auto out = mlxrs::norm_matvec(mlxrs::arr(x), mlxrs::opt_arr(delta), mlxrs::arr(norm_weight),
                                eps, mlxrs::arr(w), mlxrs::opt_arr(scales),
                                mlxrs::opt_arr(biases), bits, group_size, swiglu,
                                mlxrs::stream(s));
  *fused = out.has_value();
  if (out) {
    mlxrs::set_arr(h, std::move(out->first));
    mlxrs::set_arr(y, std::move(out->second));
  }
  MLXRS_CATCH
}
