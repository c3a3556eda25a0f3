// mlxrs C layer, hand-written part: GGUF load / save and the GGUF metadata
// map (`std::unordered_map<std::string, GGUFMetaData>` as a sorted list).
#include <algorithm>

#include "private.h"

namespace mx = mlx::core;

namespace {

using Entry = std::pair<std::string, mx::GGUFMetaData>;
using Meta = std::vector<Entry>;

Meta& meta_ref(mlxrs_gguf_meta m) {
  if (m.ctx == nullptr) {
    throw std::invalid_argument("mlxrs: empty (null) gguf metadata handle");
  }
  return *static_cast<Meta*>(m.ctx);
}

Entry& entry(mlxrs_gguf_meta m, size_t idx) {
  auto& v = meta_ref(m);
  if (idx >= v.size()) {
    throw std::out_of_range(
        "mlxrs: gguf metadata index " + std::to_string(idx) +
        " out of range (size " + std::to_string(v.size()) + ")");
  }
  return v[idx];
}

void insert(mlxrs_gguf_meta m, const char* key, mx::GGUFMetaData value) {
  auto& v = meta_ref(m);
  std::string k = mlxrs::str(key);
  for (auto& e : v) {
    if (e.first == k) {
      e.second = std::move(value);
      return;
    }
  }
  v.emplace_back(std::move(k), std::move(value));
}

std::string bytes(const char* data, size_t len) {
  if (len > 0 && data == nullptr) {
    throw std::invalid_argument("mlxrs: null string pointer");
  }
  return std::string(data == nullptr ? "" : data, len);
}

} // namespace

extern "C" mlxrs_gguf_meta mlxrs_gguf_meta_new(void) {
  try {
    return mlxrs_gguf_meta{new Meta()};
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlxrs_gguf_meta{nullptr};
  }
}

extern "C" int mlxrs_gguf_meta_free(mlxrs_gguf_meta meta) {
  delete static_cast<Meta*>(meta.ctx);
  return 0;
}

extern "C" size_t mlxrs_gguf_meta_size(mlxrs_gguf_meta meta) {
  return meta.ctx ? static_cast<Meta*>(meta.ctx)->size() : 0;
}

extern "C" int mlxrs_gguf_meta_insert_array(
    mlxrs_gguf_meta meta,
    const char* key,
    const mlx_array value) {
  MLXRS_TRY
  insert(meta, key, mlxrs::arr(value));
  MLXRS_CATCH
}

extern "C" int mlxrs_gguf_meta_insert_string(
    mlxrs_gguf_meta meta,
    const char* key,
    const char* value,
    size_t len) {
  MLXRS_TRY
  insert(meta, key, bytes(value, len));
  MLXRS_CATCH
}

extern "C" int mlxrs_gguf_meta_insert_strings(
    mlxrs_gguf_meta meta,
    const char* key,
    const char* const* values,
    const size_t* lens,
    size_t num) {
  MLXRS_TRY
  if (num > 0 && (values == nullptr || lens == nullptr)) {
    throw std::invalid_argument("mlxrs: null string list");
  }
  std::vector<std::string> strs;
  strs.reserve(num);
  for (size_t i = 0; i < num; i++) {
    strs.push_back(bytes(values[i], lens[i]));
  }
  insert(meta, key, std::move(strs));
  MLXRS_CATCH
}

extern "C" int mlxrs_gguf_meta_get(
    const char** key,
    size_t* key_len,
    mlxrs_gguf_meta_kind* kind,
    mlxrs_gguf_meta meta,
    size_t idx) {
  MLXRS_TRY
  if (key == nullptr || key_len == nullptr || kind == nullptr) {
    throw std::invalid_argument("mlxrs: null out-pointer");
  }
  auto& e = entry(meta, idx);
  *key = e.first.data();
  *key_len = e.first.size();
  switch (e.second.index()) {
    case 1:
      *kind = MLXRS_GGUF_META_ARRAY;
      break;
    case 2:
      *kind = MLXRS_GGUF_META_STRING;
      break;
    case 3:
      *kind = MLXRS_GGUF_META_STRINGS;
      break;
    default:
      *kind = MLXRS_GGUF_META_NONE;
  }
  MLXRS_CATCH
}

extern "C" int
mlxrs_gguf_meta_get_array(mlx_array* res, mlxrs_gguf_meta meta, size_t idx) {
  MLXRS_TRY
  auto* a = std::get_if<mx::array>(&entry(meta, idx).second);
  if (a == nullptr) {
    throw std::invalid_argument("mlxrs: gguf metadata entry is not an array");
  }
  mlxrs::set_arr(res, *a);
  MLXRS_CATCH
}

extern "C" int mlxrs_gguf_meta_get_string(
    const char** res,
    size_t* len,
    mlxrs_gguf_meta meta,
    size_t idx) {
  MLXRS_TRY
  if (res == nullptr || len == nullptr) {
    throw std::invalid_argument("mlxrs: null out-pointer");
  }
  auto* s = std::get_if<std::string>(&entry(meta, idx).second);
  if (s == nullptr) {
    throw std::invalid_argument("mlxrs: gguf metadata entry is not a string");
  }
  *res = s->data();
  *len = s->size();
  MLXRS_CATCH
}

extern "C" int mlxrs_gguf_meta_get_strings_size(
    size_t* res,
    mlxrs_gguf_meta meta,
    size_t idx) {
  MLXRS_TRY
  if (res == nullptr) {
    throw std::invalid_argument("mlxrs: null out-pointer");
  }
  auto* v = std::get_if<std::vector<std::string>>(&entry(meta, idx).second);
  if (v == nullptr) {
    throw std::invalid_argument(
        "mlxrs: gguf metadata entry is not a list of strings");
  }
  *res = v->size();
  MLXRS_CATCH
}

extern "C" int mlxrs_gguf_meta_get_strings_at(
    const char** res,
    size_t* len,
    mlxrs_gguf_meta meta,
    size_t idx,
    size_t pos) {
  MLXRS_TRY
  if (res == nullptr || len == nullptr) {
    throw std::invalid_argument("mlxrs: null out-pointer");
  }
  auto* v = std::get_if<std::vector<std::string>>(&entry(meta, idx).second);
  if (v == nullptr) {
    throw std::invalid_argument(
        "mlxrs: gguf metadata entry is not a list of strings");
  }
  if (pos >= v->size()) {
    throw std::out_of_range("mlxrs: gguf string list index out of range");
  }
  *res = (*v)[pos].data();
  *len = (*v)[pos].size();
  MLXRS_CATCH
}

extern "C" int mlx_load_gguf(
    mlx_map_string_to_array* res_0,
    mlxrs_gguf_meta* res_1,
    const char* file,
    const mlx_stream s) {
  MLXRS_TRY
  if (res_0 == nullptr || res_1 == nullptr) {
    throw std::invalid_argument("mlxrs: null out-pointer");
  }
  auto [arrays, meta] = mx::load_gguf(mlxrs::str(file), mlxrs::stream(s));
  Meta sorted(
      std::make_move_iterator(meta.begin()), std::make_move_iterator(meta.end()));
  std::sort(sorted.begin(), sorted.end(), [](const Entry& a, const Entry& b) {
    return a.first < b.first;
  });
  if (res_0->ctx != nullptr) {
    *static_cast<mlxrs::MapStrArr*>(res_0->ctx) = std::move(arrays);
  } else {
    res_0->ctx = new mlxrs::MapStrArr(std::move(arrays));
  }
  if (res_1->ctx != nullptr) {
    *static_cast<Meta*>(res_1->ctx) = std::move(sorted);
  } else {
    res_1->ctx = new Meta(std::move(sorted));
  }
  MLXRS_CATCH
}

extern "C" int mlx_save_gguf(
    const char* file,
    const mlx_map_string_to_array param,
    const mlxrs_gguf_meta metadata) {
  MLXRS_TRY
  std::unordered_map<std::string, mx::GGUFMetaData> meta;
  if (metadata.ctx != nullptr) {
    for (auto& [k, v] : meta_ref(metadata)) {
      meta.insert_or_assign(k, v);
    }
  }
  mx::save_gguf(mlxrs::str(file), mlxrs::map_arr(param), std::move(meta));
  MLXRS_CATCH
}
