// mlxrs C layer, hand-written part: io (safetensors, npy), memory, and
// `pad` with (low, high) pairs.
#include "private.h"

namespace mx = mlx::core;

static void set_map_arr(mlx_map_string_to_array* res, mlxrs::MapStrArr v) {
  if (res == nullptr) {
    throw std::invalid_argument("mlxrs: null out-pointer");
  }
  if (res->ctx != nullptr) {
    *static_cast<mlxrs::MapStrArr*>(res->ctx) = std::move(v);
  } else {
    res->ctx = new mlxrs::MapStrArr(std::move(v));
  }
}

static void set_map_str(mlx_map_string_to_string* res, mlxrs::MapStrStr v) {
  if (res == nullptr) {
    throw std::invalid_argument("mlxrs: null out-pointer");
  }
  if (res->ctx != nullptr) {
    *static_cast<mlxrs::MapStrStr*>(res->ctx) = std::move(v);
  } else {
    res->ctx = new mlxrs::MapStrStr(std::move(v));
  }
}

extern "C" int mlx_load_safetensors(
    mlx_map_string_to_array* res_0,
    mlx_map_string_to_string* res_1,
    const char* file,
    const mlx_stream s) {
  MLXRS_TRY
  auto [arrays, meta] = mx::load_safetensors(mlxrs::str(file), mlxrs::stream(s));
  set_map_arr(res_0, std::move(arrays));
  set_map_str(res_1, std::move(meta));
  MLXRS_CATCH
}

extern "C" int mlx_save_safetensors(
    const char* file,
    const mlx_map_string_to_array param,
    const mlx_map_string_to_string metadata) {
  MLXRS_TRY
  mlxrs::MapStrStr meta;
  if (metadata.ctx != nullptr) {
    meta = mlxrs::map_str(metadata);
  }
  mx::save_safetensors(mlxrs::str(file), mlxrs::map_arr(param), meta);
  MLXRS_CATCH
}

extern "C" int mlx_load(mlx_array* res, const char* file, const mlx_stream s) {
  MLXRS_TRY
  mlxrs::set_arr(res, mx::load(mlxrs::str(file), mlxrs::stream(s)));
  MLXRS_CATCH
}

extern "C" int mlx_save(const char* file, const mlx_array arr) {
  MLXRS_TRY
  mx::save(mlxrs::str(file), mlxrs::arr(arr));
  MLXRS_CATCH
}

// ---------------------------------------------------------------- memory

extern "C" int mlx_get_active_memory(size_t* res) {
  MLXRS_TRY
  *res = mx::get_active_memory();
  MLXRS_CATCH
}
extern "C" int mlx_get_peak_memory(size_t* res) {
  MLXRS_TRY
  *res = mx::get_peak_memory();
  MLXRS_CATCH
}
extern "C" int mlx_reset_peak_memory(void) {
  MLXRS_TRY
  mx::reset_peak_memory();
  MLXRS_CATCH
}
extern "C" int mlx_get_cache_memory(size_t* res) {
  MLXRS_TRY
  *res = mx::get_cache_memory();
  MLXRS_CATCH
}
extern "C" int mlx_get_memory_limit(size_t* res) {
  MLXRS_TRY
  *res = mx::get_memory_limit();
  MLXRS_CATCH
}
extern "C" int mlx_set_memory_limit(size_t* res, size_t limit) {
  MLXRS_TRY
  *res = mx::set_memory_limit(limit);
  MLXRS_CATCH
}
extern "C" int mlx_set_cache_limit(size_t* res, size_t limit) {
  MLXRS_TRY
  *res = mx::set_cache_limit(limit);
  MLXRS_CATCH
}
extern "C" int mlx_set_wired_limit(size_t* res, size_t limit) {
  MLXRS_TRY
  *res = mx::set_wired_limit(limit);
  MLXRS_CATCH
}
extern "C" int mlx_clear_cache(void) {
  MLXRS_TRY
  mx::clear_cache();
  MLXRS_CATCH
}
extern "C" int mlx_get_array_buffer_size(size_t* res, const mlx_vector_array arrays) {
  MLXRS_TRY
  if (res == nullptr) {
    throw std::invalid_argument("mlxrs: null out-pointer");
  }
  *res = mx::get_array_buffer_size(mlxrs::vec(arrays));
  MLXRS_CATCH
}

// ---------------------------------------------------------------- ops (extra)

extern "C" int mlxrs_pad_pairs(
    mlx_array* res,
    const mlx_array a,
    const int* low_pad_size,
    const int* high_pad_size,
    size_t num,
    const mlx_array pad_value,
    const char* mode,
    const mlx_stream s) {
  MLXRS_TRY
  if (num > 0 && (low_pad_size == nullptr || high_pad_size == nullptr)) {
    throw std::invalid_argument("mlxrs: null pad-width pointer");
  }
  std::vector<std::pair<int, int>> widths;
  widths.reserve(num);
  for (size_t i = 0; i < num; i++) {
    widths.emplace_back(low_pad_size[i], high_pad_size[i]);
  }
  mlxrs::set_arr(
      res,
      mx::pad(
          mlxrs::arr(a),
          widths,
          mlxrs::arr(pad_value),
          mlxrs::str(mode),
          mlxrs::stream(s)));
  MLXRS_CATCH
}
