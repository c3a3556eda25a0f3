// mlxrs C layer, hand-written part: distributed communication
// (mlx/distributed/distributed.h, mlx/distributed/ops.h), in mlx-c's names.
#include <memory>

#include "mlx/distributed/distributed.h"
#include "mlx/distributed/ops.h"
#include "private.h"

namespace mx = mlx::core;
namespace md = mlx::core::distributed;

namespace {

md::Group& group_ref(mlx_distributed_group g) {
  if (g.ctx == nullptr) {
    throw std::invalid_argument("mlxrs: empty (null) distributed group handle");
  }
  return *static_cast<md::Group*>(g.ctx);
}

/// A NULL-ctx group selects MLX's global group (C++ `std::nullopt`).
std::optional<md::Group> opt_group(mlx_distributed_group g) {
  if (g.ctx == nullptr) {
    return std::nullopt;
  }
  return *static_cast<md::Group*>(g.ctx);
}

std::string backend(const char* bk) {
  return bk == nullptr ? std::string("any") : std::string(bk);
}

} // namespace

extern "C" int mlx_distributed_group_free(mlx_distributed_group group) {
  delete static_cast<md::Group*>(group.ctx);
  return 0;
}

extern "C" int mlx_distributed_group_rank(mlx_distributed_group group) {
  try {
    return group_ref(group).rank();
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return -1;
  }
}

extern "C" int mlx_distributed_group_size(mlx_distributed_group group) {
  try {
    return group_ref(group).size();
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return -1;
  }
}

extern "C" mlx_distributed_group
mlx_distributed_group_split(mlx_distributed_group group, int color, int key) {
  mlx_distributed_group out{nullptr};
  try {
    out.ctx = new md::Group(group_ref(group).split(color, key));
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
  } catch (...) {
    mlxrs::fail("mlxrs: unknown C++ exception");
  }
  return out;
}

extern "C" bool mlx_distributed_is_available(const char* bk) {
  try {
    return bk == nullptr ? md::is_available() : md::is_available(bk);
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return false;
  } catch (...) {
    return false;
  }
}

extern "C" int mlx_distributed_clear_backends(void) {
  MLXRS_TRY
  md::clear_backends();
  MLXRS_CATCH
}

extern "C" mlx_distributed_group mlx_distributed_init(bool strict, const char* bk) {
  mlx_distributed_group out{nullptr};
  try {
    out.ctx = new md::Group(md::init(strict, backend(bk)));
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
  } catch (...) {
    mlxrs::fail("mlxrs: unknown C++ exception");
  }
  return out;
}

extern "C" mlx_distributed_group mlxrs_distributed_init_all_gather(
    bool strict,
    const char* bk,
    mlxrs_all_gather_fun fun,
    void* payload,
    void (*dtor)(void*)) {
  mlx_distributed_group out{nullptr};
  try {
    std::shared_ptr<void> p = dtor != nullptr
        ? std::shared_ptr<void>(payload, dtor)
        : std::shared_ptr<void>(payload, [](void*) {});
    if (fun == nullptr) {
      throw std::invalid_argument("mlxrs: null all_gather callback");
    }
    md::AllGatherFactory factory = [fun, p](int rank, int size) {
      return md::AllGatherFn(
          [fun, p, rank, size](const char* src, char* dst, size_t n) {
            if (fun(src, dst, n, rank, size, p.get()) != 0) {
              throw std::runtime_error(
                  "[distributed] the all_gather side-channel callback failed");
            }
          });
    };
    out.ctx = new md::Group(md::init(strict, backend(bk), std::move(factory)));
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
  } catch (...) {
    mlxrs::fail("mlxrs: unknown C++ exception");
  }
  return out;
}

extern "C" int mlx_distributed_all_sum(
    mlx_array* res,
    const mlx_array x,
    const mlx_distributed_group group,
    const mlx_stream s) {
  MLXRS_TRY
  mlxrs::set_arr(
      res, md::all_sum(mlxrs::arr(x), opt_group(group), mlxrs::stream(s)));
  MLXRS_CATCH
}

extern "C" int mlx_distributed_all_gather(
    mlx_array* res,
    const mlx_array x,
    const mlx_distributed_group group,
    const mlx_stream s) {
  MLXRS_TRY
  mlxrs::set_arr(
      res, md::all_gather(mlxrs::arr(x), opt_group(group), mlxrs::stream(s)));
  MLXRS_CATCH
}

extern "C" int mlx_distributed_all_max(
    mlx_array* res,
    const mlx_array x,
    const mlx_distributed_group group,
    const mlx_stream s) {
  MLXRS_TRY
  mlxrs::set_arr(
      res, md::all_max(mlxrs::arr(x), opt_group(group), mlxrs::stream(s)));
  MLXRS_CATCH
}

extern "C" int mlx_distributed_all_min(
    mlx_array* res,
    const mlx_array x,
    const mlx_distributed_group group,
    const mlx_stream s) {
  MLXRS_TRY
  mlxrs::set_arr(
      res, md::all_min(mlxrs::arr(x), opt_group(group), mlxrs::stream(s)));
  MLXRS_CATCH
}

extern "C" int mlx_distributed_sum_scatter(
    mlx_array* res,
    const mlx_array x,
    const mlx_distributed_group group,
    const mlx_stream s) {
  MLXRS_TRY
  mlxrs::set_arr(
      res, md::sum_scatter(mlxrs::arr(x), opt_group(group), mlxrs::stream(s)));
  MLXRS_CATCH
}

extern "C" int mlx_distributed_send(
    mlx_array* res,
    const mlx_array x,
    int dst,
    const mlx_distributed_group group,
    const mlx_stream s) {
  MLXRS_TRY
  mlxrs::set_arr(
      res, md::send(mlxrs::arr(x), dst, opt_group(group), mlxrs::stream(s)));
  MLXRS_CATCH
}

extern "C" int mlx_distributed_recv(
    mlx_array* res,
    const int* shape,
    size_t shape_num,
    mlx_dtype dtype,
    int src,
    const mlx_distributed_group group,
    const mlx_stream s) {
  MLXRS_TRY
  mlxrs::set_arr(
      res,
      md::recv(
          mlxrs::shape(shape, shape_num),
          mlxrs::to_dtype(dtype),
          src,
          opt_group(group),
          mlxrs::stream(s)));
  MLXRS_CATCH
}

extern "C" int mlx_distributed_recv_like(
    mlx_array* res,
    const mlx_array x,
    int src,
    const mlx_distributed_group group,
    const mlx_stream s) {
  MLXRS_TRY
  mlxrs::set_arr(
      res,
      md::recv_like(mlxrs::arr(x), src, opt_group(group), mlxrs::stream(s)));
  MLXRS_CATCH
}
