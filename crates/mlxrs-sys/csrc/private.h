// Private helpers shared by the mlxrs C layer's translation units: how a C
// handle's `ctx` maps to the C++ object it owns, and the exception barrier.
#pragma once

#include <cstring>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "mlx/mlx.h"
#include "compat.h"
#include "mlxrs_c.h"

namespace mlxrs {

namespace mx = mlx::core;

/// Record `msg` as the calling thread's last error, call the installed
/// handler, and return the failure code (1).
int fail(const char* msg);

// ---------------------------------------------------------------- dtypes

mx::Dtype to_dtype(mlx_dtype t);
mlx_dtype from_dtype(mx::Dtype t);

// ---------------------------------------------------------------- arrays

inline mx::array& arr(mlx_array a) {
  if (a.ctx == nullptr) {
    throw std::invalid_argument("mlxrs: empty (null) array handle");
  }
  return *static_cast<mx::array*>(a.ctx);
}

inline std::optional<mx::array> opt_arr(mlx_array a) {
  if (a.ctx == nullptr) {
    return std::nullopt;
  }
  return *static_cast<mx::array*>(a.ctx);
}

/// Store `v` in the out-handle, reusing its allocation when it has one.
inline void set_arr(mlx_array* res, mx::array v) {
  if (res == nullptr) {
    throw std::invalid_argument("mlxrs: null out-pointer");
  }
  if (res->ctx != nullptr) {
    *static_cast<mx::array*>(res->ctx) = std::move(v);
  } else {
    res->ctx = new mx::array(std::move(v));
  }
}

// ---------------------------------------------------------------- vectors

inline std::vector<mx::array>& vec(mlx_vector_array v) {
  if (v.ctx == nullptr) {
    throw std::invalid_argument("mlxrs: empty (null) vector_array handle");
  }
  return *static_cast<std::vector<mx::array>*>(v.ctx);
}

inline void set_vec(mlx_vector_array* res, std::vector<mx::array> v) {
  if (res == nullptr) {
    throw std::invalid_argument("mlxrs: null out-pointer");
  }
  if (res->ctx != nullptr) {
    *static_cast<std::vector<mx::array>*>(res->ctx) = std::move(v);
  } else {
    res->ctx = new std::vector<mx::array>(std::move(v));
  }
}

inline void set_vec_int(mlx_vector_int* res, std::vector<int> v) {
  if (res == nullptr) {
    throw std::invalid_argument("mlxrs: null out-pointer");
  }
  if (res->ctx != nullptr) {
    *static_cast<std::vector<int>*>(res->ctx) = std::move(v);
  } else {
    res->ctx = new std::vector<int>(std::move(v));
  }
}

// ---------------------------------------------------------------- streams

inline mx::Stream& stream_ref(mlx_stream s) {
  if (s.ctx == nullptr) {
    throw std::invalid_argument("mlxrs: empty (null) stream handle");
  }
  return *static_cast<mx::Stream*>(s.ctx);
}

/// A NULL-ctx stream selects the default stream of the default device.
inline mx::StreamOrDevice stream(mlx_stream s) {
  if (s.ctx == nullptr) {
    return {};
  }
  return *static_cast<mx::Stream*>(s.ctx);
}

inline mx::Device& device_ref(mlx_device d) {
  if (d.ctx == nullptr) {
    throw std::invalid_argument("mlxrs: empty (null) device handle");
  }
  return *static_cast<mx::Device*>(d.ctx);
}

// ---------------------------------------------------------------- misc

inline std::optional<int> opt_int(mlx_optional_int v) {
  return v.has_value ? std::optional<int>(v.value) : std::nullopt;
}
inline std::optional<float> opt_float(mlx_optional_float v) {
  return v.has_value ? std::optional<float>(v.value) : std::nullopt;
}
inline std::optional<mx::Dtype> opt_dtype(mlx_optional_dtype v) {
  return v.has_value ? std::optional<mx::Dtype>(to_dtype(v.value))
                     : std::nullopt;
}

inline mx::Shape shape(const int* data, size_t num) {
  if (num > 0 && data == nullptr) {
    throw std::invalid_argument("mlxrs: null shape pointer");
  }
  return mx::Shape(data, data + num);
}

inline std::vector<int> ints(const int* data, size_t num) {
  if (num > 0 && data == nullptr) {
    throw std::invalid_argument("mlxrs: null int-array pointer");
  }
  return std::vector<int>(data, data + num);
}

// Used by the generated wrappers (gen_*.cpp):

/// `std::optional<std::vector<int>>`: a NULL pointer means absent.
inline std::optional<std::vector<int>> opt_ints(const int* data, size_t num) {
  if (data == nullptr) {
    return std::nullopt;
  }
  return std::vector<int>(data, data + num);
}

inline mx::Strides strides(const int64_t* data, size_t num) {
  if (num > 0 && data == nullptr) {
    throw std::invalid_argument("mlxrs: null strides pointer");
  }
  return mx::Strides(data, data + num);
}

inline std::optional<bool> opt_bool(mlx_optional_bool v) {
  return v.has_value ? std::optional<bool>(v.value) : std::nullopt;
}

inline std::string str(const char* s) {
  if (s == nullptr) {
    throw std::invalid_argument("mlxrs: null string");
  }
  return std::string(s);
}

inline std::string& string_ref(mlx_string s) {
  if (s.ctx == nullptr) {
    throw std::invalid_argument("mlxrs: empty (null) string handle");
  }
  return *static_cast<std::string*>(s.ctx);
}

inline void set_string(mlx_string* res, std::string v) {
  if (res == nullptr) {
    throw std::invalid_argument("mlxrs: null out-pointer");
  }
  if (res->ctx != nullptr) {
    *static_cast<std::string*>(res->ctx) = std::move(v);
  } else {
    res->ctx = new std::string(std::move(v));
  }
}

using MapStrArr = std::unordered_map<std::string, mx::array>;
using MapStrStr = std::unordered_map<std::string, std::string>;

inline MapStrArr& map_arr(mlx_map_string_to_array m) {
  if (m.ctx == nullptr) {
    throw std::invalid_argument("mlxrs: empty (null) map handle");
  }
  return *static_cast<MapStrArr*>(m.ctx);
}
inline MapStrStr& map_str(mlx_map_string_to_string m) {
  if (m.ctx == nullptr) {
    throw std::invalid_argument("mlxrs: empty (null) map handle");
  }
  return *static_cast<MapStrStr*>(m.ctx);
}

} // namespace mlxrs

/// Exception barrier: every fallible C entry point is
/// `{ MLXRS_TRY ... MLXRS_CATCH }` so no C++ exception crosses into C/Rust.
#define MLXRS_TRY try {
#define MLXRS_CATCH                                       \
  }                                                       \
  catch (const std::exception& e) {                       \
    return mlxrs::fail(e.what());                         \
  }                                                       \
  catch (...) {                                           \
    return mlxrs::fail("mlxrs: unknown C++ exception");   \
  }                                                       \
  return 0;
