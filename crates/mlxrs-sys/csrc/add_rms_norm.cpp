// mlxrs C layer, hand-written part: the residual add fused into the RMSNorm
// that follows it, `h = x + delta; y = rms_norm(h, weight, eps)`, as one
// custom CUDA kernel on MLX's CUDA backend (a decoder layer's two add + norm
// pairs become two kernels instead of four: a decode step is bound by the
// host's per-kernel cost, docs/performance.md). The kernel reproduces MLX's
// own kernels bit for bit: the add is `x + delta` in the arrays' type, as
// MLX's `Add`, and the norm is MLX's `rms_norm_small` (rms_norm.cu: the same
// block size, chunks, loads per thread, summation order and two-level warp
// reduction, the same final rounding), so the tokens of a model do not move.
// Anywhere else (CPU, Metal, shapes that kernel does not take, inside a
// transformation, `MLXRS_FUSE_ADD_NORM=0`) it is MLX's `add` and
// `fast::rms_norm`.
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

/// `MLXRS_FUSE_ADD_NORM=0` turns the fused kernel off (side-by-side timing).
bool fused_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("MLXRS_FUSE_ADD_NORM");
    return e == nullptr || std::string(e) != "0";
  }();
  return on;
}

/// MLX's launch shape for a row of `axis` elements (rms_norm.cu's
/// `dispatch_num_chunks`): threads per row and vector loads per thread.
std::pair<int, int> launch_shape(int axis, int n_reads) {
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

/// The kernel body for one configuration (`cuda_kernel` adds the signature:
/// inputs `x`, `d`, `w`, outputs `h`, `y`).
std::string body(mx::Dtype t, int axis, float eps, int block, int chunks, int n_reads) {
  char eps_text[64];
  std::snprintf(eps_text, sizeof(eps_text), "%.9e", static_cast<double>(eps));
  std::string s;
  s += "  using T = " + std::string(cuda_type(t)) + ";\n";
  s += "  constexpr int BLOCK = " + std::to_string(block) + ";\n";
  s += "  constexpr int N_CHUNKS = " + std::to_string(chunks) + ";\n";
  s += "  constexpr int N_READS = " + std::to_string(n_reads) + ";\n";
  s += "  constexpr uint32_t AXIS = " + std::to_string(axis) + ";\n";
  s += "  constexpr float EPS = " + std::string(eps_text) + "f;\n";
  s += R"(
  auto block = cg::this_thread_block();
  __shared__ float temp[BLOCK / 32 > 1 ? BLOCK / 32 : 1];
  const size_t row = blockIdx.x;
  x += row * AXIS;
  d += row * AXIS;
  h += row * AXIS;
  y += row * AXIS;
  const uint32_t tid = threadIdx.x;
  T hn[N_CHUNKS][N_READS];
  float normalizer = 0;
#pragma unroll
  for (int i = 0; i < N_CHUNKS; i++) {
    const uint32_t base = (BLOCK * i + tid) * N_READS;
#pragma unroll
    for (int j = 0; j < N_READS; j++) {
      const uint32_t e = base + j;
      T v = T(0);
      if (e < AXIS) {
        v = x[e] + d[e];
        h[e] = v;
      }
      hn[i][j] = v;
      float t = static_cast<float>(v);
      normalizer += t * t;
    }
  }
  auto warp = cg::tiled_partition<32>(block);
  normalizer = cg::reduce(warp, normalizer, cg::plus<float>{});
  if constexpr (BLOCK > 32) {
    if (warp.thread_rank() == 0) {
      temp[warp.meta_group_rank()] = normalizer;
    }
    block.sync();
    normalizer = warp.thread_rank() < warp.meta_group_size() ? temp[warp.thread_rank()] : 0.0f;
    normalizer = cg::reduce(warp, normalizer, cg::plus<float>{});
  }
  normalizer = rsqrtf(normalizer / AXIS + EPS);
#pragma unroll
  for (int i = 0; i < N_CHUNKS; i++) {
    const uint32_t base = (BLOCK * i + tid) * N_READS;
#pragma unroll
    for (int j = 0; j < N_READS; j++) {
      const uint32_t e = base + j;
      if (e < AXIS) {
        float v = static_cast<float>(hn[i][j]) * normalizer;
        y[e] = w[e] * static_cast<T>(v);
      }
    }
  }
)";
  return s;
}

using Key = std::tuple<int, int, uint32_t>;  // dtype, axis, eps bits

/// One `cuda_kernel` per configuration, made on first use.
mx::fast::CustomKernelFunction& kernel_for(mx::Dtype t, int axis, float eps, int block,
                                           int chunks, int n_reads) {
  static std::mutex mu;
  static std::map<Key, mx::fast::CustomKernelFunction> kernels;
  uint32_t bits;
  std::memcpy(&bits, &eps, sizeof(bits));
  Key key{static_cast<int>(t.val()), axis, bits};
  std::lock_guard<std::mutex> lock(mu);
  auto it = kernels.find(key);
  if (it == kernels.end()) {
    std::string name = "mlxrs_add_rms_norm_" + std::to_string(static_cast<int>(t.val())) + "_" +
                       std::to_string(axis) + "_" + std::to_string(bits);
    auto f = mx::fast::cuda_kernel(name, {"x", "d", "w"}, {"h", "y"},
                                   body(t, axis, eps, block, chunks, n_reads),
                                   "#include <cooperative_groups/reduce.h>\n",
                                   /* ensure_row_contiguous = */ true);
    it = kernels.emplace(key, std::move(f)).first;
  }
  return it->second;
}

bool is_float(mx::Dtype t) {
  return t == mx::bfloat16 || t == mx::float16 || t == mx::float32;
}

/// `(h, y)`: the fused kernel when `allow` and it applies, else MLX's ops.
std::pair<mx::array, mx::array> add_rms_norm(const mx::array& x, const mx::array& delta,
                                             const mx::array& weight, float eps, bool allow,
                                             bool& fused, mx::StreamOrDevice s) {
  fused = false;
  auto st = mx::to_stream(s);
  auto t = x.dtype();
  int axis = x.ndim() > 0 ? x.shape().back() : 0;
  int n_reads = t == mx::float32 ? 4 : 8;
  bool fits = allow && fused_enabled() && st.device == mx::Device::gpu && mx::cu::is_available() &&
              is_float(t) && delta.dtype() == t && weight.dtype() == t &&
              x.shape() == delta.shape() && weight.ndim() == 1 && axis > 0 &&
              weight.shape(0) == axis && axis <= n_reads * 128 * 8 && x.size() > 0 &&
              !x.is_tracer() && !delta.is_tracer() && !weight.is_tracer();
  if (fits) {
    int64_t rows = static_cast<int64_t>(x.size()) / axis;
    auto [block, chunks] = launch_shape(axis, n_reads);
    if (rows * block <= INT32_MAX) {
      auto& k = kernel_for(t, axis, eps, block, chunks, n_reads);
      auto out = k({x, delta, weight}, {x.shape(), x.shape()}, {t, t},
                   {static_cast<int>(rows * block), 1, 1}, {block, 1, 1}, {}, std::nullopt,
                   false, st);
      fused = true;
      return {out[0], out[1]};
    }
  }
  auto h = mx::add(x, delta, st);
  return {h, mx::fast::rms_norm(h, weight, eps, st)};
}

}  // namespace
}  // namespace mlxrs

extern "C" int mlxrs_fast_add_rms_norm(mlx_array* h, mlx_array* y, const mlx_array x,
                                       const mlx_array delta, const mlx_array weight, float eps,
                                       bool allow_fused, bool* fused, const mlx_stream s) {
  MLXRS_TRY
  if (y == nullptr) {
    throw std::invalid_argument("mlxrs: null out-pointer");
  }
  bool f = false;
  auto [hv, yv] = mlxrs::add_rms_norm(mlxrs::arr(x), mlxrs::arr(delta), mlxrs::arr(weight), eps,
                                      allow_fused, f, mlxrs::stream(s));
  mlxrs::set_arr(h, std::move(hv));
  mlxrs::set_arr(y, std::move(yv));
  if (fused != nullptr) {
    *fused = f;
  }
  MLXRS_CATCH
}
