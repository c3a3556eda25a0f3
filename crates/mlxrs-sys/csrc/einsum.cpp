// mlxrs C layer, hand-written part: einsum (mlx/einsum.h).
#include "private.h"

namespace mx = mlx::core;

extern "C" int mlx_einsum(
    mlx_array* res,
    const char* subscripts,
    const mlx_vector_array operands,
    const mlx_stream s) {
  MLXRS_TRY
  mlxrs::set_arr(
      res,
      mx::einsum(
          mlxrs::str(subscripts), mlxrs::vec(operands), mlxrs::stream(s)));
  MLXRS_CATCH
}

extern "C" int mlxrs_einsum_path(
    mlx_vector_int* path_flat,
    mlx_vector_int* path_lens,
    mlx_string* report,
    const char* subscripts,
    const mlx_vector_array operands) {
  MLXRS_TRY
  auto [path, info] =
      mx::einsum_path(mlxrs::str(subscripts), mlxrs::vec(operands));
  std::vector<int> flat;
  std::vector<int> lens;
  for (auto& step : path) {
    lens.push_back(static_cast<int>(step.size()));
    flat.insert(flat.end(), step.begin(), step.end());
  }
  mlxrs::set_vec_int(path_flat, std::move(flat));
  mlxrs::set_vec_int(path_lens, std::move(lens));
  mlxrs::set_string(report, std::move(info));
  MLXRS_CATCH
}
