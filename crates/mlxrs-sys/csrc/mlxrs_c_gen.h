/* Placeholder until the xtask generator lands: the ops the seed needs. */
#ifndef MLXRS_C_GEN_H
#define MLXRS_C_GEN_H
#ifdef __cplusplus
extern "C" {
#endif
int mlx_fast_scaled_dot_product_attention(
    mlx_array* res,
    const mlx_array queries,
    const mlx_array keys,
    const mlx_array values,
    float scale,
    const char* mask_mode,
    const mlx_array mask_arr,
    const mlx_array sinks,
    const mlx_stream s);
int mlx_add(mlx_array* res, const mlx_array a, const mlx_array b, const mlx_stream s);
int mlx_matmul(mlx_array* res, const mlx_array a, const mlx_array b, const mlx_stream s);
#ifdef __cplusplus
}
#endif
#endif
