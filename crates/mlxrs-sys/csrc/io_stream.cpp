// mlxrs C layer, hand-written part: custom io streams (mlx-c's io_types.h:
// `mlx_io_reader` / `mlx_io_writer` over a vtable of callbacks) and the
// load / save functions that take them (io.h's `io::Reader` / `io::Writer`
// overloads).
//
// A handle's `ctx` owns a `std::shared_ptr` to the C++ adapter; MLX keeps
// more references inside the `Load` primitives of lazily loaded arrays, so
// the adapter (and the `dtor` of the `_payload` constructors) can outlive
// the handle. The callbacks cannot return errors: after each one the adapter
// asks `good(desc)` and throws if it is false.
#include <cstdio>
#include <memory>

#include "mlx/io.h"
#include "mlx/io/load.h"
#include "private.h"

namespace mx = mlx::core;

namespace {

struct Desc {
  void* desc;
  mlx_io_vtable vt;
  std::shared_ptr<void> owner;

  Desc(void* d, mlx_io_vtable v, void (*dtor)(void*)) : desc(d), vt(v) {
    owner = dtor != nullptr ? std::shared_ptr<void>(d, dtor)
                            : std::shared_ptr<void>(d, [](void*) {});
  }
  bool good() const {
    return vt.good == nullptr || vt.good(desc);
  }
  std::string label() const {
    const char* l = vt.label != nullptr ? vt.label(desc) : nullptr;
    return l != nullptr ? std::string(l) : std::string("custom stream");
  }
  void check(const char* what) const {
    if (!good()) {
      throw std::runtime_error(
          std::string("[io] ") + what + " failed on " + label());
    }
  }
  static int whence(std::ios_base::seekdir way) {
    if (way == std::ios_base::cur) {
      return SEEK_CUR;
    }
    if (way == std::ios_base::end) {
      return SEEK_END;
    }
    return SEEK_SET;
  }
};

class CReader : public mx::io::Reader {
 public:
  explicit CReader(Desc d) : d_(std::move(d)) {}
  bool is_open() const override {
    return d_.vt.is_open == nullptr || d_.vt.is_open(d_.desc);
  }
  bool good() const override {
    return d_.good();
  }
  size_t tell() override {
    if (d_.vt.tell == nullptr) {
      throw std::runtime_error("[io] custom reader has no tell");
    }
    size_t r = d_.vt.tell(d_.desc);
    d_.check("tell");
    return r;
  }
  void seek(int64_t off, std::ios_base::seekdir way) override {
    if (d_.vt.seek == nullptr) {
      throw std::runtime_error("[io] custom reader has no seek");
    }
    d_.vt.seek(d_.desc, off, Desc::whence(way));
    d_.check("seek");
  }
  void read(char* data, size_t n) override {
    if (d_.vt.read == nullptr) {
      throw std::runtime_error("[io] custom reader has no read");
    }
    d_.vt.read(d_.desc, data, n);
    d_.check("read");
  }
  void read(char* data, size_t n, size_t offset) override {
    if (d_.vt.read_at_offset == nullptr) {
      throw std::runtime_error("[io] custom reader has no read_at_offset");
    }
    d_.vt.read_at_offset(d_.desc, data, n, offset);
    d_.check("read");
  }
  std::string label() const override {
    return d_.label();
  }
  void* desc() const {
    return d_.desc;
  }

 private:
  Desc d_;
};

class CWriter : public mx::io::Writer {
 public:
  explicit CWriter(Desc d) : d_(std::move(d)) {}
  bool is_open() const override {
    return d_.vt.is_open == nullptr || d_.vt.is_open(d_.desc);
  }
  bool good() const override {
    return d_.good();
  }
  size_t tell() override {
    if (d_.vt.tell == nullptr) {
      throw std::runtime_error("[io] custom writer has no tell");
    }
    size_t r = d_.vt.tell(d_.desc);
    d_.check("tell");
    return r;
  }
  void seek(int64_t off, std::ios_base::seekdir way) override {
    if (d_.vt.seek == nullptr) {
      throw std::runtime_error("[io] custom writer has no seek");
    }
    d_.vt.seek(d_.desc, off, Desc::whence(way));
    d_.check("seek");
  }
  void write(const char* data, size_t n) override {
    if (d_.vt.write == nullptr) {
      throw std::runtime_error("[io] custom writer has no write");
    }
    d_.vt.write(d_.desc, data, n);
    d_.check("write");
  }
  std::string label() const override {
    return d_.label();
  }
  void* desc() const {
    return d_.desc;
  }

 private:
  Desc d_;
};

using ReaderPtr = std::shared_ptr<CReader>;
using WriterPtr = std::shared_ptr<CWriter>;

ReaderPtr& reader(mlx_io_reader r) {
  if (r.ctx == nullptr) {
    throw std::invalid_argument("mlxrs: empty (null) io_reader handle");
  }
  return *static_cast<ReaderPtr*>(r.ctx);
}

WriterPtr& writer(mlx_io_writer w) {
  if (w.ctx == nullptr) {
    throw std::invalid_argument("mlxrs: empty (null) io_writer handle");
  }
  return *static_cast<WriterPtr*>(w.ctx);
}

} // namespace

extern "C" mlx_io_reader
mlxrs_io_reader_new_payload(void* desc, mlx_io_vtable vtable, void (*dtor)(void*)) {
  try {
    Desc d(desc, vtable, dtor);
    return mlx_io_reader{new ReaderPtr(std::make_shared<CReader>(std::move(d)))};
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_io_reader{nullptr};
  }
}

extern "C" mlx_io_reader mlx_io_reader_new(void* desc, mlx_io_vtable vtable) {
  return mlxrs_io_reader_new_payload(desc, vtable, nullptr);
}

extern "C" int mlx_io_reader_descriptor(void** desc, mlx_io_reader io) {
  MLXRS_TRY
  *desc = reader(io)->desc();
  MLXRS_CATCH
}

extern "C" int mlx_io_reader_tostring(mlx_string* str, mlx_io_reader io) {
  MLXRS_TRY
  mlxrs::set_string(str, reader(io)->label());
  MLXRS_CATCH
}

extern "C" int mlx_io_reader_free(mlx_io_reader io) {
  delete static_cast<ReaderPtr*>(io.ctx);
  return 0;
}

extern "C" mlx_io_writer
mlxrs_io_writer_new_payload(void* desc, mlx_io_vtable vtable, void (*dtor)(void*)) {
  try {
    Desc d(desc, vtable, dtor);
    return mlx_io_writer{new WriterPtr(std::make_shared<CWriter>(std::move(d)))};
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_io_writer{nullptr};
  }
}

extern "C" mlx_io_writer mlx_io_writer_new(void* desc, mlx_io_vtable vtable) {
  return mlxrs_io_writer_new_payload(desc, vtable, nullptr);
}

extern "C" int mlx_io_writer_descriptor(void** desc, mlx_io_writer io) {
  MLXRS_TRY
  *desc = writer(io)->desc();
  MLXRS_CATCH
}

extern "C" int mlx_io_writer_tostring(mlx_string* str, mlx_io_writer io) {
  MLXRS_TRY
  mlxrs::set_string(str, writer(io)->label());
  MLXRS_CATCH
}

extern "C" int mlx_io_writer_free(mlx_io_writer io) {
  delete static_cast<WriterPtr*>(io.ctx);
  return 0;
}

extern "C" int
mlx_load_reader(mlx_array* res, mlx_io_reader in_stream, const mlx_stream s) {
  MLXRS_TRY
  mlxrs::set_arr(res, mx::load(reader(in_stream), mlxrs::stream(s)));
  MLXRS_CATCH
}

extern "C" int mlx_save_writer(mlx_io_writer out_stream, const mlx_array a) {
  MLXRS_TRY
  mx::save(writer(out_stream), mlxrs::arr(a));
  MLXRS_CATCH
}

extern "C" int mlx_load_safetensors_reader(
    mlx_map_string_to_array* res_0,
    mlx_map_string_to_string* res_1,
    mlx_io_reader in_stream,
    const mlx_stream s) {
  MLXRS_TRY
  if (res_0 == nullptr || res_1 == nullptr) {
    throw std::invalid_argument("mlxrs: null out-pointer");
  }
  auto [arrays, meta] =
      mx::load_safetensors(reader(in_stream), mlxrs::stream(s));
  if (res_0->ctx != nullptr) {
    *static_cast<mlxrs::MapStrArr*>(res_0->ctx) = std::move(arrays);
  } else {
    res_0->ctx = new mlxrs::MapStrArr(std::move(arrays));
  }
  if (res_1->ctx != nullptr) {
    *static_cast<mlxrs::MapStrStr*>(res_1->ctx) = std::move(meta);
  } else {
    res_1->ctx = new mlxrs::MapStrStr(std::move(meta));
  }
  MLXRS_CATCH
}

extern "C" int mlx_save_safetensors_writer(
    mlx_io_writer in_stream,
    const mlx_map_string_to_array param,
    const mlx_map_string_to_string metadata) {
  MLXRS_TRY
  mlxrs::MapStrStr meta;
  if (metadata.ctx != nullptr) {
    meta = mlxrs::map_str(metadata);
  }
  mx::save_safetensors(writer(in_stream), mlxrs::map_arr(param), meta);
  MLXRS_CATCH
}
