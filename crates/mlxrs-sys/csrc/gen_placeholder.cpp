#include "private.h"
namespace mx = mlx::core;
extern "C" int mlx_fast_scaled_dot_product_attention(
    mlx_array* res, const mlx_array queries, const mlx_array keys,
    const mlx_array values, float scale, const char* mask_mode,
    const mlx_array mask_arr, const mlx_array sinks, const mlx_stream s) {
  MLXRS_TRY
  mlxrs::set_arr(res, mx::fast::scaled_dot_product_attention(
      mlxrs::arr(queries), mlxrs::arr(keys), mlxrs::arr(values), scale,
      mlxrs::str(mask_mode), mlxrs::opt_arr(mask_arr), mlxrs::opt_arr(sinks), false,
      mlxrs::stream(s)));
  MLXRS_CATCH
}
extern "C" int mlx_add(mlx_array* res, const mlx_array a, const mlx_array b, const mlx_stream s) {
  MLXRS_TRY
  mlxrs::set_arr(res, mx::add(mlxrs::arr(a), mlxrs::arr(b), mlxrs::stream(s)));
  MLXRS_CATCH
}
extern "C" int mlx_matmul(mlx_array* res, const mlx_array a, const mlx_array b, const mlx_stream s) {
  MLXRS_TRY
  mlxrs::set_arr(res, mx::matmul(mlxrs::arr(a), mlxrs::arr(b), mlxrs::stream(s)));
  MLXRS_CATCH
}
