// mlxrs C layer, hand-written part: errors, strings, dtypes, devices,
// streams, arrays, vectors, maps, eval. Ops are generated (gen_*.cpp).
#include <complex>
#include <mutex>

#include "private.h"

namespace mx = mlx::core;

// ================================================================ errors

namespace {

thread_local std::string t_last_error;

struct Handler {
  mlx_error_handler_func func = nullptr;
  void* data = nullptr;
  void (*dtor)(void*) = nullptr;
};

std::mutex g_handler_mutex;
Handler g_handler;

} // namespace

int mlxrs::fail(const char* msg) {
  t_last_error = msg ? msg : "mlxrs: unknown error";
  Handler h;
  {
    std::lock_guard<std::mutex> lock(g_handler_mutex);
    h = g_handler;
  }
  if (h.func != nullptr) {
    h.func(t_last_error.c_str(), h.data);
  }
  return 1;
}

extern "C" void mlx_set_error_handler(
    mlx_error_handler_func handler,
    void* data,
    void (*dtor)(void*)) {
  Handler old;
  {
    std::lock_guard<std::mutex> lock(g_handler_mutex);
    old = g_handler;
    g_handler = Handler{handler, data, dtor};
  }
  if (old.dtor != nullptr && old.data != nullptr) {
    old.dtor(old.data);
  }
}

extern "C" const char* mlxrs_last_error(void) {
  return t_last_error.c_str();
}

extern "C" void mlxrs_clear_error(void) {
  t_last_error.clear();
}

// ================================================================ string

extern "C" mlx_string mlx_string_new(void) {
  return mlx_string{nullptr};
}

extern "C" mlx_string mlx_string_new_data(const char* s) {
  try {
    return mlx_string{new std::string(s ? s : "")};
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_string{nullptr};
  }
}

extern "C" int mlx_string_set(mlx_string* s, const mlx_string src) {
  MLXRS_TRY
  mlxrs::set_string(s, mlxrs::string_ref(src));
  MLXRS_CATCH
}

extern "C" const char* mlx_string_data(mlx_string s) {
  if (s.ctx == nullptr) {
    return "";
  }
  return static_cast<std::string*>(s.ctx)->c_str();
}

extern "C" int mlx_string_free(mlx_string s) {
  delete static_cast<std::string*>(s.ctx);
  return 0;
}

// ================================================================ dtype

mx::Dtype mlxrs::to_dtype(mlx_dtype t) {
  switch (t) {
    case MLX_BOOL:
      return mx::bool_;
    case MLX_UINT8:
      return mx::uint8;
    case MLX_UINT16:
      return mx::uint16;
    case MLX_UINT32:
      return mx::uint32;
    case MLX_UINT64:
      return mx::uint64;
    case MLX_INT8:
      return mx::int8;
    case MLX_INT16:
      return mx::int16;
    case MLX_INT32:
      return mx::int32;
    case MLX_INT64:
      return mx::int64;
    case MLX_FLOAT16:
      return mx::float16;
    case MLX_FLOAT32:
      return mx::float32;
    case MLX_FLOAT64:
      return mx::float64;
    case MLX_BFLOAT16:
      return mx::bfloat16;
    case MLX_COMPLEX64:
      return mx::complex64;
  }
  throw std::invalid_argument("mlxrs: invalid mlx_dtype value");
}

mlx_dtype mlxrs::from_dtype(mx::Dtype t) {
  switch (t.val()) {
    case mx::Dtype::Val::bool_:
      return MLX_BOOL;
    case mx::Dtype::Val::uint8:
      return MLX_UINT8;
    case mx::Dtype::Val::uint16:
      return MLX_UINT16;
    case mx::Dtype::Val::uint32:
      return MLX_UINT32;
    case mx::Dtype::Val::uint64:
      return MLX_UINT64;
    case mx::Dtype::Val::int8:
      return MLX_INT8;
    case mx::Dtype::Val::int16:
      return MLX_INT16;
    case mx::Dtype::Val::int32:
      return MLX_INT32;
    case mx::Dtype::Val::int64:
      return MLX_INT64;
    case mx::Dtype::Val::float16:
      return MLX_FLOAT16;
    case mx::Dtype::Val::float32:
      return MLX_FLOAT32;
    case mx::Dtype::Val::float64:
      return MLX_FLOAT64;
    case mx::Dtype::Val::bfloat16:
      return MLX_BFLOAT16;
    case mx::Dtype::Val::complex64:
      return MLX_COMPLEX64;
  }
  return MLX_FLOAT32;
}

extern "C" size_t mlx_dtype_size(mlx_dtype dtype) {
  try {
    return mx::size_of(mlxrs::to_dtype(dtype));
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return 0;
  }
}

// ================================================================ device

extern "C" mlx_device mlx_device_new(void) {
  return mlx_device{nullptr};
}

extern "C" mlx_device mlx_device_new_type(mlx_device_type type, int index) {
  try {
    auto t = type == MLX_GPU ? mx::Device::gpu : mx::Device::cpu;
    return mlx_device{new mx::Device(t, index)};
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_device{nullptr};
  }
}

extern "C" int mlx_device_free(mlx_device dev) {
  delete static_cast<mx::Device*>(dev.ctx);
  return 0;
}

static void set_device(mlx_device* res, const mx::Device& d) {
  if (res == nullptr) {
    throw std::invalid_argument("mlxrs: null out-pointer");
  }
  if (res->ctx != nullptr) {
    *static_cast<mx::Device*>(res->ctx) = d;
  } else {
    res->ctx = new mx::Device(d);
  }
}

extern "C" int mlx_device_set(mlx_device* dev, const mlx_device src) {
  MLXRS_TRY
  set_device(dev, mlxrs::device_ref(src));
  MLXRS_CATCH
}

extern "C" int mlx_device_tostring(mlx_string* s, mlx_device dev) {
  MLXRS_TRY
  auto& d = mlxrs::device_ref(dev);
  std::string out = d.type == mx::Device::gpu ? "Device(gpu, " : "Device(cpu, ";
  out += std::to_string(d.index) + ")";
  mlxrs::set_string(s, out);
  MLXRS_CATCH
}

extern "C" bool mlx_device_equal(mlx_device lhs, mlx_device rhs) {
  if (lhs.ctx == nullptr || rhs.ctx == nullptr) {
    return lhs.ctx == rhs.ctx;
  }
  return mlxrs::device_ref(lhs) == mlxrs::device_ref(rhs);
}

extern "C" int mlx_device_get_index(int* index, mlx_device dev) {
  MLXRS_TRY
  *index = mlxrs::device_ref(dev).index;
  MLXRS_CATCH
}

extern "C" int mlx_device_get_type(mlx_device_type* type, mlx_device dev) {
  MLXRS_TRY
  *type = mlxrs::device_ref(dev).type == mx::Device::gpu ? MLX_GPU : MLX_CPU;
  MLXRS_CATCH
}

extern "C" int mlx_get_default_device(mlx_device* dev) {
  MLXRS_TRY
  set_device(dev, mx::default_device());
  MLXRS_CATCH
}

extern "C" int mlx_set_default_device(mlx_device dev) {
  MLXRS_TRY
  mx::set_default_device(mlxrs::device_ref(dev));
  MLXRS_CATCH
}

extern "C" int mlxrs_device_is_available(bool* res, mlx_device_type type) {
  MLXRS_TRY
  auto t = type == MLX_GPU ? mx::Device::gpu : mx::Device::cpu;
  *res = mx::is_available(mx::Device(t, 0));
  MLXRS_CATCH
}

// ================================================================ stream

static void set_stream(mlx_stream* res, const mx::Stream& s) {
  if (res == nullptr) {
    throw std::invalid_argument("mlxrs: null out-pointer");
  }
  if (res->ctx != nullptr) {
    *static_cast<mx::Stream*>(res->ctx) = s;
  } else {
    res->ctx = new mx::Stream(s);
  }
}

extern "C" mlx_stream mlx_stream_new(void) {
  return mlx_stream{nullptr};
}

extern "C" mlx_stream mlx_stream_new_device(mlx_device dev) {
  try {
    return mlx_stream{new mx::Stream(mx::new_stream(mlxrs::device_ref(dev)))};
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_stream{nullptr};
  }
}

extern "C" int mlx_stream_set(mlx_stream* stream, const mlx_stream src) {
  MLXRS_TRY
  set_stream(stream, mlxrs::stream_ref(src));
  MLXRS_CATCH
}

extern "C" int mlx_stream_free(mlx_stream stream) {
  delete static_cast<mx::Stream*>(stream.ctx);
  return 0;
}

extern "C" int mlx_stream_tostring(mlx_string* s, mlx_stream stream) {
  MLXRS_TRY
  auto& st = mlxrs::stream_ref(stream);
  std::string out = "Stream(";
  out += st.device.type == mx::Device::gpu ? "gpu" : "cpu";
  out += ", " + std::to_string(st.index) + ")";
  mlxrs::set_string(s, out);
  MLXRS_CATCH
}

extern "C" bool mlx_stream_equal(mlx_stream lhs, mlx_stream rhs) {
  if (lhs.ctx == nullptr || rhs.ctx == nullptr) {
    return lhs.ctx == rhs.ctx;
  }
  return mlxrs::stream_ref(lhs) == mlxrs::stream_ref(rhs);
}

extern "C" int mlx_stream_get_device(mlx_device* dev, mlx_stream stream) {
  MLXRS_TRY
  set_device(dev, mlxrs::stream_ref(stream).device);
  MLXRS_CATCH
}

extern "C" int mlx_stream_get_index(int* index, mlx_stream stream) {
  MLXRS_TRY
  *index = mlxrs::stream_ref(stream).index;
  MLXRS_CATCH
}

extern "C" int mlx_synchronize(mlx_stream stream) {
  MLXRS_TRY
  if (stream.ctx == nullptr) {
    mx::synchronize();
  } else {
    mx::synchronize(mlxrs::stream_ref(stream));
  }
  MLXRS_CATCH
}

extern "C" int mlx_get_default_stream(mlx_stream* stream, mlx_device dev) {
  MLXRS_TRY
  set_stream(stream, mx::default_stream(mlxrs::device_ref(dev)));
  MLXRS_CATCH
}

extern "C" int mlx_set_default_stream(mlx_stream stream) {
  MLXRS_TRY
  mx::set_default_stream(mlxrs::stream_ref(stream));
  MLXRS_CATCH
}

extern "C" mlx_stream mlx_default_cpu_stream_new(void) {
  try {
    return mlx_stream{new mx::Stream(mx::default_stream(mx::Device::cpu))};
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_stream{nullptr};
  }
}

extern "C" mlx_stream mlx_default_gpu_stream_new(void) {
  try {
    return mlx_stream{new mx::Stream(mx::default_stream(mx::Device::gpu))};
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_stream{nullptr};
  }
}

// ================================================================ array

extern "C" mlx_array mlx_array_new(void) {
  return mlx_array{nullptr};
}

extern "C" int mlx_array_free(mlx_array arr) {
  delete static_cast<mx::array*>(arr.ctx);
  return 0;
}

extern "C" int mlx_array_set(mlx_array* arr, const mlx_array src) {
  MLXRS_TRY
  mlxrs::set_arr(arr, mlxrs::arr(src));
  MLXRS_CATCH
}

extern "C" int mlx_array_tostring(mlx_string* s, const mlx_array arr) {
  MLXRS_TRY
  std::ostringstream os;
  os << mlxrs::arr(arr);
  mlxrs::set_string(s, os.str());
  MLXRS_CATCH
}

template <typename T>
static mlx_array new_scalar(T v) {
  try {
    return mlx_array{new mx::array(v)};
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_array{nullptr};
  }
}

extern "C" mlx_array mlx_array_new_bool(bool val) {
  return new_scalar(val);
}
extern "C" mlx_array mlx_array_new_int(int val) {
  return new_scalar(val);
}
extern "C" mlx_array mlx_array_new_float32(float val) {
  return new_scalar(val);
}
extern "C" mlx_array mlx_array_new_float64(double val) {
  return new_scalar(val);
}
extern "C" mlx_array mlx_array_new_complex(float re, float im) {
  return new_scalar(std::complex<float>(re, im));
}

extern "C" int mlxrs_array_new_scalar(mlx_array* res, double val, mlx_dtype dtype) {
  MLXRS_TRY
  mlxrs::set_arr(res, mx::array(val, mlxrs::to_dtype(dtype)));
  MLXRS_CATCH
}

extern "C" int mlxrs_array_new_data(
    mlx_array* res,
    const void* data,
    const int* shape,
    int dim,
    mlx_dtype dtype) {
  MLXRS_TRY
  if (dim < 0 || (dim > 0 && shape == nullptr)) {
    throw std::invalid_argument("mlxrs: invalid shape (negative rank or null)");
  }
  mx::Shape shp(shape, shape + dim);
  size_t n = 1;
  for (auto d : shp) {
    if (d < 0) {
      throw std::invalid_argument(
          "mlxrs: negative dimension in array shape");
    }
    n *= static_cast<size_t>(d);
  }
  if (n > 0 && data == nullptr) {
    throw std::invalid_argument("mlxrs: null data pointer for non-empty array");
  }
  auto dt = mlxrs::to_dtype(dtype);
  switch (dtype) {
    case MLX_BOOL:
      mlxrs::set_arr(res, mx::array(static_cast<const bool*>(data), shp, dt));
      break;
    case MLX_UINT8:
      mlxrs::set_arr(res, mx::array(static_cast<const uint8_t*>(data), shp, dt));
      break;
    case MLX_UINT16:
      mlxrs::set_arr(res, mx::array(static_cast<const uint16_t*>(data), shp, dt));
      break;
    case MLX_UINT32:
      mlxrs::set_arr(res, mx::array(static_cast<const uint32_t*>(data), shp, dt));
      break;
    case MLX_UINT64:
      mlxrs::set_arr(res, mx::array(static_cast<const uint64_t*>(data), shp, dt));
      break;
    case MLX_INT8:
      mlxrs::set_arr(res, mx::array(static_cast<const int8_t*>(data), shp, dt));
      break;
    case MLX_INT16:
      mlxrs::set_arr(res, mx::array(static_cast<const int16_t*>(data), shp, dt));
      break;
    case MLX_INT32:
      mlxrs::set_arr(res, mx::array(static_cast<const int32_t*>(data), shp, dt));
      break;
    case MLX_INT64:
      mlxrs::set_arr(res, mx::array(static_cast<const int64_t*>(data), shp, dt));
      break;
    case MLX_FLOAT16:
      mlxrs::set_arr(res, mx::array(static_cast<const mx::float16_t*>(data), shp, dt));
      break;
    case MLX_BFLOAT16:
      mlxrs::set_arr(res, mx::array(static_cast<const mx::bfloat16_t*>(data), shp, dt));
      break;
    case MLX_FLOAT32:
      mlxrs::set_arr(res, mx::array(static_cast<const float*>(data), shp, dt));
      break;
    case MLX_FLOAT64:
      mlxrs::set_arr(res, mx::array(static_cast<const double*>(data), shp, dt));
      break;
    case MLX_COMPLEX64:
      mlxrs::set_arr(res, mx::array(static_cast<const mx::complex64_t*>(data), shp, dt));
      break;
  }
  MLXRS_CATCH
}

extern "C" mlx_array mlx_array_new_data(
    const void* data,
    const int* shape,
    int dim,
    mlx_dtype dtype) {
  mlx_array res{nullptr};
  if (mlxrs_array_new_data(&res, data, shape, dim, dtype) != 0) {
    mlx_array_free(res);
    return mlx_array{nullptr};
  }
  return res;
}

extern "C" size_t mlx_array_itemsize(const mlx_array arr) {
  return arr.ctx ? mlxrs::arr(arr).itemsize() : 0;
}
extern "C" size_t mlx_array_size(const mlx_array arr) {
  return arr.ctx ? mlxrs::arr(arr).size() : 0;
}
extern "C" size_t mlx_array_nbytes(const mlx_array arr) {
  return arr.ctx ? mlxrs::arr(arr).nbytes() : 0;
}
extern "C" size_t mlx_array_ndim(const mlx_array arr) {
  return arr.ctx ? mlxrs::arr(arr).ndim() : 0;
}
extern "C" const int* mlx_array_shape(const mlx_array arr) {
  return arr.ctx ? mlxrs::arr(arr).shape().data() : nullptr;
}
extern "C" const size_t* mlx_array_strides(const mlx_array arr) {
  return arr.ctx ? reinterpret_cast<const size_t*>(mlxrs::arr(arr).strides().data())
                 : nullptr;
}
extern "C" int mlx_array_dim(const mlx_array arr, int dim) {
  if (arr.ctx == nullptr) {
    return 0;
  }
  auto& a = mlxrs::arr(arr);
  int nd = static_cast<int>(a.ndim());
  if (dim < 0) {
    dim += nd;
  }
  if (dim < 0 || dim >= nd) {
    return 0;
  }
  return a.shape(dim);
}
extern "C" mlx_dtype mlx_array_dtype(const mlx_array arr) {
  return arr.ctx ? mlxrs::from_dtype(mlxrs::arr(arr).dtype()) : MLX_FLOAT32;
}

extern "C" uintptr_t mlxrs_array_id(const mlx_array arr) {
  return arr.ctx ? mlxrs::arr(arr).id() : 0;
}

extern "C" bool mlxrs_array_is_tracer(const mlx_array arr) {
  return arr.ctx ? mlxrs::arr(arr).is_tracer() : false;
}

extern "C" int mlx_array_eval(mlx_array arr) {
  MLXRS_TRY
  mlxrs::arr(arr).eval();
  MLXRS_CATCH
}

#define MLXRS_ITEM(NAME, CTYPE)                                        \
  extern "C" int mlx_array_item_##NAME(CTYPE* res, const mlx_array arr) { \
    MLXRS_TRY                                                          \
    auto a = mx::astype(mlxrs::arr(arr), mx::TypeToDtype<CTYPE>());    \
    *res = a.item<CTYPE>();                                            \
    MLXRS_CATCH                                                        \
  }

MLXRS_ITEM(bool, bool)
MLXRS_ITEM(uint8, uint8_t)
MLXRS_ITEM(uint16, uint16_t)
MLXRS_ITEM(uint32, uint32_t)
MLXRS_ITEM(uint64, uint64_t)
MLXRS_ITEM(int8, int8_t)
MLXRS_ITEM(int16, int16_t)
MLXRS_ITEM(int32, int32_t)
MLXRS_ITEM(int64, int64_t)
MLXRS_ITEM(float32, float)
MLXRS_ITEM(float64, double)

/// A host copy's destination must hold exactly the array's bytes.
static void check_destination(size_t nbytes, const mx::array& a) {
  if (nbytes != a.nbytes()) {
    throw std::invalid_argument(
        "mlxrs: destination size " + std::to_string(nbytes) +
        " does not match the array's " + std::to_string(a.nbytes()) + " bytes");
  }
}

extern "C" int mlxrs_array_copy_data(void* dst, size_t nbytes, const mlx_array arr) {
  MLXRS_TRY
  auto a = mlxrs::arr(arr);
  check_destination(nbytes, a);
  a.eval();
  if (!a.flags().row_contiguous) {
    a = mx::contiguous(a);
    a.eval();
  }
  if (nbytes > 0) {
    if (dst == nullptr) {
      throw std::invalid_argument("mlxrs: null destination");
    }
    std::memcpy(dst, a.data<char>(), nbytes);
  }
  MLXRS_CATCH
}

extern "C" int mlxrs_array_copy_queued(void* dst, size_t nbytes, const mlx_array arr) {
  MLXRS_TRY
  auto a = mlxrs::arr(arr);
  check_destination(nbytes, a);
  if (a.status() == mx::array::Status::unscheduled) {
    throw std::invalid_argument("mlxrs: the array has not been queued for evaluation");
  }
  a.wait();
  if (!a.flags().row_contiguous) {
    throw std::invalid_argument("mlxrs: a queued read needs a row-contiguous array");
  }
  if (nbytes > 0) {
    if (dst == nullptr) {
      throw std::invalid_argument("mlxrs: null destination");
    }
    std::memcpy(dst, a.data<char>(), nbytes);
  }
  MLXRS_CATCH
}

// ================================================================ vectors

extern "C" mlx_vector_array mlx_vector_array_new(void) {
  try {
    return mlx_vector_array{new std::vector<mx::array>()};
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_vector_array{nullptr};
  }
}

extern "C" int mlx_vector_array_set(mlx_vector_array* vec, const mlx_vector_array src) {
  MLXRS_TRY
  mlxrs::set_vec(vec, mlxrs::vec(src));
  MLXRS_CATCH
}

extern "C" int mlx_vector_array_free(mlx_vector_array vec) {
  delete static_cast<std::vector<mx::array>*>(vec.ctx);
  return 0;
}

extern "C" mlx_vector_array mlx_vector_array_new_data(const mlx_array* data, size_t size) {
  try {
    auto v = new std::vector<mx::array>();
    v->reserve(size);
    try {
      for (size_t i = 0; i < size; ++i) {
        v->push_back(mlxrs::arr(data[i]));
      }
    } catch (...) {
      delete v;
      throw;
    }
    return mlx_vector_array{v};
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_vector_array{nullptr};
  }
}

extern "C" mlx_vector_array mlx_vector_array_new_value(const mlx_array val) {
  return mlx_vector_array_new_data(&val, 1);
}

extern "C" int mlx_vector_array_append_value(mlx_vector_array vec, const mlx_array val) {
  MLXRS_TRY
  mlxrs::vec(vec).push_back(mlxrs::arr(val));
  MLXRS_CATCH
}

extern "C" size_t mlx_vector_array_size(mlx_vector_array vec) {
  return vec.ctx ? mlxrs::vec(vec).size() : 0;
}

extern "C" int mlx_vector_array_get(mlx_array* res, const mlx_vector_array vec, size_t idx) {
  MLXRS_TRY
  auto& v = mlxrs::vec(vec);
  if (idx >= v.size()) {
    throw std::out_of_range("mlxrs: vector_array index out of range");
  }
  mlxrs::set_arr(res, v[idx]);
  MLXRS_CATCH
}

extern "C" mlx_vector_int mlx_vector_int_new(void) {
  try {
    return mlx_vector_int{new std::vector<int>()};
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_vector_int{nullptr};
  }
}

extern "C" int mlx_vector_int_free(mlx_vector_int vec) {
  delete static_cast<std::vector<int>*>(vec.ctx);
  return 0;
}

extern "C" size_t mlx_vector_int_size(mlx_vector_int vec) {
  return vec.ctx ? static_cast<std::vector<int>*>(vec.ctx)->size() : 0;
}

extern "C" int mlx_vector_int_get(int* res, const mlx_vector_int vec, size_t idx) {
  MLXRS_TRY
  if (vec.ctx == nullptr) {
    throw std::invalid_argument("mlxrs: empty (null) vector_int handle");
  }
  auto& v = *static_cast<std::vector<int>*>(vec.ctx);
  if (idx >= v.size()) {
    throw std::out_of_range("mlxrs: vector_int index out of range");
  }
  *res = v[idx];
  MLXRS_CATCH
}

// ================================================================ maps

extern "C" mlx_map_string_to_array mlx_map_string_to_array_new(void) {
  try {
    return mlx_map_string_to_array{new mlxrs::MapStrArr()};
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_map_string_to_array{nullptr};
  }
}

extern "C" int mlx_map_string_to_array_free(mlx_map_string_to_array map) {
  delete static_cast<mlxrs::MapStrArr*>(map.ctx);
  return 0;
}

extern "C" int mlx_map_string_to_array_insert(
    mlx_map_string_to_array map,
    const char* key,
    const mlx_array value) {
  MLXRS_TRY
  mlxrs::map_arr(map).insert_or_assign(mlxrs::str(key), mlxrs::arr(value));
  MLXRS_CATCH
}

extern "C" int mlx_map_string_to_array_get(
    mlx_array* value,
    const mlx_map_string_to_array map,
    const char* key) {
  MLXRS_TRY
  auto& m = mlxrs::map_arr(map);
  auto it = m.find(mlxrs::str(key));
  if (it == m.end()) {
    return 2;
  }
  mlxrs::set_arr(value, it->second);
  MLXRS_CATCH
}

extern "C" mlx_map_string_to_array_iterator mlx_map_string_to_array_iterator_new(
    mlx_map_string_to_array map) {
  try {
    auto& m = mlxrs::map_arr(map);
    return mlx_map_string_to_array_iterator{
        new mlxrs::MapStrArr::iterator(m.begin()), map.ctx};
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_map_string_to_array_iterator{nullptr, nullptr};
  }
}

extern "C" int mlx_map_string_to_array_iterator_free(mlx_map_string_to_array_iterator it) {
  delete static_cast<mlxrs::MapStrArr::iterator*>(it.ctx);
  return 0;
}

extern "C" int mlx_map_string_to_array_iterator_next(
    const char** key,
    mlx_array* value,
    mlx_map_string_to_array_iterator it) {
  MLXRS_TRY
  if (it.ctx == nullptr || it.map_ctx == nullptr) {
    throw std::invalid_argument("mlxrs: empty (null) map iterator");
  }
  auto& iter = *static_cast<mlxrs::MapStrArr::iterator*>(it.ctx);
  auto& m = *static_cast<mlxrs::MapStrArr*>(it.map_ctx);
  if (iter == m.end()) {
    return 2;
  }
  *key = iter->first.c_str();
  mlxrs::set_arr(value, iter->second);
  ++iter;
  MLXRS_CATCH
}

extern "C" mlx_map_string_to_string mlx_map_string_to_string_new(void) {
  try {
    return mlx_map_string_to_string{new mlxrs::MapStrStr()};
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_map_string_to_string{nullptr};
  }
}

extern "C" int mlx_map_string_to_string_free(mlx_map_string_to_string map) {
  delete static_cast<mlxrs::MapStrStr*>(map.ctx);
  return 0;
}

extern "C" int mlx_map_string_to_string_insert(
    mlx_map_string_to_string map,
    const char* key,
    const char* value) {
  MLXRS_TRY
  mlxrs::map_str(map).insert_or_assign(mlxrs::str(key), mlxrs::str(value));
  MLXRS_CATCH
}

extern "C" mlx_map_string_to_string_iterator mlx_map_string_to_string_iterator_new(
    mlx_map_string_to_string map) {
  try {
    auto& m = mlxrs::map_str(map);
    return mlx_map_string_to_string_iterator{
        new mlxrs::MapStrStr::iterator(m.begin()), map.ctx};
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_map_string_to_string_iterator{nullptr, nullptr};
  }
}

extern "C" int mlx_map_string_to_string_iterator_free(mlx_map_string_to_string_iterator it) {
  delete static_cast<mlxrs::MapStrStr::iterator*>(it.ctx);
  return 0;
}

extern "C" int mlx_map_string_to_string_iterator_next(
    const char** key,
    const char** value,
    mlx_map_string_to_string_iterator it) {
  MLXRS_TRY
  if (it.ctx == nullptr || it.map_ctx == nullptr) {
    throw std::invalid_argument("mlxrs: empty (null) map iterator");
  }
  auto& iter = *static_cast<mlxrs::MapStrStr::iterator*>(it.ctx);
  auto& m = *static_cast<mlxrs::MapStrStr*>(it.map_ctx);
  if (iter == m.end()) {
    return 2;
  }
  *key = iter->first.c_str();
  *value = iter->second.c_str();
  ++iter;
  MLXRS_CATCH
}

// ================================================================ misc

extern "C" int mlx_version(mlx_string* s) {
  MLXRS_TRY
  mlxrs::set_string(s, mx::version());
  MLXRS_CATCH
}

extern "C" int mlx_eval(const mlx_vector_array outputs) {
  MLXRS_TRY
  mx::eval(mlxrs::vec(outputs));
  MLXRS_CATCH
}

extern "C" int mlx_async_eval(const mlx_vector_array outputs) {
  MLXRS_TRY
  mx::async_eval(mlxrs::vec(outputs));
  MLXRS_CATCH
}

