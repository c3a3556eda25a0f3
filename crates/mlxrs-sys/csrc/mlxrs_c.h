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
/** C++ `array::id()`: the identity of the array's node (shared by every
 * handle to the same array; 0 for a NULL handle). Stable while any handle
 * to the array is alive. */
uintptr_t mlxrs_array_id(const mlx_array arr);
/** C++ `array::is_tracer()`: whether the array is traced by a function
 * transformation in progress (grad, vjp, vmap, compile); false for a NULL
 * handle. */
bool mlxrs_array_is_tracer(const mlx_array arr);

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

/** Wait for `arr`, which an evaluation has already queued (`mlx_async_eval`
 * returned), and copy its elements into `dst` without evaluating anything:
 * fails if `arr` is still unscheduled or not row-contiguous. It touches only
 * `arr` itself, so it may run while another thread evaluates graphs that do
 * not take `arr` as a direct input (see `Array::copy_queued`). */
int mlxrs_array_copy_queued(void* dst, size_t nbytes, const mlx_array arr);

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

/* mlx-c's io_types.h: custom streams (C++ `io::Reader` / `io::Writer`).
 * `vtable` operates on the user descriptor `desc`; `seek`'s `whence` is
 * SEEK_SET / SEEK_CUR / SEEK_END; a reader needs `read` and
 * `read_at_offset`, a writer `write`. The callbacks cannot fail: a callback
 * that fails makes `good(desc)` return false, and the C++ adapter then
 * throws (the call fails). MLX reads tensor data lazily, at evaluation, on
 * its io threads, so the reader must stay usable (and thread-safe) as long
 * as any loaded array is unevaluated. */
typedef struct mlx_io_reader_ {
  void* ctx;
} mlx_io_reader;
typedef struct mlx_io_writer_ {
  void* ctx;
} mlx_io_writer;
typedef struct mlx_io_vtable_ {
  bool (*is_open)(void*);
  bool (*good)(void*);
  size_t (*tell)(void*);
  void (*seek)(void*, int64_t off, int whence);
  void (*read)(void*, char* data, size_t n);
  void (*read_at_offset)(void*, char* data, size_t n, size_t off);
  void (*write)(void*, const char* data, size_t n);
  const char* (*label)(void*);
} mlx_io_vtable;

/** A custom reader; `desc` must outlive every use (see `_payload`). NULL
 * ctx on error. */
mlx_io_reader mlx_io_reader_new(void* desc, mlx_io_vtable vtable);
/** As `mlx_io_reader_new`, and `dtor(desc)` (may be NULL) runs once, when
 * the last C++ reference to the reader is gone (possibly on an MLX thread,
 * possibly after `mlx_io_reader_free`). On failure `dtor` has run. */
mlx_io_reader
mlxrs_io_reader_new_payload(void* desc, mlx_io_vtable vtable, void (*dtor)(void*));
int mlx_io_reader_descriptor(void** desc, mlx_io_reader io);
int mlx_io_reader_tostring(mlx_string* str, mlx_io_reader io);
int mlx_io_reader_free(mlx_io_reader io);
mlx_io_writer mlx_io_writer_new(void* desc, mlx_io_vtable vtable);
mlx_io_writer
mlxrs_io_writer_new_payload(void* desc, mlx_io_vtable vtable, void (*dtor)(void*));
int mlx_io_writer_descriptor(void** desc, mlx_io_writer io);
int mlx_io_writer_tostring(mlx_string* str, mlx_io_writer io);
int mlx_io_writer_free(mlx_io_writer io);

/** Python `mx.load(file_object)` (`.npy`) / `mx.save(file_object, a)`. */
int mlx_load_reader(mlx_array* res, mlx_io_reader in_stream, const mlx_stream s);
int mlx_save_writer(mlx_io_writer out_stream, const mlx_array a);
/** Python `mx.load(file_object, format="safetensors", return_metadata=True)`
 * / `mx.save_safetensors(file_object, arrays, metadata)`. */
int mlx_load_safetensors_reader(
    mlx_map_string_to_array* res_0,
    mlx_map_string_to_string* res_1,
    mlx_io_reader in_stream,
    const mlx_stream s);
int mlx_save_safetensors_writer(
    mlx_io_writer in_stream,
    const mlx_map_string_to_array param,
    const mlx_map_string_to_string metadata);

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
/** Bytes of the data buffers of `arrays` (each buffer counted once; the
 * arrays must be evaluated). C++ `get_array_buffer_size`; mlx-c has no such
 * function, this is the name its conventions give. */
int mlx_get_array_buffer_size(size_t* res, const mlx_vector_array arrays);

/* ---------------------------------------------------------------- ops (extra) */

/** Python `mx.pad(a, [(lo0, hi0), (lo1, hi1), ...], constant_values, mode)`
 * (C++ `pad` with `std::vector<std::pair<int, int>>` widths: one pair per
 * axis, or one pair for all axes). */
int mlxrs_pad_pairs(
    mlx_array* res,
    const mlx_array a,
    const int* low_pad_size,
    const int* high_pad_size,
    size_t num,
    const mlx_array pad_value,
    const char* mode,
    const mlx_stream s);

/* ---------------------------------------------------------------- closures */

/* mlx-c's closure.h. A closure is a C++ `std::function` over vectors of
 * arrays (python: any function of arrays; swift: `([MLXArray]) ->
 * [MLXArray]`). Handles are NULL-ctx when empty; `mlx_*_set` copies share the
 * callback's payload, and `dtor` (may be NULL) runs on it once, when the last
 * copy is gone (possibly on another thread, and possibly long after the
 * handle is freed: MLX keeps copies inside transformed and compiled
 * functions and inside graph nodes of custom functions).
 *
 * Callbacks: store the results in `*res` with `mlx_vector_array_set` (the
 * out-vector is allocated by the caller; do not free it or the inputs) and
 * return 0; on failure call `mlxrs_closure_set_error(msg)` and return
 * non-zero. The C++ wrapper then throws, so MLX unwinds its own state, and
 * the call that ran the callback (apply, a transform, compile, export) fails
 * with `msg` as its error. Callbacks run on the calling thread, during graph
 * construction (tracing), never during evaluation.
 *
 * `mlx_*_new_func_payload` returns a NULL-ctx handle on failure, after
 * calling `dtor(payload)`. */

typedef struct mlx_closure_ {
  void* ctx;
} mlx_closure;

mlx_closure mlx_closure_new(void);
int mlx_closure_free(mlx_closure cls);
mlx_closure mlx_closure_new_func(
    int (*fun)(mlx_vector_array* res, const mlx_vector_array input));
mlx_closure mlx_closure_new_func_payload(
    int (*fun)(mlx_vector_array* res, const mlx_vector_array input, void* payload),
    void* payload,
    void (*dtor)(void*));
int mlx_closure_set(mlx_closure* cls, const mlx_closure src);
/** Call the closure. */
int mlx_closure_apply(
    mlx_vector_array* res,
    mlx_closure cls,
    const mlx_vector_array input);

/** Called by a failing callback before it returns non-zero: `msg` becomes the
 * message of the failure (copied; per thread). Without it the message is a
 * generic "callback returned a non-zero value". */
void mlxrs_closure_set_error(const char* msg);

/** The result of `mlx_value_and_grad`: inputs -> (values, gradients). */
typedef struct mlx_closure_value_and_grad_ {
  void* ctx;
} mlx_closure_value_and_grad;

mlx_closure_value_and_grad mlx_closure_value_and_grad_new(void);
int mlx_closure_value_and_grad_free(mlx_closure_value_and_grad cls);
mlx_closure_value_and_grad mlx_closure_value_and_grad_new_func_payload(
    int (*fun)(
        mlx_vector_array* res_0,
        mlx_vector_array* res_1,
        const mlx_vector_array input,
        void* payload),
    void* payload,
    void (*dtor)(void*));
int mlx_closure_value_and_grad_set(
    mlx_closure_value_and_grad* cls,
    const mlx_closure_value_and_grad src);
int mlx_closure_value_and_grad_apply(
    mlx_vector_array* res_0,
    mlx_vector_array* res_1,
    mlx_closure_value_and_grad cls,
    const mlx_vector_array input);

/** A custom vjp: (primals, cotangents, outputs) -> one cotangent per primal. */
typedef struct mlx_closure_custom_ {
  void* ctx;
} mlx_closure_custom;

mlx_closure_custom mlx_closure_custom_new(void);
int mlx_closure_custom_free(mlx_closure_custom cls);
mlx_closure_custom mlx_closure_custom_new_func_payload(
    int (*fun)(
        mlx_vector_array* res,
        const mlx_vector_array primals,
        const mlx_vector_array cotangents,
        const mlx_vector_array outputs,
        void* payload),
    void* payload,
    void (*dtor)(void*));
int mlx_closure_custom_set(mlx_closure_custom* cls, const mlx_closure_custom src);
int mlx_closure_custom_apply(
    mlx_vector_array* res,
    mlx_closure_custom cls,
    const mlx_vector_array input_0,
    const mlx_vector_array input_1,
    const mlx_vector_array input_2);

/** A custom jvp: (primals, tangents of the `argnums` primals, argnums) -> one
 * tangent per output. */
typedef struct mlx_closure_custom_jvp_ {
  void* ctx;
} mlx_closure_custom_jvp;

mlx_closure_custom_jvp mlx_closure_custom_jvp_new(void);
int mlx_closure_custom_jvp_free(mlx_closure_custom_jvp cls);
mlx_closure_custom_jvp mlx_closure_custom_jvp_new_func_payload(
    int (*fun)(
        mlx_vector_array* res,
        const mlx_vector_array primals,
        const mlx_vector_array tangents,
        const int* argnums,
        size_t argnums_num,
        void* payload),
    void* payload,
    void (*dtor)(void*));
int mlx_closure_custom_jvp_set(
    mlx_closure_custom_jvp* cls,
    const mlx_closure_custom_jvp src);
int mlx_closure_custom_jvp_apply(
    mlx_vector_array* res,
    mlx_closure_custom_jvp cls,
    const mlx_vector_array input_0,
    const mlx_vector_array input_1,
    const int* input_2,
    size_t input_2_num);

/** A custom vmap: (inputs, in axes, -1 = not mapped) -> (outputs, out axes). */
typedef struct mlx_closure_custom_vmap_ {
  void* ctx;
} mlx_closure_custom_vmap;

mlx_closure_custom_vmap mlx_closure_custom_vmap_new(void);
int mlx_closure_custom_vmap_free(mlx_closure_custom_vmap cls);
mlx_closure_custom_vmap mlx_closure_custom_vmap_new_func_payload(
    int (*fun)(
        mlx_vector_array* res_0,
        mlx_vector_int* res_1,
        const mlx_vector_array inputs,
        const int* axes,
        size_t axes_num,
        void* payload),
    void* payload,
    void (*dtor)(void*));
int mlx_closure_custom_vmap_set(
    mlx_closure_custom_vmap* cls,
    const mlx_closure_custom_vmap src);
int mlx_closure_custom_vmap_apply(
    mlx_vector_array* res_0,
    mlx_vector_int* res_1,
    mlx_closure_custom_vmap cls,
    const mlx_vector_array input_0,
    const int* input_1,
    size_t input_1_num);
/** Replace the contents of `*vec` (allocating it when NULL-ctx) with a copy of
 * `data` (the out-axes of a custom vmap callback). */
int mlx_vector_int_set_data(mlx_vector_int* vec, const int* data, size_t size);

/* ---------------------------------------------------------------- transforms */

/** Outputs of `fun` at `primals` and the vector-Jacobian products with
 * `cotangents` (one per output). Python `mx.vjp(fun, primals, cotangents)`,
 * swift `vjp(_:primals:cotangents:)`. */
int mlx_vjp(
    mlx_vector_array* res_0,
    mlx_vector_array* res_1,
    const mlx_closure fun,
    const mlx_vector_array primals,
    const mlx_vector_array cotangents);
/** Outputs and Jacobian-vector products with `tangents` (one per primal).
 * Python `mx.jvp(fun, primals, tangents)`, swift `jvp(_:primals:tangents:)`. */
int mlx_jvp(
    mlx_vector_array* res_0,
    mlx_vector_array* res_1,
    const mlx_closure fun,
    const mlx_vector_array primals,
    const mlx_vector_array tangents);
/** A function returning (outputs of `fun`, gradients of its first output with
 * respect to the `argnums` inputs). Python `mx.value_and_grad(fun, argnums)`,
 * swift `valueAndGrad(_:argumentNumbers:)`. */
int mlx_value_and_grad(
    mlx_closure_value_and_grad* res,
    const mlx_closure fun,
    const int* argnums,
    size_t argnums_num);
/** Vectorize `fun` over the `in_axes` of its inputs (-1: not mapped; empty:
 * all 0) putting the mapped axis of each output at `out_axes` (empty: all 0).
 * Python `mx.vmap(fun, in_axes, out_axes)`, swift `vmap`. mlx-c has no
 * public vmap; this is the name its conventions give. */
int mlx_vmap(
    mlx_closure* res,
    const mlx_closure fun,
    const int* in_axes,
    size_t in_axes_num,
    const int* out_axes,
    size_t out_axes_num);
/** `fun`, recomputing its intermediates in the backward pass instead of
 * keeping them. Python `mx.checkpoint(fun)`. */
int mlx_checkpoint(mlx_closure* res, const mlx_closure fun);
/** `fun` with its vjp / jvp / vmap replaced by the given closures (NULL-ctx
 * handles: derived from `fun`). With a custom jvp or vmap, `fun` must return
 * the same number of arrays on every call. Python `mx.custom_function`. */
int mlx_custom_function(
    mlx_closure* res,
    const mlx_closure fun,
    const mlx_closure_custom fun_vjp,
    const mlx_closure_custom_jvp fun_jvp,
    const mlx_closure_custom_vmap fun_vmap);
/** `mlx_custom_function` with a vjp only. */
int mlx_custom_vjp(
    mlx_closure* res,
    const mlx_closure fun,
    const mlx_closure_custom fun_vjp);

/* ---------------------------------------------------------------- compile */

typedef enum mlx_compile_mode_ {
  MLX_COMPILE_MODE_DISABLED,
  MLX_COMPILE_MODE_NO_SIMPLIFY,
  MLX_COMPILE_MODE_NO_FUSE,
  MLX_COMPILE_MODE_ENABLED
} mlx_compile_mode;

/** A compiled `fun`: traced once per input signature (shapes and dtypes;
 * dtypes and ranks only when `shapeless`), simplified and fused, then
 * replayed. Python `mx.compile(fun, shapeless=...)`, swift `compile`. */
int mlx_compile(mlx_closure* res, const mlx_closure fun, bool shapeless);
/** Python `mx.disable_compile()` / `mx.enable_compile()`. */
int mlx_disable_compile(void);
int mlx_enable_compile(void);
int mlx_set_compile_mode(mlx_compile_mode mode);

/* ---------------------------------------------------------------- export */

/** Trace `fun` at `args` and write the graph to `file`. Python
 * `mx.export_function(file, fun, *args, shapeless=...)`. */
int mlx_export_function(
    const char* file,
    const mlx_closure fun,
    const mlx_vector_array args,
    bool shapeless);
/** A function exported with `mlx_export_function` / an exporter, as a closure
 * (so it composes with the transforms). Python `mx.import_function(file)`.
 * mlx-c returns an `mlx_imported_function` instead. */
int mlx_import_function(mlx_closure* res, const char* file);

/** Several traces of one function in one file. Python `mx.exporter`. */
typedef struct mlx_function_exporter_ {
  void* ctx;
} mlx_function_exporter;

mlx_function_exporter mlx_function_exporter_new(
    const char* file,
    const mlx_closure fun,
    bool shapeless);
int mlx_function_exporter_free(mlx_function_exporter xfunc);
/** Trace and append one more input signature. */
int mlx_function_exporter_apply(
    const mlx_function_exporter xfunc,
    const mlx_vector_array args);

/* mlx-c's `mlx_closure_kwargs`: a function of positional and keyword arrays
 * (C++ `std::function<Args, Kwargs>`; python: a function called as
 * `f(*args, **kwargs)`). Same rules as `mlx_closure`; the callback gets the
 * keyword arrays as a borrowed map (do not free it). NULL-ctx `args` /
 * `kwargs` arguments are empty. */
typedef struct mlx_closure_kwargs_ {
  void* ctx;
} mlx_closure_kwargs;

mlx_closure_kwargs mlx_closure_kwargs_new(void);
int mlx_closure_kwargs_free(mlx_closure_kwargs cls);
mlx_closure_kwargs mlx_closure_kwargs_new_func(int (*fun)(
    mlx_vector_array* res,
    const mlx_vector_array args,
    const mlx_map_string_to_array kwargs));
mlx_closure_kwargs mlx_closure_kwargs_new_func_payload(
    int (*fun)(
        mlx_vector_array* res,
        const mlx_vector_array args,
        const mlx_map_string_to_array kwargs,
        void* payload),
    void* payload,
    void (*dtor)(void*));
int mlx_closure_kwargs_set(mlx_closure_kwargs* cls, const mlx_closure_kwargs src);
int mlx_closure_kwargs_apply(
    mlx_vector_array* res,
    mlx_closure_kwargs cls,
    const mlx_vector_array input_0,
    const mlx_map_string_to_array input_1);

/** Python `mx.export_function(file, fun, *args, shapeless=..., **kwargs)`. */
int mlx_export_function_kwargs(
    const char* file,
    const mlx_closure_kwargs fun,
    const mlx_vector_array args,
    const mlx_map_string_to_array kwargs,
    bool shapeless);
/** Python `mx.exporter(file, fun)` for a function taking keyword arrays
 * (mlx-c makes exporters from `mlx_closure` only). */
mlx_function_exporter mlxrs_function_exporter_new_kwargs(
    const char* file,
    const mlx_closure_kwargs fun,
    bool shapeless);
/** Trace at positional and keyword arrays (python `exporter(*args, **kwargs)`). */
int mlx_function_exporter_apply_kwargs(
    const mlx_function_exporter xfunc,
    const mlx_vector_array args,
    const mlx_map_string_to_array kwargs);
/** `mlx_import_function` as a keyword-argument closure (mlx-c:
 * `mlx_imported_function_apply_kwargs`). */
int mlxrs_import_function_kwargs(mlx_closure_kwargs* res, const char* file);

/* Export callbacks (C++ `ExportCallback`; python `mx.export_function(callback,
 * fun, *args, **kwargs)`): instead of writing a file, MLX calls `callback`
 * once per event of the traced graph (inputs, keyword inputs, outputs,
 * constants, then one per primitive). The event (C++ `ExportCallbackInput`)
 * is passed as a JSON object: each key maps to one of
 *   {"tensor_specs": [[name, [dims], dtype], ...]}  (dtype: `mlx_dtype` value)
 *   {"named_arrays": [[name, i], ...]}  (the array is `arrays[i]`, borrowed)
 *   {"named_strings": [[a, b], ...]}
 *   {"states": [state, ...]}  (a primitive's arguments, each a one-key object:
 *      bool, int, size, float, double, dtype, shape, strides, ints, sizes,
 *      bool_triples, scalars ([{bool|int|float: v}]), optional_float (null or
 *      a number), string; non-finite numbers are "nan" / "inf" / "-inf")
 *   {"string": s}
 * The callback returns 0, or non-zero after `mlxrs_closure_set_error`.
 * ml-explore/mlx-c has no export-callback binding; these are mlxrs
 * extensions. A positional-only or keyword-only function is a kwargs
 * closure called with empty keywords / positionals. */
typedef int (*mlxrs_export_callback_fun)(
    const char* json,
    const mlx_vector_array arrays,
    void* payload);
int mlxrs_export_function_callback(
    mlxrs_export_callback_fun callback,
    void* payload,
    void (*dtor)(void*),
    const mlx_closure_kwargs fun,
    const mlx_vector_array args,
    const mlx_map_string_to_array kwargs,
    bool shapeless);
/** Python `mx.exporter(callback, fun)`: trace with
 * `mlx_function_exporter_apply{,_kwargs}`. NULL ctx on error (`dtor` has
 * run). */
mlx_function_exporter mlxrs_function_exporter_new_callback(
    mlxrs_export_callback_fun callback,
    void* payload,
    void (*dtor)(void*),
    const mlx_closure_kwargs fun,
    bool shapeless);

/** The graph computing `outputs` in Graphviz dot format. Python
 * `mx.export_to_dot(file, *outputs)`; mlx-c's `mlx_export_to_dot` writes to
 * a `FILE*` (whose Rust declaration is platform-specific), this returns a
 * string. */
int mlxrs_export_to_dot(mlx_string* res, const mlx_vector_array outputs);
/** The graph computing `outputs` as text (C++ `print_graph`). */
int mlxrs_print_graph(mlx_string* res, const mlx_vector_array outputs);

/* ---------------------------------------------------------------- gguf */

/** GGUF metadata (C++ `std::unordered_map<std::string, GGUFMetaData>`): an
 * ordered list of (key, value) entries whose value is an array, a string or
 * a list of strings. Entries are kept sorted by key after a load; `insert`
 * replaces an existing key's value. Strings are length-counted (GGUF strings
 * may hold NUL bytes). */
typedef struct mlxrs_gguf_meta_ {
  void* ctx;
} mlxrs_gguf_meta;

typedef enum mlxrs_gguf_meta_kind_ {
  MLXRS_GGUF_META_NONE,
  MLXRS_GGUF_META_ARRAY,
  MLXRS_GGUF_META_STRING,
  MLXRS_GGUF_META_STRINGS,
} mlxrs_gguf_meta_kind;

mlxrs_gguf_meta mlxrs_gguf_meta_new(void);
int mlxrs_gguf_meta_free(mlxrs_gguf_meta meta);
size_t mlxrs_gguf_meta_size(mlxrs_gguf_meta meta);
int mlxrs_gguf_meta_insert_array(
    mlxrs_gguf_meta meta,
    const char* key,
    const mlx_array value);
int mlxrs_gguf_meta_insert_string(
    mlxrs_gguf_meta meta,
    const char* key,
    const char* value,
    size_t len);
/** `values[i]` holds `lens[i]` bytes. */
int mlxrs_gguf_meta_insert_strings(
    mlxrs_gguf_meta meta,
    const char* key,
    const char* const* values,
    const size_t* lens,
    size_t num);
/** Entry `idx`: its key (valid while `meta` lives unchanged) and kind. */
int mlxrs_gguf_meta_get(
    const char** key,
    size_t* key_len,
    mlxrs_gguf_meta_kind* kind,
    mlxrs_gguf_meta meta,
    size_t idx);
int mlxrs_gguf_meta_get_array(mlx_array* res, mlxrs_gguf_meta meta, size_t idx);
int mlxrs_gguf_meta_get_string(
    const char** res,
    size_t* len,
    mlxrs_gguf_meta meta,
    size_t idx);
int mlxrs_gguf_meta_get_strings_size(
    size_t* res,
    mlxrs_gguf_meta meta,
    size_t idx);
int mlxrs_gguf_meta_get_strings_at(
    const char** res,
    size_t* len,
    mlxrs_gguf_meta meta,
    size_t idx,
    size_t pos);

/** Load every tensor of a GGUF file and its metadata. Python:
 * `mx.load("f.gguf", return_metadata=True)`. MLX's parser trusts the file:
 * validate untrusted files first (mlxrs-core does). MLX opens the file
 * read-write (gguflib maps it shared), so a read-only file fails. */
int mlx_load_gguf(
    mlx_map_string_to_array* res_0,
    mlxrs_gguf_meta* res_1,
    const char* file,
    const mlx_stream s);
/** Python: `mx.save_gguf(file, arrays, metadata)`; MLX appends `.gguf` to a
 * `file` without it. `metadata` may be a NULL-ctx handle. */
int mlx_save_gguf(
    const char* file,
    const mlx_map_string_to_array param,
    const mlxrs_gguf_meta metadata);

/* -------------------------------------------------------------- matmul_t */

/** `x @ w.T` (python `x @ w.T`, as `nn.Linear` computes it). For at most 2
 * rows of float32 on a CPU stream with `w` an evaluated row-contiguous
 * `[N, K]` matrix it runs BLAS's sgemv per row (MLX's CPU matmul calls
 * sgemm, about 3x slower for one row); anything else is
 * `matmul(x, transpose(w))`. */
int mlxrs_matmul_t(
    mlx_array* res,
    const mlx_array x,
    const mlx_array w,
    const mlx_stream s);

/** `x @ dequantize(w, scales, biases).T` (python `mx.quantized_matmul(x, w,
 * scales, biases, transpose=True, group_size, bits, mode)`, as
 * `nn.QuantizedLinear` computes it; `biases` may be a NULL handle). On a CPU
 * stream with float32 `x`, affine 4- or 8-bit groups of 32/64/128 and
 * evaluated float32 scales and biases: a vectorised dot product for at most
 * 32 rows (decode, batched decode), dequantize-then-sgemm for more
 * (prefill). On a GPU stream, affine groups with scales in `x`'s dtype:
 * `x @ dequantize(w).T` from `MLXRS_GPU_DEQUANT_ROWS` rows (default 256,
 * 0: never; not under a transformation), and for float32 `x` with groups
 * of 128 and more than 32 rows (MLX 0.32.4's CUDA quantized GEMM fails
 * there); a vector `x` runs as one row. Anything else is MLX's
 * `quantized_matmul`. */
int mlxrs_quantized_matmul_t(
    mlx_array* res,
    const mlx_array x,
    const mlx_array w,
    const mlx_array scales,
    const mlx_array biases,
    int group_size,
    int bits,
    const char* mode,
    const mlx_stream s);

/* ------------------------------------------------------------ norm_matvec */

/** One decoded row through a pre-norm layer's residual add, RMSNorm and the
 * projection after them (python: `h = x + delta; n = mx.fast.rms_norm(h,
 * norm_weight, eps)`, then `y = n @ w.T` or `mx.quantized_matmul(n, w,
 * scales, biases, True, group_size, bits)`; with `swiglu`, `w` stacks gate |
 * up and `y = silu(y[..., :I]) * y[..., I:]`). On MLX's CUDA backend, for one
 * row of a float dtype, an evaluated row-contiguous dense `w` of that dtype
 * or an affine 4- or 8-bit one, and nothing traced: one custom kernel that gives
 * MLX's ops' results bit for bit; `*fused` is set to true and `h` (`x` when
 * `delta` is empty) and `y` are written. Otherwise `*fused` is false and
 * nothing is written: the caller runs MLX's ops (also under
 * `MLXRS_FUSE_NORM_MATVEC=0`). `delta`, `scales` and `biases` may be empty
 * handles; `bits` 0 means a dense `w`. */
int mlxrs_fast_norm_matvec(
    mlx_array* h,
    mlx_array* y,
    bool* fused,
    const mlx_array x,
    const mlx_array delta,
    const mlx_array norm_weight,
    float eps,
    const mlx_array w,
    const mlx_array scales,
    const mlx_array biases,
    int bits,
    int group_size,
    bool swiglu,
    const mlx_stream s);

/* ---------------------------------------------------------------- einsum */

/** Python: `mx.einsum(subscripts, *operands)`. */
int mlx_einsum(
    mlx_array* res,
    const char* subscripts,
    const mlx_vector_array operands,
    const mlx_stream s);
/** Python: `mx.einsum_path(subscripts, *operands)`. The contraction path
 * (a list of operand-index lists) comes back flattened: `path_flat` holds
 * the indices of every step in order, `path_lens` each step's count;
 * `report` is MLX's printed summary. */
int mlxrs_einsum_path(
    mlx_vector_int* path_flat,
    mlx_vector_int* path_lens,
    mlx_string* report,
    const char* subscripts,
    const mlx_vector_array operands);

/* ---------------------------------------------------------------- distributed */

/** A group of MLX processes that communicate (C++
 * `mlx::core::distributed::Group`, python `mx.distributed.Group`). Made by
 * `mlx_distributed_init` / `mlx_distributed_group_split`, released by
 * `mlx_distributed_group_free`. A NULL-ctx group passed to a collective
 * selects MLX's global group. */
typedef struct mlx_distributed_group_ {
  void* ctx;
} mlx_distributed_group;

/** Release a group (NULL ctx accepted). */
int mlx_distributed_group_free(mlx_distributed_group group);
/** This process's rank in `group` (python `group.rank()`); -1 on error. */
int mlx_distributed_group_rank(mlx_distributed_group group);
/** The number of processes in `group` (python `group.size()`); -1 on error. */
int mlx_distributed_group_size(mlx_distributed_group group);
/** Python `group.split(color, key)`: processes with the same color form a
 * new group, ordered by key (negative: by current rank). NULL ctx on error. */
mlx_distributed_group
mlx_distributed_group_split(mlx_distributed_group group, int color, int key);
/** Python `mx.distributed.is_available(backend)`; `bk` NULL means any
 * backend. */
bool mlx_distributed_is_available(const char* bk);
/** Python `mx.distributed.init(strict, backend)`; `bk` NULL means "any".
 * Without a configured backend and `strict` false this is the singleton
 * group (rank 0, size 1). NULL ctx on error (message recorded). */
mlx_distributed_group mlx_distributed_init(bool strict, const char* bk);
/** The JACCL side channel's byte all-gather (C++ `AllGatherFn` made by an
 * `AllGatherFactory` for `rank` of `size`): gather `n_bytes` at `src` from
 * every rank into `dst` (`size * n_bytes`, rank r's bytes at r * n_bytes).
 * Return 0, or non-zero on failure. May run on any thread. */
typedef int (*mlxrs_all_gather_fun)(
    const char* src,
    char* dst,
    size_t n_bytes,
    int rank,
    int size,
    void* payload);
/** Python `mx.distributed.init(strict, backend="jaccl",
 * all_gather_factory=...)` (C++ `init(strict, bk, AllGatherFactory)`); `dtor`
 * (may be NULL) runs on `payload` when MLX drops the factory. NULL ctx on
 * error. mlx-c has no binding; this is an mlxrs extension. */
mlx_distributed_group mlxrs_distributed_init_all_gather(
    bool strict,
    const char* bk,
    mlxrs_all_gather_fun fun,
    void* payload,
    void (*dtor)(void*));
/** Drop MLX's cached distributed backends (C++ `distributed::clear_backends`,
 * no python equivalent): a later `init` sets them up again. Groups already
 * made keep their backend alive. */
int mlx_distributed_clear_backends(void);

/** Python `mx.distributed.all_sum(x, group=group)`. */
int mlx_distributed_all_sum(
    mlx_array* res,
    const mlx_array x,
    const mlx_distributed_group group,
    const mlx_stream s);
/** Python `mx.distributed.all_gather(x, group=group)`. */
int mlx_distributed_all_gather(
    mlx_array* res,
    const mlx_array x,
    const mlx_distributed_group group,
    const mlx_stream s);
/** Python `mx.distributed.all_max(x, group=group)`. */
int mlx_distributed_all_max(
    mlx_array* res,
    const mlx_array x,
    const mlx_distributed_group group,
    const mlx_stream s);
/** Python `mx.distributed.all_min(x, group=group)`. */
int mlx_distributed_all_min(
    mlx_array* res,
    const mlx_array x,
    const mlx_distributed_group group,
    const mlx_stream s);
/** Python `mx.distributed.sum_scatter(x, group=group)`. */
int mlx_distributed_sum_scatter(
    mlx_array* res,
    const mlx_array x,
    const mlx_distributed_group group,
    const mlx_stream s);
/** Python `mx.distributed.send(x, dst, group=group)`. */
int mlx_distributed_send(
    mlx_array* res,
    const mlx_array x,
    int dst,
    const mlx_distributed_group group,
    const mlx_stream s);
/** Python `mx.distributed.recv(shape, dtype, src, group=group)`. */
int mlx_distributed_recv(
    mlx_array* res,
    const int* shape,
    size_t shape_num,
    mlx_dtype dtype,
    int src,
    const mlx_distributed_group group,
    const mlx_stream s);
/** Python `mx.distributed.recv_like(x, src, group=group)`. */
int mlx_distributed_recv_like(
    mlx_array* res,
    const mlx_array x,
    int src,
    const mlx_distributed_group group,
    const mlx_stream s);

/* ---------------------------------------------------------------- custom kernels */

/** The per-call arguments of a custom kernel (python's keyword arguments of
 * the function `mx.fast.cuda_kernel(...)` / `metal_kernel(...)` returns):
 * output shapes and dtypes, grid, threadgroup, template arguments, init
 * value, verbose. Used by both the CUDA and the Metal kernels (mlx-c has an
 * identical `mlx_fast_metal_kernel_config`). */
typedef struct mlx_fast_cuda_kernel_config_ {
  void* ctx;
} mlx_fast_cuda_kernel_config;

mlx_fast_cuda_kernel_config mlx_fast_cuda_kernel_config_new(void);
int mlx_fast_cuda_kernel_config_free(mlx_fast_cuda_kernel_config cls);
int mlx_fast_cuda_kernel_config_add_output_arg(
    mlx_fast_cuda_kernel_config cls,
    const int* shape,
    size_t size,
    mlx_dtype dtype);
int mlx_fast_cuda_kernel_config_set_grid(
    mlx_fast_cuda_kernel_config cls,
    int grid1,
    int grid2,
    int grid3);
int mlx_fast_cuda_kernel_config_set_thread_group(
    mlx_fast_cuda_kernel_config cls,
    int thread1,
    int thread2,
    int thread3);
int mlx_fast_cuda_kernel_config_set_init_value(
    mlx_fast_cuda_kernel_config cls,
    float value);
int mlx_fast_cuda_kernel_config_set_verbose(
    mlx_fast_cuda_kernel_config cls,
    bool verbose);
int mlx_fast_cuda_kernel_config_add_template_arg_dtype(
    mlx_fast_cuda_kernel_config cls,
    const char* name,
    mlx_dtype dtype);
int mlx_fast_cuda_kernel_config_add_template_arg_int(
    mlx_fast_cuda_kernel_config cls,
    const char* name,
    int value);
int mlx_fast_cuda_kernel_config_add_template_arg_bool(
    mlx_fast_cuda_kernel_config cls,
    const char* name,
    bool value);

/** A compiled-on-first-use custom CUDA kernel (C++
 * `mlx::core::fast::cuda_kernel`, python `mx.fast.cuda_kernel`). */
typedef struct mlx_fast_cuda_kernel_ {
  void* ctx;
} mlx_fast_cuda_kernel;

/** Make a CUDA kernel into `*res` (unlike mlx-c, which returns the handle,
 * this reports failures, e.g. "No CUDA back-end" in a CPU build, as a return
 * code). `header` may be NULL. */
int mlx_fast_cuda_kernel_new(
    mlx_fast_cuda_kernel* res,
    const char* name,
    const char* const* input_names,
    size_t num_inputs,
    const char* const* output_names,
    size_t num_outputs,
    const char* source,
    const char* header,
    bool ensure_row_contiguous,
    int shared_memory);
int mlx_fast_cuda_kernel_free(mlx_fast_cuda_kernel cls);
/** Run the kernel on `inputs` with `config`; the outputs go to `*outputs`. */
int mlx_fast_cuda_kernel_apply(
    mlx_vector_array* outputs,
    mlx_fast_cuda_kernel cls,
    const mlx_vector_array inputs,
    const mlx_fast_cuda_kernel_config config,
    const mlx_stream stream);

/** A custom Metal kernel (C++ `mlx::core::fast::metal_kernel`, python
 * `mx.fast.metal_kernel`); without a Metal back-end, applying it fails. */
typedef struct mlx_fast_metal_kernel_ {
  void* ctx;
} mlx_fast_metal_kernel;

int mlx_fast_metal_kernel_new(
    mlx_fast_metal_kernel* res,
    const char* name,
    const char* const* input_names,
    size_t num_inputs,
    const char* const* output_names,
    size_t num_outputs,
    const char* source,
    const char* header,
    bool ensure_row_contiguous,
    bool atomic_outputs);
int mlx_fast_metal_kernel_free(mlx_fast_metal_kernel cls);
int mlx_fast_metal_kernel_apply(
    mlx_vector_array* outputs,
    mlx_fast_metal_kernel cls,
    const mlx_vector_array inputs,
    const mlx_fast_cuda_kernel_config config,
    const mlx_stream stream);

/** A scalar argument of a precompiled CUDA kernel (C++ `fast::ScalarArg`,
 * `std::variant<bool, int, float>`): `kind` says which field is used. */
typedef enum mlxrs_scalar_kind_ {
  MLXRS_SCALAR_BOOL,
  MLXRS_SCALAR_INT,
  MLXRS_SCALAR_FLOAT,
} mlxrs_scalar_kind;
typedef struct mlxrs_scalar_arg_ {
  mlxrs_scalar_kind kind;
  bool b;
  int i;
  float f;
} mlxrs_scalar_arg;

/** Python `mx.fast.precompiled_cuda_kernel(name=, compiled_source=,
 * inputs=, output_shapes=, output_dtypes=, scalars=, grid=, threadgroup=,
 * shared_memory=, init_value=, ensure_row_contiguous=)`: run a kernel given
 * as PTX or cubin bytes (`compiled_source_len` bytes). Output `i` has
 * `output_ndims[i]` dims, taken in order from `output_shapes`. CUDA only:
 * elsewhere MLX fails with "No CUDA back-end". mlx-c has no binding; this
 * is the name its conventions give. */
int mlx_fast_precompiled_cuda_kernel(
    mlx_vector_array* outputs,
    const char* name,
    const char* compiled_source,
    size_t compiled_source_len,
    const mlx_vector_array inputs,
    const int* output_shapes,
    const size_t* output_ndims,
    const mlx_dtype* output_dtypes,
    size_t num_outputs,
    const mlxrs_scalar_arg* scalars,
    size_t num_scalars,
    int grid_x,
    int grid_y,
    int grid_z,
    int threadgroup_x,
    int threadgroup_y,
    int threadgroup_z,
    int shared_memory,
    mlx_optional_float init_value,
    bool ensure_row_contiguous,
    const mlx_stream s);

#ifdef __cplusplus
}
#endif

#include "mlxrs_c_gen.h"

#endif /* MLXRS_C_H */
