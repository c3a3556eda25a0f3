// `x @ w.T` for one or two rows of float32 on the CPU through BLAS's gemv.
//
// MLX's CPU matmul always calls sgemm; with one row (a decode step's
// Linear layers) OpenBLAS's sgemm streams the weights at about a third of
// the bandwidth its sgemv reaches (measured: 11 vs 31 GB/s on a 113 MB
// matrix, the same library). `mlxrs_matmul_t` builds a small primitive that
// calls `cblas_sgemv` (looked up at run time: whichever BLAS the process
// loaded) per row, and falls back to `matmul(x, transpose(w))` everywhere
// else (other dtypes, GPU streams, more rows, a weight that is not an
// evaluated row-contiguous matrix, no cblas_sgemv in the process).
//
// `mlxrs_quantized_matmul_t` is the same for MLX's affine-quantized
// matrices (4- and 8-bit, groups of 32/64/128: mlx-community checkpoints
// and the GGUF Q4_0/Q4_1/Q8_0 blocks they load into). MLX's CPU quantized
// matmul is a scalar loop (a 4-bit SmolLM2-135M decodes at ~7 tok/s on a
// 2-core VM where llama.cpp reaches ~150): for up to 32 float32 rows this
// runs a vectorised dot product that unpacks each group's integers once
// and applies `scale * dot + bias * sum(x)`; for more rows (prefill) it
// dequantizes the matrix to float32 and multiplies with BLAS sgemm.
#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <system_error>
#include <thread>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "private.h"

namespace mx = mlx::core;

namespace mlxrs {
namespace {

// cblas_sgemv(order, trans, m, n, alpha, a, lda, x, incx, beta, y, incy)
using SgemvFn = void (*)(int, int, int, int, float, const float*, int,
                         const float*, int, float, float*, int);
constexpr int kRowMajor = 101;
constexpr int kNoTrans = 111;
constexpr int kMaxRows = 2;

SgemvFn sgemv() {
  static SgemvFn f = reinterpret_cast<SgemvFn>(dlsym(RTLD_DEFAULT, "cblas_sgemv"));
  return f;
}

/// Copy the values of a possibly strided `x` in row-major order (`xs` is
/// resized); returns a pointer to contiguous values.
const float* contiguous_values(const mx::array& x, std::vector<float>& xs) {
  const float* xp = x.data<float>();
  if (x.flags().row_contiguous) {
    return xp;
  }
  xs.resize(x.size());
  const auto& shape = x.shape();
  const auto& strides = x.strides();
  std::vector<int> idx(shape.size(), 0);
  for (size_t i = 0; i < x.size(); ++i) {
    int64_t off = 0;
    for (size_t d = 0; d < shape.size(); ++d) {
      off += static_cast<int64_t>(idx[d]) * strides[d];
    }
    xs[i] = xp[off];
    for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
      if (++idx[d] < shape[d]) {
        break;
      }
      idx[d] = 0;
    }
  }
  return xs.data();
}

/// `y[m, :] = w @ x[m, :]` for the `m` rows of `x` (`[..., K]`), `w`
/// `[N, K]` row-contiguous.
class MatVecT : public mx::UnaryPrimitive {
 public:
  explicit MatVecT(mx::Stream s) : mx::UnaryPrimitive(s) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const mx::array& x = inputs[0];
    const mx::array& w = inputs[1];
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    enc.set_input_array(x);
    enc.set_input_array(w);
    enc.set_output_array(out);
    int k = static_cast<int>(w.shape(1));
    int n = static_cast<int>(w.shape(0));
    int rows = static_cast<int>(x.size() / k);
    enc.dispatch([x = mx::array::unsafe_weak_copy(x), w = mx::array::unsafe_weak_copy(w),
                  y = out.data<float>(), k, n, rows]() {
      // x may be a strided view: gather its (at most 2 x K) values.
      std::vector<float> xs;
      const float* xp = contiguous_values(x, xs);
      for (int r = 0; r < rows; ++r) {
        sgemv()(kRowMajor, kNoTrans, n, k, 1.0f, w.data<float>(), k, xp + r * k, 1, 0.0f,
                y + static_cast<int64_t>(r) * n, 1);
      }
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("mlxrs MatVecT runs on the CPU only");
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>& primals,
                             const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums,
                             const std::vector<mx::array>&) override {
    const mx::array& x = primals[0];
    const mx::array& w = primals[1];
    const mx::array& c = cotangents[0];
    std::vector<mx::array> out;
    for (int a : argnums) {
      if (a == 0) {
        out.push_back(mx::matmul(c, w, stream()));
      } else {
        int k = w.shape(1);
        int n = w.shape(0);
        auto c2 = mx::reshape(c, {-1, n}, stream());
        auto x2 = mx::reshape(x, {-1, k}, stream());
        out.push_back(mx::matmul(mx::transpose(c2, stream()), x2, stream()));
      }
    }
    return out;
  }

  const char* name() const override {
    return "MlxrsMatVecT";
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    return dynamic_cast<const MatVecT*>(&other) != nullptr;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    auto s = inputs[0].shape();
    s.back() = inputs[1].shape(0);
    return {s};
  }
};

mx::array matmul_t(const mx::array& x, const mx::array& w, mx::StreamOrDevice sd) {
  mx::Stream s = mx::to_stream(sd);
  bool fits = s.device == mx::Device::cpu && x.dtype() == mx::float32 &&
              w.dtype() == mx::float32 && w.ndim() == 2 && x.ndim() >= 1 &&
              x.shape(-1) == w.shape(1) && w.shape(1) > 0 &&
              x.size() / w.shape(1) <= kMaxRows && x.size() > 0 && w.is_available() &&
              w.flags().row_contiguous && w.shape(0) <= INT32_MAX &&
              w.shape(1) <= INT32_MAX && sgemv() != nullptr;
  if (!fits) {
    return mx::matmul(x, mx::transpose(w, s), s);
  }
  auto shape = x.shape();
  shape.back() = w.shape(0);
  return mx::array(shape, mx::float32, std::make_shared<MatVecT>(s), {x, w});
}


// Rows up to which the kernel beats dequantize + sgemm (measured on a 2-core
// VM, SmolLM2-135M Q4_1: batch-32 decode 65 vs 43 tok/s, 64 rows even, a
// 128-token prefill chunk 111 vs 170 tok/s).
constexpr int kMaxQuantRows = 32;

typedef float v8f __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef uint8_t v8b __attribute__((vector_size(8)));

/// Eight unpacked integers of one 4-bit word, or of two 8-bit words, as
/// floats (MLX's affine layout: element j at bit `bits * j`, low bits
/// first; the masked values fit an int32, whose conversion is native).
template <int bits>
__attribute__((always_inline)) inline v8f unpack8(const uint32_t* w) {
  if constexpr (bits == 4) {
    const v8u shift = {0, 4, 8, 12, 16, 20, 24, 28};
    v8u q = (v8u{w[0], w[0], w[0], w[0], w[0], w[0], w[0], w[0]} >> shift) & 15u;
    return __builtin_convertvector((v8i)q, v8f);
  } else {
    // Little-endian: the 8 bytes in memory are the 8 elements in order.
    v8b q;
    __builtin_memcpy(&q, w, sizeof(q));
    return __builtin_convertvector(__builtin_convertvector(q, v8i), v8f);
  }
}

/// `y[r, n] = sum_g scales[n, g] * dot(x[r, g], q[n, g]) + biases[n, g] *
/// sum(x[r, g])` for output columns `n0..n1`: each group's products are
/// summed in a vector, scaled, and reduced once per output.
template <int bits>
__attribute__((always_inline)) inline void qmv_body(const float* x, const float* xsum,
                                                    const uint32_t* w, const float* scales,
                                                    const float* biases, float* y, int rows,
                                                    int k, int n_out, int group, int n0, int n1) {
  const int groups = k / group;
  const int words_per_row = k * bits / 32;
  const int words_per_group = group * bits / 32;
  constexpr int words8 = bits / 4;  // words holding 8 elements
  for (int n = n0; n < n1; ++n) {
    const uint32_t* wn = w + static_cast<int64_t>(n) * words_per_row;
    const float* sn = scales + static_cast<int64_t>(n) * groups;
    const float* bn = biases + static_cast<int64_t>(n) * groups;
    for (int r = 0; r < rows; ++r) {
      const float* xr = x + static_cast<int64_t>(r) * k;
      const float* xs = xsum + static_cast<int64_t>(r) * groups;
      v8f acc = {0, 0, 0, 0, 0, 0, 0, 0};
      float bsum = 0.0f;
      for (int g = 0; g < groups; ++g) {
        const uint32_t* wg = wn + g * words_per_group;
        const float* xg = xr + g * group;
        v8f gacc = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int j = 0; j < group / 8; ++j) {
          v8f xv;
          __builtin_memcpy(&xv, xg + 8 * j, sizeof(xv));
          gacc += xv * unpack8<bits>(wg + words8 * j);
        }
        acc += gacc * sn[g];
        bsum += bn[g] * xs[g];
      }
      y[static_cast<int64_t>(r) * n_out + n] =
          ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) +
          bsum;
    }
  }
}

using QmvFn = void (*)(const float*, const float*, const uint32_t*, const float*, const float*,
                       float*, int, int, int, int, int, int);

template <int bits>
void qmv_default(const float* x, const float* xsum, const uint32_t* w, const float* scales,
                 const float* biases, float* y, int rows, int k, int n_out, int group, int n0,
                 int n1) {
  qmv_body<bits>(x, xsum, w, scales, biases, y, rows, k, n_out, group, n0, n1);
}

#if defined(__x86_64__) && defined(__GNUC__)
template <int bits>
__attribute__((target("avx2,fma"))) void qmv_avx2(const float* x, const float* xsum,
                                                  const uint32_t* w, const float* scales,
                                                  const float* biases, float* y, int rows, int k,
                                                  int n_out, int group, int n0, int n1) {
  qmv_body<bits>(x, xsum, w, scales, biases, y, rows, k, n_out, group, n0, n1);
}
#endif

/// The kernel for `bits`, compiled for AVX2 + FMA where the CPU has them.
QmvFn qmv_kernel(int bits) {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) {
    return bits == 4 ? qmv_avx2<4> : qmv_avx2<8>;
  }
#endif
  return bits == 4 ? qmv_default<4> : qmv_default<8>;
}

/// Threads for a quantized product of `work` multiply-adds: one per 1M,
/// at most the hardware's and at most 4 (each thread streams its own rows
/// of the matrix; more threads than that gain nothing on memory-bound
/// rows and cost a thread start each).
int qmv_threads(int64_t work) {
  static const int hw = std::max(1u, std::thread::hardware_concurrency());
  int64_t want = work / (1 << 20);
  return static_cast<int>(std::clamp<int64_t>(want, 1, std::min(hw, 4)));
}

/// `x @ dequantize(w).T` for up to 32 float32 rows of `x` on the CPU (MLX's
/// `quantized_matmul(x, w, scales, biases, transpose=True)`, affine).
class QuantMatVecT : public mx::UnaryPrimitive {
 public:
  QuantMatVecT(mx::Stream s, int group, int bits)
      : mx::UnaryPrimitive(s), group_(group), bits_(bits) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const mx::array& x = inputs[0];
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    for (const auto& a : inputs) {
      enc.set_input_array(a);
    }
    enc.set_output_array(out);
    int n = static_cast<int>(inputs[1].shape(0));
    int k = static_cast<int>(x.shape(-1));
    int rows = static_cast<int>(x.size() / k);
    enc.dispatch([x = mx::array::unsafe_weak_copy(x),
                  w = mx::array::unsafe_weak_copy(inputs[1]),
                  s = mx::array::unsafe_weak_copy(inputs[2]),
                  b = mx::array::unsafe_weak_copy(inputs[3]), y = out.data<float>(), n, k,
                  rows, group = group_, bits = bits_]() {
      std::vector<float> xs;
      const float* xp = contiguous_values(x, xs);
      int groups = k / group;
      std::vector<float> xsum(static_cast<size_t>(rows) * groups);
      for (int r = 0; r < rows; ++r) {
        for (int g = 0; g < groups; ++g) {
          float t = 0.0f;
          for (int j = 0; j < group; ++j) {
            t += xp[static_cast<int64_t>(r) * k + g * group + j];
          }
          xsum[static_cast<size_t>(r) * groups + g] = t;
        }
      }
      QmvFn f = qmv_kernel(bits);
      const uint32_t* wp = w.data<uint32_t>();
      const float* sp = s.data<float>();
      const float* bp = b.data<float>();
      // Large matrices (an LM head, a 1B model's MLP) split their output
      // columns over a few threads; small ones are not worth a thread start.
      int parts = qmv_threads(static_cast<int64_t>(n) * k * rows);
      std::vector<std::thread> helpers;
      for (int t = 1; t < parts; ++t) {
        int n0 = static_cast<int>(static_cast<int64_t>(n) * t / parts);
        int n1 = static_cast<int>(static_cast<int64_t>(n) * (t + 1) / parts);
        try {
          helpers.emplace_back(f, xp, xsum.data(), wp, sp, bp, y, rows, k, n, group, n0, n1);
        } catch (const std::system_error&) {
          f(xp, xsum.data(), wp, sp, bp, y, rows, k, n, group, n0, n1);  // no thread: inline
        }
      }
      f(xp, xsum.data(), wp, sp, bp, y, rows, k, n, group, 0,
        static_cast<int>(static_cast<int64_t>(n) / parts));
      for (auto& h : helpers) {
        h.join();
      }
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("mlxrs QuantMatVecT runs on the CPU only");
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>& primals,
                             const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums,
                             const std::vector<mx::array>&) override {
    std::vector<mx::array> out;
    for (int a : argnums) {
      if (a != 0) {
        throw std::invalid_argument(
            "[quantized_matmul_t] no gradient with respect to the quantized weights");
      }
      out.push_back(mx::quantized_matmul(cotangents[0], primals[1], primals[2], primals[3],
                                         false, group_, bits_, "affine", stream()));
    }
    return out;
  }

  const char* name() const override {
    return "MlxrsQuantMatVecT";
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    auto o = dynamic_cast<const QuantMatVecT*>(&other);
    return o != nullptr && o->group_ == group_ && o->bits_ == bits_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    auto s = inputs[0].shape();
    s.back() = inputs[1].shape(0);
    return {s};
  }

 private:
  int group_;
  int bits_;
};

bool evaluated_matrix(const mx::array& a, mx::Dtype dt) {
  return a.ndim() == 2 && a.dtype() == dt && a.is_available() && a.flags().row_contiguous;
}

/// Rows from which a GPU product with an affine-quantized matrix runs as
/// `x @ dequantize(w).T` (one dense copy of `w` in `x`'s dtype, then the
/// dense matmul) instead of MLX's quantized matmul: `MLXRS_GPU_DEQUANT_ROWS`
/// (0: never), read once; default 256 (also for a value that is not a
/// non-negative integer).
int64_t gpu_dequant_rows() {
  static const int64_t rows = [] {
    const char* e = std::getenv("MLXRS_GPU_DEQUANT_ROWS");
    if (e == nullptr || *e == '\0') {
      return int64_t{256};
    }
    char* end = nullptr;
    long long v = std::strtoll(e, &end, 10);
    return (end != nullptr && *end == '\0' && v >= 0) ? static_cast<int64_t>(v) : int64_t{256};
  }();
  return rows;
}

mx::array quantized_matmul_t(const mx::array& x, const mx::array& w, const mx::array& scales,
                             const std::optional<mx::array>& biases, int group, int bits,
                             const std::string& mode, mx::StreamOrDevice sd) {
  mx::Stream s = mx::to_stream(sd);
  if (s.device == mx::Device::gpu && x.ndim() == 1) {
    // MLX 0.32's CUDA quantized matvec reads `out.shape(-2)`, so a vector
    // `x` fails there ("SmallVector out of range"): run it as one row.
    auto y = quantized_matmul_t(mx::expand_dims(x, 0, s), w, scales, biases, group, bits, mode, s);
    return mx::squeeze(y, 0, s);
  }
  int64_t k = x.ndim() >= 1 ? x.shape(-1) : 0;
  // GPU, many rows (prefill, batched prefill): from about 256 rows MLX's
  // quantized GEMM is slower than dequantizing and running the dense one
  // (1.0-1.3x at 256 rows, 1.9-3.4x at 2048 on an H100, per weight of a
  // 1B model: scripts/qmm_cost.py), so from
  // `gpu_dequant_rows()` rows on the matrix is dequantized once per call
  // (its bytes read once and written once in `x`'s dtype) and multiplied
  // densely. The values of `dequantize` are those the quantized kernels
  // use; only the accumulation order of the products differs. Not under a
  // transformation (`x` a tracer: training, vmap, compile): a gradient
  // would keep every layer's dense copy alive until the backward pass,
  // the memory a quantized base is there to save.
  //
  // MLX 0.32.4's CUDA quantized GEMM fails for float32 `x` with groups of
  // 128 and more than 32 rows ("cuGraphAddKernelNode ... invalid
  // argument"; bf16 and groups of 64 work, docs/performance.md session
  // 15): those products take the same dense path, under a transformation
  // too (MLX's op would fail there as well).
  int64_t min_rows = gpu_dequant_rows();
  int64_t rows = k > 0 ? static_cast<int64_t>(x.size()) / k : 0;
  bool dense_ok = s.device == mx::Device::gpu && mode == "affine" && biases.has_value() &&
                  k > 0 && w.ndim() == 2 && scales.dtype() == x.dtype() &&
                  (x.dtype() == mx::bfloat16 || x.dtype() == mx::float16 ||
                   x.dtype() == mx::float32);
  bool mlx_fails = x.dtype() == mx::float32 && group == 128 && rows > 32;
  if (dense_ok && (mlx_fails || (min_rows > 0 && !x.is_tracer() && rows >= min_rows))) {
    auto dense = mx::dequantize(w, scales, biases, group, bits, mode, std::nullopt, x.dtype(), s);
    return mx::matmul(x, mx::transpose(dense, s), s);
  }
  bool layout = s.device == mx::Device::cpu && mode == "affine" && biases.has_value() &&
                (bits == 4 || bits == 8) && (group == 32 || group == 64 || group == 128) &&
                x.dtype() == mx::float32 && x.size() > 0 && k > 0 && k % group == 0 &&
                evaluated_matrix(w, mx::uint32) && w.shape(1) * 32 == k * bits &&
                evaluated_matrix(scales, mx::float32) && evaluated_matrix(*biases, mx::float32) &&
                scales.shape(0) == w.shape(0) && scales.shape(1) * group == k &&
                biases->shape() == scales.shape() && w.shape(0) <= INT32_MAX && k <= INT32_MAX;
  if (!layout) {
    return mx::quantized_matmul(x, w, scales, biases, true, group, bits, mode, s);
  }
  if (x.size() / k > kMaxQuantRows) {
    // Many rows (prefill): one dequantized float32 copy, then sgemm.
    auto dense = mx::dequantize(w, scales, biases, group, bits, mode, std::nullopt,
                                mx::float32, s);
    return mx::matmul(x, mx::transpose(dense, s), s);
  }
  auto shape = x.shape();
  shape.back() = w.shape(0);
  return mx::array(shape, mx::float32, std::make_shared<QuantMatVecT>(s, group, bits),
                   {x, w, scales, *biases});
}

}  // namespace
}  // namespace mlxrs

extern "C" int mlxrs_matmul_t(mlx_array* res, const mlx_array x, const mlx_array w,
                              const mlx_stream s) {
  MLXRS_TRY
  mlxrs::set_arr(res, mlxrs::matmul_t(mlxrs::arr(x), mlxrs::arr(w), mlxrs::stream(s)));
  MLXRS_CATCH
}

extern "C" int mlxrs_quantized_matmul_t(mlx_array* res, const mlx_array x, const mlx_array w,
                                        const mlx_array scales, const mlx_array biases,
                                        int group_size, int bits, const char* mode,
                                        const mlx_stream s) {
  MLXRS_TRY
  mlxrs::set_arr(res, mlxrs::quantized_matmul_t(mlxrs::arr(x), mlxrs::arr(w), mlxrs::arr(scales),
                                                mlxrs::opt_arr(biases), group_size, bits, mode,
                                                mlxrs::stream(s)));
  MLXRS_CATCH
}
