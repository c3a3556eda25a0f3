/* mlxrs C layer: MLX's C++ API exposed as C functions.
 *
 * Names, handle types and signatures follow mlx-c's conventions:
 *   - opaque handles `struct { void* ctx; }` created by `mlx_*_new*` and
 *     released by `mlx_*_free`;
 *   - fallible calls return `int` (0 = success, non-zero = failure) and write
 *     results through out-pointers (`mlx_array* res`);
 *   - every C++ exception is caught at this boundary; the message is kept per
 *     thread (read it with `mlxrs_last_error`) and passed to the error handler
 *     installed with `mlx_set_error_handler`. Unlike mlx-c, the default handler
 *     never exits the process.
 *
 * Extensions that mlx-c does not have carry the `mlxrs_` prefix.
 *
 * A NULL-ctx `mlx_stream` passed to any op selects MLX's default stream of the
 * default device for the calling thread (MLX keeps default streams per thread).
 * A NULL-ctx `mlx_array` passed where the C++ API takes `std::optional<array>`
 * means "absent".
 */
#ifndef MLXRS_C_H
#define MLXRS_C_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- errors */

typedef void (*mlx_error_handler_func)(const char* msg, void* data);

/** Install an error handler (called with the message of every failure, on the
 * failing thread). Pass NULL to restore the default, which only records the
 * message. `dtor` (may be NULL) is called on `data` when the handler is
 * replaced. */
void mlx_set_error_handler(
    mlx_error_handler_func handler,
    void* data,
    void (*dtor)(void*));

/** The message of the last failure on the calling thread ("" if none). The
 * pointer stays valid until the next failing call on this thread. */
const char* mlxrs_last_error(void);

/** Clear the calling thread's last error. */
void mlxrs_clear_error(void);

/* ---------------------------------------------------------------- string */

typedef struct mlx_string_ {
  void* ctx;
} mlx_string;

mlx_string mlx_string_new(void);
mlx_string mlx_string_new_data(const char* str);
int mlx_string_set(mlx_string* str, const mlx_string src);
const char* mlx_string_data(mlx_string str);
int mlx_string_free(mlx_string str);

/* ---------------------------------------------------------------- dtype */

typedef enum mlx_dtype_ {
  MLX_BOOL,
  MLX_UINT8,
  MLX_UINT16,
  MLX_UINT32,
  MLX_UINT64,
  MLX_INT8,
  MLX_INT16,
  MLX_INT32,
  MLX_INT64,
  MLX_FLOAT16,
  MLX_FLOAT32,
  MLX_FLOAT64,
  MLX_BFLOAT16,
  MLX_COMPLEX64,
} mlx_dtype;

size_t mlx_dtype_size(mlx_dtype dtype);

/* ---------------------------------------------------------------- optional */

typedef struct mlx_optional_int_ {
  int value;
  bool has_value;
} mlx_optional_int;

typedef struct mlx_optional_float_ {
  float value;
  bool has_value;
} mlx_optional_float;

typedef struct mlx_optional_dtype_ {
  mlx_dtype value;
  bool has_value;
} mlx_optional_dtype;

/* ---------------------------------------------------------------- device */

typedef struct mlx_device_ {
  void* ctx;
} mlx_device;

typedef enum mlx_device_type_ { MLX_CPU, MLX_GPU } mlx_device_type;

mlx_device mlx_device_new(void);
mlx_device mlx_device_new_type(mlx_device_type type, int index);
int mlx_device_free(mlx_device dev);
int mlx_device_set(mlx_device* dev, const mlx_device src);
int mlx_device_tostring(mlx_string* str, mlx_device dev);
bool mlx_device_equal(mlx_device lhs, mlx_device rhs);
int mlx_device_get_index(int* index, mlx_device dev);
int mlx_device_get_type(mlx_device_type* type, mlx_device dev);
int mlx_get_default_device(mlx_device* dev);
int mlx_set_default_device(mlx_device dev);
/** Whether a device of this type is available in the loaded libmlx. */
int mlxrs_device_is_available(bool* res, mlx_device_type type);

/* ---------------------------------------------------------------- stream */

typedef struct mlx_stream_ {
  void* ctx;
} mlx_stream;

mlx_stream mlx_stream_new(void);
mlx_stream mlx_stream_new_device(mlx_device dev);
int mlx_stream_set(mlx_stream* stream, const mlx_stream src);
int mlx_stream_free(mlx_stream stream);
int mlx_stream_tostring(mlx_string* str, mlx_stream stream);
bool mlx_stream_equal(mlx_stream lhs, mlx_stream rhs);
int mlx_stream_get_device(mlx_device* dev, mlx_stream stream);
int mlx_stream_get_index(int* index, mlx_stream stream);
int mlx_synchronize(mlx_stream stream);
int mlx_get_default_stream(mlx_stream* stream, mlx_device dev);
int mlx_set_default_stream(mlx_stream stream);
mlx_stream mlx_default_cpu_stream_new(void);
mlx_stream mlx_default_gpu_stream_new(void);

/* ---------------------------------------------------------------- array */

typedef struct mlx_array_ {
  void* ctx;
} mlx_array;

mlx_array mlx_array_new(void);
int mlx_array_free(mlx_array arr);
int mlx_array_set(mlx_array* arr, const mlx_array src);
int mlx_array_tostring(mlx_string* str, const mlx_array arr);

mlx_array mlx_array_new_bool(bool val);
mlx_array mlx_array_new_int(int val);
mlx_array mlx_array_new_float32(float val);
mlx_array mlx_array_new_float64(double val);
mlx_array mlx_array_new_complex(float real_val, float imag_val);
/** Copy `data` (row-major, `dtype` elements) into a new array. */
mlx_array mlx_array_new_data(
    const void* data,
    const int* shape,
    int dim,
    mlx_dtype dtype);
/** Checked variant: writes the new array to `res`; fails (instead of returning
 * an empty handle) on invalid shapes or allocation failure. */
int mlxrs_array_new_data(
    mlx_array* res,
    const void* data,
    const int* shape,
    int dim,
    mlx_dtype dtype);
/** A scalar of `dtype` from a double (cast by MLX). */
int mlxrs_array_new_scalar(mlx_array* res, double val, mlx_dtype dtype);

size_t mlx_array_itemsize(const mlx_array arr);
size_t mlx_array_size(const mlx_array arr);
size_t mlx_array_nbytes(const mlx_array arr);
size_t mlx_array_ndim(const mlx_array arr);
const int* mlx_array_shape(const mlx_array arr);
const size_t* mlx_array_strides(const mlx_array arr);
int mlx_array_dim(const mlx_array arr, int dim);
mlx_dtype mlx_array_dtype(const mlx_array arr);

int mlx_array_eval(mlx_array arr);

int mlx_array_item_bool(bool* res, const mlx_array arr);
int mlx_array_item_uint8(uint8_t* res, const mlx_array arr);
int mlx_array_item_uint16(uint16_t* res, const mlx_array arr);
int mlx_array_item_uint32(uint32_t* res, const mlx_array arr);
int mlx_array_item_uint64(uint64_t* res, const mlx_array arr);
int mlx_array_item_int8(int8_t* res, const mlx_array arr);
int mlx_array_item_int16(int16_t* res, const mlx_array arr);
int mlx_array_item_int32(int32_t* res, const mlx_array arr);
int mlx_array_item_int64(int64_t* res, const mlx_array arr);
int mlx_array_item_float32(float* res, const mlx_array arr);
int mlx_array_item_float64(double* res, const mlx_array arr);

/** Evaluate `arr` and copy its elements, row-major and contiguous, into `dst`
 * (`nbytes` must equal `mlx_array_nbytes(arr)`). Strided / broadcast views
 * are made contiguous first. */
int mlxrs_array_copy_data(void* dst, size_t nbytes, const mlx_array arr);

/* ---------------------------------------------------------------- vectors */

typedef struct mlx_vector_array_ {
  void* ctx;
} mlx_vector_array;

mlx_vector_array mlx_vector_array_new(void);
int mlx_vector_array_set(mlx_vector_array* vec, const mlx_vector_array src);
int mlx_vector_array_free(mlx_vector_array vec);
mlx_vector_array mlx_vector_array_new_data(const mlx_array* data, size_t size);
mlx_vector_array mlx_vector_array_new_value(const mlx_array val);
int mlx_vector_array_append_value(mlx_vector_array vec, const mlx_array val);
size_t mlx_vector_array_size(mlx_vector_array vec);
int mlx_vector_array_get(mlx_array* res, const mlx_vector_array vec, size_t idx);

typedef struct mlx_vector_int_ {
  void* ctx;
} mlx_vector_int;

mlx_vector_int mlx_vector_int_new(void);
int mlx_vector_int_free(mlx_vector_int vec);
size_t mlx_vector_int_size(mlx_vector_int vec);
int mlx_vector_int_get(int* res, const mlx_vector_int vec, size_t idx);

/* ---------------------------------------------------------------- maps */

typedef struct mlx_map_string_to_array_ {
  void* ctx;
} mlx_map_string_to_array;

mlx_map_string_to_array mlx_map_string_to_array_new(void);
int mlx_map_string_to_array_free(mlx_map_string_to_array map);
int mlx_map_string_to_array_insert(
    mlx_map_string_to_array map,
    const char* key,
    const mlx_array value);
int mlx_map_string_to_array_get(
    mlx_array* value,
    const mlx_map_string_to_array map,
    const char* key);

typedef struct mlx_map_string_to_array_iterator_ {
  void* ctx;
  void* map_ctx;
} mlx_map_string_to_array_iterator;

mlx_map_string_to_array_iterator mlx_map_string_to_array_iterator_new(
    mlx_map_string_to_array map);
int mlx_map_string_to_array_iterator_free(mlx_map_string_to_array_iterator it);
/** Returns 0 and fills key/value while items remain, 2 at the end. `key`
 * points into the map and is valid while the map lives unchanged. */
int mlx_map_string_to_array_iterator_next(
    const char** key,
    mlx_array* value,
    mlx_map_string_to_array_iterator it);

typedef struct mlx_map_string_to_string_ {
  void* ctx;
} mlx_map_string_to_string;

mlx_map_string_to_string mlx_map_string_to_string_new(void);
int mlx_map_string_to_string_free(mlx_map_string_to_string map);
int mlx_map_string_to_string_insert(
    mlx_map_string_to_string map,
    const char* key,
    const char* value);

typedef struct mlx_map_string_to_string_iterator_ {
  void* ctx;
  void* map_ctx;
} mlx_map_string_to_string_iterator;

mlx_map_string_to_string_iterator mlx_map_string_to_string_iterator_new(
    mlx_map_string_to_string map);
int mlx_map_string_to_string_iterator_free(
    mlx_map_string_to_string_iterator it);
int mlx_map_string_to_string_iterator_next(
    const char** key,
    const char** value,
    mlx_map_string_to_string_iterator it);

/* ---------------------------------------------------------------- version */

int mlx_version(mlx_string* str);

/* ---------------------------------------------------------------- eval */

int mlx_eval(const mlx_vector_array outputs);
int mlx_async_eval(const mlx_vector_array outputs);

/* ---------------------------------------------------------------- io */

/** Load every tensor of a safetensors file (lazily: data is read on eval)
 * and its metadata. Python: `mx.load(file, return_metadata=True)`. */
int mlx_load_safetensors(
    mlx_map_string_to_array* res_0,
    mlx_map_string_to_string* res_1,
    const char* file,
    const mlx_stream s);
/** Python: `mx.save_safetensors(file, arrays, metadata)`. `metadata` may be a
 * NULL-ctx handle. */
int mlx_save_safetensors(
    const char* file,
    const mlx_map_string_to_array param,
    const mlx_map_string_to_string metadata);
/** `.npy` load / save. Python: `mx.load("a.npy")`, `mx.save("a.npy", a)`. */
int mlx_load(mlx_array* res, const char* file, const mlx_stream s);
int mlx_save(const char* file, const mlx_array arr);

/* ---------------------------------------------------------------- memory */

int mlx_get_active_memory(size_t* res);
int mlx_get_peak_memory(size_t* res);
int mlx_reset_peak_memory(void);
int mlx_get_cache_memory(size_t* res);
int mlx_get_memory_limit(size_t* res);
int mlx_set_memory_limit(size_t* res, size_t limit);
int mlx_set_cache_limit(size_t* res, size_t limit);
int mlx_set_wired_limit(size_t* res, size_t limit);
int mlx_clear_cache(void);

#ifdef __cplusplus
}
#endif

#include "mlxrs_c_gen.h"

#endif /* MLXRS_C_H */
