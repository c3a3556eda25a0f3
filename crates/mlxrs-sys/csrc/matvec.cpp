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
#include <dlfcn.h>

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
      const float* xp = x.data<float>();
      if (!x.flags().row_contiguous) {
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
        xp = xs.data();
      }
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

}  // namespace
}  // namespace mlxrs

extern "C" int mlxrs_matmul_t(mlx_array* res, const mlx_array x, const mlx_array w,
                              const mlx_stream s) {
  MLXRS_TRY
  mlxrs::set_arr(res, mlxrs::matmul_t(mlxrs::arr(x), mlxrs::arr(w), mlxrs::stream(s)));
  MLXRS_CATCH
}
