// Compatibility with MLX releases older than the pinned 0.32.4 (a source
// build with MLXRS_MLX_VERSION_MISMATCH=allow, e.g. v0.32.1): the C layer
// calls 0.32.4 APIs, so what older releases lack is defined here, either
// with the older ops (matrix_transpose, minmax, the extra SDPA / gather_qmm
// arguments when unused) or as a clear runtime error naming the op and the
// version. Checked against v0.32.1 and the 0.32.2 dev snapshot; never used
// with the pinned release.
#pragma once

#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "mlx/mlx.h"
#include "mlx/version.h"

#if MLX_VERSION_NUMERIC < 32004

namespace mlx::core::mlxrs_compat {
[[noreturn]] inline void missing(const char* op) {
  throw std::runtime_error(
      std::string("mlxrs: ") + op + " needs MLX >= 0.32.4; this libmlx is " + version());
}
} // namespace mlx::core::mlxrs_compat

namespace mlx::core {

inline size_t get_array_buffer_size(const std::vector<array>&) {
  mlxrs_compat::missing("get_array_buffer_size");
}

inline array matrix_transpose(const array& a, StreamOrDevice s) {
  return swapaxes(a, -1, -2, s);
}

inline std::tuple<array, array> minmax(const array& a, bool keepdims, StreamOrDevice s) {
  return {min(a, keepdims, s), max(a, keepdims, s)};
}
inline std::tuple<array, array>
minmax(const array& a, const std::vector<int>& axes, bool keepdims, StreamOrDevice s) {
  return {min(a, axes, keepdims, s), max(a, axes, keepdims, s)};
}
inline std::tuple<array, array> minmax(const array& a, int axis, bool keepdims, StreamOrDevice s) {
  return {min(a, axis, keepdims, s), max(a, axis, keepdims, s)};
}

inline std::vector<array> unique(
    const array&,
    int,
    bool,
    bool,
    bool,
    const std::optional<array>&,
    StreamOrDevice) {
  mlxrs_compat::missing("unique");
}

inline array gather_qmm(
    const array& x,
    const array& w,
    const array& scales,
    const std::optional<array>& biases,
    std::optional<array> lhs_indices,
    std::optional<array> rhs_indices,
    bool transpose,
    std::optional<int> group_size,
    std::optional<int> bits,
    const std::string& mode,
    const std::optional<array>& global_scale,
    bool sorted_indices,
    StreamOrDevice s) {
  if (global_scale.has_value()) {
    mlxrs_compat::missing("gather_qmm with global_scale");
  }
  return gather_qmm(
      x, w, scales, biases, std::move(lhs_indices), std::move(rhs_indices), transpose,
      group_size, bits, mode, sorted_indices, s);
}

namespace fast {
inline array scaled_dot_product_attention(
    const array& queries,
    const array& keys,
    const array& values,
    const float scale,
    const std::string& mask_mode,
    std::optional<array> mask_arr,
    const std::optional<array>& sinks,
    bool force_fused,
    StreamOrDevice s) {
  if (force_fused) {
    mlxrs_compat::missing("scaled_dot_product_attention with force_fused");
  }
  return scaled_dot_product_attention(
      queries, keys, values, scale, mask_mode, std::move(mask_arr), sinks, s);
}

inline array cross_entropy(const array&, const array&, StreamOrDevice) {
  mlxrs_compat::missing("fast::cross_entropy");
}

inline std::vector<array> gated_delta_update(
    const array&,
    const array&,
    const array&,
    const array&,
    const array&,
    const std::optional<array>&,
    const std::optional<array>&,
    StreamOrDevice) {
  mlxrs_compat::missing("fast::gated_delta_update");
}
} // namespace fast

namespace fft {
inline array stft(
    const array&,
    int,
    const std::optional<int>&,
    const std::optional<int>&,
    const std::optional<array>&,
    bool,
    const std::string&,
    FFTNorm,
    const std::optional<bool>&,
    StreamOrDevice) {
  mlxrs_compat::missing("fft::stft");
}

inline array istft(
    const array&,
    const std::optional<int>&,
    const std::optional<int>&,
    const std::optional<int>&,
    const std::optional<array>&,
    bool,
    FFTNorm,
    const std::optional<bool>&,
    const std::optional<int>&,
    StreamOrDevice) {
  mlxrs_compat::missing("fft::istft");
}
} // namespace fft

} // namespace mlx::core

#endif
