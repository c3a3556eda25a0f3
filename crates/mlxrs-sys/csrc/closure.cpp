// mlxrs C layer, hand-written part: closures (mlx-c's closure.h), function
// transformations (transforms.h), compilation (compile.h), function export
// (export.h) and graph printing (graph_utils.h).
//
// A closure handle's `ctx` owns a heap `std::function`; copies made by MLX
// (inside transformed functions, compiled functions, graph nodes of custom
// functions) share the callback's payload through a `std::shared_ptr`, so the
// payload's `dtor` runs once, when the last copy is gone, on whichever thread
// drops it.
//
// A failing callback (non-zero return) makes the C++ wrapper throw
// `std::runtime_error`, so MLX unwinds its own state (tracing flags, compile
// caches) exactly as for a C++ exception; the exception's message is the one
// the callback passed to `mlxrs_closure_set_error`.
#include <atomic>
#include <cmath>
#include <cstdio>
#include <memory>
#include <mutex>
#include <sstream>
#include <unordered_set>

#include "mlx/graph_utils.h"
#include "mlx/primitives.h"
#include "private.h"

namespace mx = mlx::core;

namespace {

using Arrays = std::vector<mx::array>;
using Fn = std::function<Arrays(const Arrays&)>;
using KwFn = std::function<Arrays(const Arrays&, const mx::Kwargs&)>;
using VagFn = mx::ValueAndGradFn;
using VjpFn = std::function<Arrays(const Arrays&, const Arrays&, const Arrays&)>;
using JvpFn =
    std::function<Arrays(const Arrays&, const Arrays&, const std::vector<int>&)>;
using VmapFn = std::function<std::pair<Arrays, std::vector<int>>(
    const Arrays&,
    const std::vector<int>&)>;

// ---------------------------------------------------------------- handles

template <typename T, typename H>
T& get(H h, const char* what) {
  if (h.ctx == nullptr) {
    throw std::invalid_argument(
        std::string("mlxrs: empty (null) ") + what + " handle");
  }
  return *static_cast<T*>(h.ctx);
}

/// Store `v` in the out-handle, reusing its allocation when it has one.
template <typename T, typename H>
void put(H* res, T v) {
  if (res == nullptr) {
    throw std::invalid_argument("mlxrs: null out-pointer");
  }
  if (res->ctx != nullptr) {
    *static_cast<T*>(res->ctx) = std::move(v);
  } else {
    res->ctx = new T(std::move(v));
  }
}

template <typename T, typename H>
H handle_new(T v) {
  return H{new T(std::move(v))};
}

// ---------------------------------------------------------------- callbacks

thread_local std::string t_cb_error;
thread_local bool t_cb_error_set = false;

void cb_begin() {
  t_cb_error_set = false;
  t_cb_error.clear();
}

/// A callback returned `status != 0`: throw with its message.
[[noreturn]] void cb_fail(const char* kind, int status) {
  std::string msg;
  if (t_cb_error_set) {
    msg = std::move(t_cb_error);
  } else {
    msg = std::string(kind) + " callback returned a non-zero value (" +
        std::to_string(status) + ")";
  }
  t_cb_error_set = false;
  t_cb_error.clear();
  throw std::runtime_error(msg);
}

/// An owned, C-visible `std::vector<array>` for a callback's argument or
/// result. The callback may replace the contents through `*res`
/// (`mlx_vector_array_set`) but must not free it.
struct TmpVec {
  mlx_vector_array h;
  TmpVec() : h{new Arrays()} {}
  explicit TmpVec(const Arrays& v) : h{new Arrays(v)} {}
  ~TmpVec() {
    delete static_cast<Arrays*>(h.ctx);
  }
  TmpVec(const TmpVec&) = delete;
  TmpVec& operator=(const TmpVec&) = delete;
  Arrays take() {
    return h.ctx == nullptr ? Arrays{} : std::move(*static_cast<Arrays*>(h.ctx));
  }
};

struct TmpVecInt {
  mlx_vector_int h;
  TmpVecInt() : h{new std::vector<int>()} {}
  ~TmpVecInt() {
    delete static_cast<std::vector<int>*>(h.ctx);
  }
  TmpVecInt(const TmpVecInt&) = delete;
  TmpVecInt& operator=(const TmpVecInt&) = delete;
  std::vector<int> take() {
    return h.ctx == nullptr ? std::vector<int>{}
                            : std::move(*static_cast<std::vector<int>*>(h.ctx));
  }
};

/// Shares `payload` among the copies of a closure; `dtor` (may be NULL) runs
/// once, with the last copy. If this throws, `dtor` has already run.
std::shared_ptr<void> make_payload(void* payload, void (*dtor)(void*)) {
  if (dtor != nullptr) {
    return std::shared_ptr<void>(payload, dtor);
  }
  return std::shared_ptr<void>(payload, [](void*) {});
}

void check_fun(const void* fun) {
  if (fun == nullptr) {
    throw std::invalid_argument("mlxrs: null closure callback");
  }
}

/// A C callback as an MLX function.
Fn wrap_closure(
    int (*fun)(mlx_vector_array*, const mlx_vector_array, void*),
    std::shared_ptr<void> payload) {
  return [fun, payload = std::move(payload)](const Arrays& in) {
    TmpVec input(in);
    TmpVec res;
    cb_begin();
    if (int st = fun(&res.h, input.h, payload.get()); st != 0) {
      cb_fail("mlx_closure", st);
    }
    return res.take();
  };
}

// ---------------------------------------------------------------- checks

/// MLX's custom_function reads `outputs[0]`: refuse an empty result.
Fn nonempty(Fn f, const char* who) {
  return [f = std::move(f), who](const Arrays& in) {
    auto out = f(in);
    if (out.empty()) {
      throw std::invalid_argument(
          std::string("[") + who + "] the function must return at least one array");
    }
    return out;
  };
}

} // namespace

// ================================================================ errors

extern "C" void mlxrs_closure_set_error(const char* msg) {
  try {
    t_cb_error = msg != nullptr ? msg : "";
    t_cb_error_set = true;
  } catch (...) {
    // Out of memory: the generic message is used.
    t_cb_error_set = false;
  }
}

// ================================================================ mlx_closure

extern "C" mlx_closure mlx_closure_new(void) {
  return mlx_closure{nullptr};
}

extern "C" int mlx_closure_free(mlx_closure cls) {
  delete static_cast<Fn*>(cls.ctx);
  return 0;
}

extern "C" mlx_closure mlx_closure_new_func(
    int (*fun)(mlx_vector_array*, const mlx_vector_array)) {
  try {
    check_fun(reinterpret_cast<const void*>(fun));
    return handle_new<Fn, mlx_closure>([fun](const Arrays& in) {
      TmpVec input(in);
      TmpVec res;
      cb_begin();
      if (int st = fun(&res.h, input.h); st != 0) {
        cb_fail("mlx_closure", st);
      }
      return res.take();
    });
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_closure{nullptr};
  }
}

extern "C" mlx_closure mlx_closure_new_func_payload(
    int (*fun)(mlx_vector_array*, const mlx_vector_array, void*),
    void* payload,
    void (*dtor)(void*)) {
  try {
    auto p = make_payload(payload, dtor);
    check_fun(reinterpret_cast<const void*>(fun));
    return handle_new<Fn, mlx_closure>(wrap_closure(fun, std::move(p)));
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_closure{nullptr};
  }
}

extern "C" int mlx_closure_set(mlx_closure* cls, const mlx_closure src) {
  MLXRS_TRY
  put<Fn>(cls, get<Fn>(src, "closure"));
  MLXRS_CATCH
}

extern "C" int mlx_closure_apply(
    mlx_vector_array* res,
    mlx_closure cls,
    const mlx_vector_array input) {
  MLXRS_TRY
  // A copy: the call may not be affected by the handle being replaced.
  Fn f = get<Fn>(cls, "closure");
  mlxrs::set_vec(res, f(mlxrs::vec(input)));
  MLXRS_CATCH
}

// ================================================================ value_and_grad

extern "C" mlx_closure_value_and_grad mlx_closure_value_and_grad_new(void) {
  return mlx_closure_value_and_grad{nullptr};
}

extern "C" int mlx_closure_value_and_grad_free(mlx_closure_value_and_grad cls) {
  delete static_cast<VagFn*>(cls.ctx);
  return 0;
}

extern "C" mlx_closure_value_and_grad mlx_closure_value_and_grad_new_func_payload(
    int (*fun)(mlx_vector_array*, mlx_vector_array*, const mlx_vector_array, void*),
    void* payload,
    void (*dtor)(void*)) {
  try {
    auto p = make_payload(payload, dtor);
    check_fun(reinterpret_cast<const void*>(fun));
    return handle_new<VagFn, mlx_closure_value_and_grad>(
        [fun, p = std::move(p)](const Arrays& in) {
          TmpVec input(in);
          TmpVec r0;
          TmpVec r1;
          cb_begin();
          if (int st = fun(&r0.h, &r1.h, input.h, p.get()); st != 0) {
            cb_fail("mlx_closure_value_and_grad", st);
          }
          return std::make_pair(r0.take(), r1.take());
        });
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_closure_value_and_grad{nullptr};
  }
}

extern "C" int mlx_closure_value_and_grad_set(
    mlx_closure_value_and_grad* cls,
    const mlx_closure_value_and_grad src) {
  MLXRS_TRY
  put<VagFn>(cls, get<VagFn>(src, "closure_value_and_grad"));
  MLXRS_CATCH
}

extern "C" int mlx_closure_value_and_grad_apply(
    mlx_vector_array* res_0,
    mlx_vector_array* res_1,
    mlx_closure_value_and_grad cls,
    const mlx_vector_array input) {
  MLXRS_TRY
  VagFn f = get<VagFn>(cls, "closure_value_and_grad");
  auto [values, grads] = f(mlxrs::vec(input));
  mlxrs::set_vec(res_0, std::move(values));
  mlxrs::set_vec(res_1, std::move(grads));
  MLXRS_CATCH
}

// ================================================================ custom (vjp)

extern "C" mlx_closure_custom mlx_closure_custom_new(void) {
  return mlx_closure_custom{nullptr};
}

extern "C" int mlx_closure_custom_free(mlx_closure_custom cls) {
  delete static_cast<VjpFn*>(cls.ctx);
  return 0;
}

extern "C" mlx_closure_custom mlx_closure_custom_new_func_payload(
    int (*fun)(
        mlx_vector_array*,
        const mlx_vector_array,
        const mlx_vector_array,
        const mlx_vector_array,
        void*),
    void* payload,
    void (*dtor)(void*)) {
  try {
    auto p = make_payload(payload, dtor);
    check_fun(reinterpret_cast<const void*>(fun));
    return handle_new<VjpFn, mlx_closure_custom>(
        [fun, p = std::move(p)](
            const Arrays& a, const Arrays& b, const Arrays& c) {
          TmpVec i0(a);
          TmpVec i1(b);
          TmpVec i2(c);
          TmpVec res;
          cb_begin();
          if (int st = fun(&res.h, i0.h, i1.h, i2.h, p.get()); st != 0) {
            cb_fail("mlx_closure_custom", st);
          }
          return res.take();
        });
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_closure_custom{nullptr};
  }
}

extern "C" int mlx_closure_custom_set(
    mlx_closure_custom* cls,
    const mlx_closure_custom src) {
  MLXRS_TRY
  put<VjpFn>(cls, get<VjpFn>(src, "closure_custom"));
  MLXRS_CATCH
}

extern "C" int mlx_closure_custom_apply(
    mlx_vector_array* res,
    mlx_closure_custom cls,
    const mlx_vector_array input_0,
    const mlx_vector_array input_1,
    const mlx_vector_array input_2) {
  MLXRS_TRY
  VjpFn f = get<VjpFn>(cls, "closure_custom");
  mlxrs::set_vec(
      res, f(mlxrs::vec(input_0), mlxrs::vec(input_1), mlxrs::vec(input_2)));
  MLXRS_CATCH
}

// ================================================================ custom_jvp

extern "C" mlx_closure_custom_jvp mlx_closure_custom_jvp_new(void) {
  return mlx_closure_custom_jvp{nullptr};
}

extern "C" int mlx_closure_custom_jvp_free(mlx_closure_custom_jvp cls) {
  delete static_cast<JvpFn*>(cls.ctx);
  return 0;
}

extern "C" mlx_closure_custom_jvp mlx_closure_custom_jvp_new_func_payload(
    int (*fun)(
        mlx_vector_array*,
        const mlx_vector_array,
        const mlx_vector_array,
        const int*,
        size_t,
        void*),
    void* payload,
    void (*dtor)(void*)) {
  try {
    auto p = make_payload(payload, dtor);
    check_fun(reinterpret_cast<const void*>(fun));
    return handle_new<JvpFn, mlx_closure_custom_jvp>(
        [fun, p = std::move(p)](
            const Arrays& a, const Arrays& b, const std::vector<int>& argnums) {
          TmpVec i0(a);
          TmpVec i1(b);
          TmpVec res;
          cb_begin();
          if (int st = fun(&res.h, i0.h, i1.h, argnums.data(), argnums.size(), p.get());
              st != 0) {
            cb_fail("mlx_closure_custom_jvp", st);
          }
          return res.take();
        });
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_closure_custom_jvp{nullptr};
  }
}

extern "C" int mlx_closure_custom_jvp_set(
    mlx_closure_custom_jvp* cls,
    const mlx_closure_custom_jvp src) {
  MLXRS_TRY
  put<JvpFn>(cls, get<JvpFn>(src, "closure_custom_jvp"));
  MLXRS_CATCH
}

extern "C" int mlx_closure_custom_jvp_apply(
    mlx_vector_array* res,
    mlx_closure_custom_jvp cls,
    const mlx_vector_array input_0,
    const mlx_vector_array input_1,
    const int* input_2,
    size_t input_2_num) {
  MLXRS_TRY
  JvpFn f = get<JvpFn>(cls, "closure_custom_jvp");
  mlxrs::set_vec(
      res,
      f(mlxrs::vec(input_0),
        mlxrs::vec(input_1),
        mlxrs::ints(input_2, input_2_num)));
  MLXRS_CATCH
}

// ================================================================ custom_vmap

extern "C" mlx_closure_custom_vmap mlx_closure_custom_vmap_new(void) {
  return mlx_closure_custom_vmap{nullptr};
}

extern "C" int mlx_closure_custom_vmap_free(mlx_closure_custom_vmap cls) {
  delete static_cast<VmapFn*>(cls.ctx);
  return 0;
}

extern "C" mlx_closure_custom_vmap mlx_closure_custom_vmap_new_func_payload(
    int (*fun)(
        mlx_vector_array*,
        mlx_vector_int*,
        const mlx_vector_array,
        const int*,
        size_t,
        void*),
    void* payload,
    void (*dtor)(void*)) {
  try {
    auto p = make_payload(payload, dtor);
    check_fun(reinterpret_cast<const void*>(fun));
    return handle_new<VmapFn, mlx_closure_custom_vmap>(
        [fun, p = std::move(p)](const Arrays& a, const std::vector<int>& axes) {
          TmpVec i0(a);
          TmpVec r0;
          TmpVecInt r1;
          cb_begin();
          if (int st = fun(&r0.h, &r1.h, i0.h, axes.data(), axes.size(), p.get());
              st != 0) {
            cb_fail("mlx_closure_custom_vmap", st);
          }
          return std::make_pair(r0.take(), r1.take());
        });
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_closure_custom_vmap{nullptr};
  }
}

extern "C" int mlx_closure_custom_vmap_set(
    mlx_closure_custom_vmap* cls,
    const mlx_closure_custom_vmap src) {
  MLXRS_TRY
  put<VmapFn>(cls, get<VmapFn>(src, "closure_custom_vmap"));
  MLXRS_CATCH
}

extern "C" int mlx_closure_custom_vmap_apply(
    mlx_vector_array* res_0,
    mlx_vector_int* res_1,
    mlx_closure_custom_vmap cls,
    const mlx_vector_array input_0,
    const int* input_1,
    size_t input_1_num) {
  MLXRS_TRY
  VmapFn f = get<VmapFn>(cls, "closure_custom_vmap");
  auto [outs, axes] = f(mlxrs::vec(input_0), mlxrs::ints(input_1, input_1_num));
  mlxrs::set_vec(res_0, std::move(outs));
  mlxrs::set_vec_int(res_1, std::move(axes));
  MLXRS_CATCH
}

extern "C" int mlx_vector_int_set_data(
    mlx_vector_int* vec,
    const int* data,
    size_t size) {
  MLXRS_TRY
  mlxrs::set_vec_int(vec, mlxrs::ints(data, size));
  MLXRS_CATCH
}

// ================================================================ transforms

extern "C" int mlx_vjp(
    mlx_vector_array* res_0,
    mlx_vector_array* res_1,
    const mlx_closure fun,
    const mlx_vector_array primals,
    const mlx_vector_array cotangents) {
  MLXRS_TRY
  auto [outs, vjps] = mx::vjp(
      get<Fn>(fun, "closure"), mlxrs::vec(primals), mlxrs::vec(cotangents));
  mlxrs::set_vec(res_0, std::move(outs));
  mlxrs::set_vec(res_1, std::move(vjps));
  MLXRS_CATCH
}

extern "C" int mlx_jvp(
    mlx_vector_array* res_0,
    mlx_vector_array* res_1,
    const mlx_closure fun,
    const mlx_vector_array primals,
    const mlx_vector_array tangents) {
  MLXRS_TRY
  auto [outs, jvps] = mx::jvp(
      get<Fn>(fun, "closure"), mlxrs::vec(primals), mlxrs::vec(tangents));
  mlxrs::set_vec(res_0, std::move(outs));
  mlxrs::set_vec(res_1, std::move(jvps));
  MLXRS_CATCH
}

extern "C" int mlx_value_and_grad(
    mlx_closure_value_and_grad* res,
    const mlx_closure fun,
    const int* argnums,
    size_t argnums_num) {
  MLXRS_TRY
  put<VagFn>(
      res,
      mx::value_and_grad(
          get<Fn>(fun, "closure"), mlxrs::ints(argnums, argnums_num)));
  MLXRS_CATCH
}

extern "C" int mlx_vmap(
    mlx_closure* res,
    const mlx_closure fun,
    const int* in_axes,
    size_t in_axes_num,
    const int* out_axes,
    size_t out_axes_num) {
  MLXRS_TRY
  auto in = mlxrs::ints(in_axes, in_axes_num);
  auto vf = mx::vmap(
      get<Fn>(fun, "closure"), in, mlxrs::ints(out_axes, out_axes_num));
  // MLX indexes shapes with the in axes unchecked: only -1 (not mapped) and
  // 0..ndim-1 are valid.
  put<Fn>(res, Fn([vf = std::move(vf), in = std::move(in)](const Arrays& xs) {
    if (!in.empty() && in.size() == xs.size()) {
      for (size_t i = 0; i < in.size(); ++i) {
        if (in[i] != -1 && (in[i] < 0 || in[i] >= static_cast<int>(xs[i].ndim()))) {
          std::ostringstream msg;
          msg << "[vmap] in axis " << in[i] << " of input " << i
              << " is invalid for an input with " << xs[i].ndim()
              << " dimensions (use 0..ndim-1, or -1 for not mapped).";
          throw std::invalid_argument(msg.str());
        }
      }
    }
    return vf(xs);
  }));
  MLXRS_CATCH
}

extern "C" int mlx_checkpoint(mlx_closure* res, const mlx_closure fun) {
  MLXRS_TRY
  put<Fn>(res, mx::checkpoint(nonempty(get<Fn>(fun, "closure"), "checkpoint")));
  MLXRS_CATCH
}

extern "C" int mlx_custom_function(
    mlx_closure* res,
    const mlx_closure fun,
    const mlx_closure_custom fun_vjp,
    const mlx_closure_custom_jvp fun_jvp,
    const mlx_closure_custom_vmap fun_vmap) {
  MLXRS_TRY
  if (fun_vjp.ctx == nullptr && fun_jvp.ctx == nullptr && fun_vmap.ctx == nullptr) {
    // Nothing to customize: `fun` itself (as MLX does).
    put<Fn>(res, get<Fn>(fun, "closure"));
    return 0;
  }
  // The number of outputs of `fun`, fixed at its first call; the custom jvp
  // and vmap results are checked against it (MLX indexes them unchecked).
  auto n_out = std::make_shared<std::atomic<long>>(-1);
  bool fixed = fun_jvp.ctx != nullptr || fun_vmap.ctx != nullptr;
  Fn f = [g = get<Fn>(fun, "closure"), n_out, fixed](const Arrays& in) {
    auto out = g(in);
    if (out.empty()) {
      throw std::invalid_argument(
          "[custom_function] the function must return at least one array");
    }
    long n = static_cast<long>(out.size());
    long expected = -1;
    if (!n_out->compare_exchange_strong(expected, n) && fixed && expected != n) {
      std::ostringstream msg;
      msg << "[custom_function] with a custom jvp or vmap, the function must "
          << "return the same number of arrays on every call (" << expected
          << " before, " << n << " now).";
      throw std::invalid_argument(msg.str());
    }
    return out;
  };
  std::optional<VjpFn> vjp;
  if (fun_vjp.ctx != nullptr) {
    vjp = [v = get<VjpFn>(fun_vjp, "closure_custom")](
              const Arrays& primals, const Arrays& cotans, const Arrays& outs) {
      auto r = v(primals, cotans, outs);
      if (r.size() != primals.size()) {
        std::ostringstream msg;
        msg << "[custom_function] the vjp function returned " << r.size()
            << " arrays for " << primals.size()
            << " primals (one cotangent per primal is required).";
        throw std::invalid_argument(msg.str());
      }
      return r;
    };
  }
  std::optional<JvpFn> jvp;
  if (fun_jvp.ctx != nullptr) {
    jvp = [j = get<JvpFn>(fun_jvp, "closure_custom_jvp"), n_out](
              const Arrays& primals,
              const Arrays& tangents,
              const std::vector<int>& argnums) {
      auto r = j(primals, tangents, argnums);
      if (long n = n_out->load(); static_cast<long>(r.size()) != n) {
        std::ostringstream msg;
        msg << "[custom_function] the jvp function returned " << r.size()
            << " arrays for a function with " << n
            << " outputs (one tangent per output is required).";
        throw std::invalid_argument(msg.str());
      }
      return r;
    };
  }
  std::optional<VmapFn> vmap;
  if (fun_vmap.ctx != nullptr) {
    vmap = [m = get<VmapFn>(fun_vmap, "closure_custom_vmap"), n_out](
               const Arrays& inputs, const std::vector<int>& axes) {
      auto r = m(inputs, axes);
      long n = n_out->load();
      if (static_cast<long>(r.first.size()) != n ||
          r.second.size() != r.first.size()) {
        std::ostringstream msg;
        msg << "[custom_function] the vmap function returned "
            << r.first.size() << " arrays and " << r.second.size()
            << " axes for a function with " << n
            << " outputs (one array and one axis per output are required).";
        throw std::invalid_argument(msg.str());
      }
      return r;
    };
  }
  put<Fn>(
      res,
      mx::custom_function(
          std::move(f), std::move(vjp), std::move(jvp), std::move(vmap)));
  MLXRS_CATCH
}

extern "C" int mlx_custom_vjp(
    mlx_closure* res,
    const mlx_closure fun,
    const mlx_closure_custom fun_vjp) {
  MLXRS_TRY
  get<VjpFn>(fun_vjp, "closure_custom");
  return mlx_custom_function(
      res,
      fun,
      fun_vjp,
      mlx_closure_custom_jvp{nullptr},
      mlx_closure_custom_vmap{nullptr});
  MLXRS_CATCH
}

// ================================================================ compile

extern "C" int mlx_compile(mlx_closure* res, const mlx_closure fun, bool shapeless) {
  MLXRS_TRY
  put<Fn>(res, mx::compile(get<Fn>(fun, "closure"), shapeless));
  MLXRS_CATCH
}

extern "C" int mlx_disable_compile(void) {
  MLXRS_TRY
  mx::disable_compile();
  MLXRS_CATCH
}

extern "C" int mlx_enable_compile(void) {
  MLXRS_TRY
  mx::enable_compile();
  MLXRS_CATCH
}

extern "C" int mlx_set_compile_mode(mlx_compile_mode mode) {
  MLXRS_TRY
  mx::CompileMode m;
  switch (mode) {
    case MLX_COMPILE_MODE_DISABLED:
      m = mx::CompileMode::disabled;
      break;
    case MLX_COMPILE_MODE_NO_SIMPLIFY:
      m = mx::CompileMode::no_simplify;
      break;
    case MLX_COMPILE_MODE_NO_FUSE:
      m = mx::CompileMode::no_fuse;
      break;
    case MLX_COMPILE_MODE_ENABLED:
      m = mx::CompileMode::enabled;
      break;
    default:
      throw std::invalid_argument("mlxrs: invalid mlx_compile_mode value");
  }
  mx::set_compile_mode(m);
  MLXRS_CATCH
}

// ================================================================ export

extern "C" int mlx_export_function(
    const char* file,
    const mlx_closure fun,
    const mlx_vector_array args,
    bool shapeless) {
  MLXRS_TRY
  mx::export_function(
      mlxrs::str(file), get<Fn>(fun, "closure"), mlxrs::vec(args), shapeless);
  MLXRS_CATCH
}

namespace {

/// A unique, never reused token of the calling thread.
uint64_t thread_token() {
  static std::atomic<uint64_t> next{1};
  thread_local const uint64_t token = next.fetch_add(1);
  return token;
}

/// MLX 0.32's `import_function` puts every imported op on the first stream
/// ever created for its device (`get_streams()` order), which belongs to
/// whichever thread created it: evaluating on any other thread fails with
/// "There is no Stream(cpu, 0) in current thread" (and always, once that
/// thread has exited). Workaround: each thread imports its own copy, and the
/// ops of its results (the copy's graph, shared with the results) are moved
/// to the calling thread's default streams. Only primitives of this thread's
/// copy are touched, so no other thread reads them.
struct ImportedPerThread {
  std::string file;
  std::mutex mu;
  std::unordered_map<uint64_t, std::shared_ptr<mx::ImportedFunction>> copies;

  std::shared_ptr<mx::ImportedFunction> get() {
    auto token = thread_token();
    {
      std::lock_guard<std::mutex> lock(mu);
      if (auto it = copies.find(token); it != copies.end()) {
        return it->second;
      }
    }
    auto f = std::make_shared<mx::ImportedFunction>(mx::import_function(file));
    std::lock_guard<std::mutex> lock(mu);
    return copies.emplace(token, std::move(f)).first->second;
  }
};

void move_to_thread_streams(const Arrays& outputs, const Arrays& inputs) {
  std::unordered_set<std::uintptr_t> seen;
  for (const auto& in : inputs) {
    seen.insert(in.id());
  }
  std::vector<std::pair<mx::Device, mx::Stream>> targets;
  auto target = [&](const mx::Device& d) {
    for (auto& [dev, s] : targets) {
      if (dev == d) {
        return s;
      }
    }
    auto s = mx::default_stream(d);
    targets.emplace_back(d, s);
    return s;
  };
  Arrays stack(outputs.begin(), outputs.end());
  while (!stack.empty()) {
    auto a = std::move(stack.back());
    stack.pop_back();
    if (!seen.insert(a.id()).second || !a.has_primitive()) {
      continue;
    }
    const mx::Stream& s = a.primitive().stream();
    if (auto t = target(s.device); !(s == t)) {
      // The primitive is a non-const object; `stream()` only exposes it
      // read-only.
      const_cast<mx::Stream&>(s) = t;
    }
    for (const auto& in : a.inputs()) {
      stack.push_back(in);
    }
  }
}

} // namespace

extern "C" int mlx_import_function(mlx_closure* res, const char* file) {
  MLXRS_TRY
  auto state = std::make_shared<ImportedPerThread>();
  state->file = mlxrs::str(file);
  // Import once now, so a bad file fails here rather than at the first call.
  state->get();
  put<Fn>(res, Fn([state](const Arrays& args) {
    auto outs = (*state->get())(args);
    move_to_thread_streams(outs, args);
    return outs;
  }));
  MLXRS_CATCH
}

extern "C" mlx_function_exporter mlx_function_exporter_new(
    const char* file,
    const mlx_closure fun,
    bool shapeless) {
  try {
    return mlx_function_exporter{new mx::FunctionExporter(
        mx::exporter(mlxrs::str(file), get<Fn>(fun, "closure"), shapeless))};
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_function_exporter{nullptr};
  }
}

extern "C" int mlx_function_exporter_free(mlx_function_exporter xfunc) {
  delete static_cast<mx::FunctionExporter*>(xfunc.ctx);
  return 0;
}

extern "C" int mlx_function_exporter_apply(
    const mlx_function_exporter xfunc,
    const mlx_vector_array args) {
  MLXRS_TRY
  get<mx::FunctionExporter>(xfunc, "function_exporter")(mlxrs::vec(args));
  MLXRS_CATCH
}

// ================================================================ kwargs closures

namespace {

/// A C-visible copy of a callback's keyword arguments.
struct TmpMap {
  mlx_map_string_to_array h;
  explicit TmpMap(const mx::Kwargs& m) : h{new mx::Kwargs(m)} {}
  ~TmpMap() {
    delete static_cast<mx::Kwargs*>(h.ctx);
  }
  TmpMap(const TmpMap&) = delete;
  TmpMap& operator=(const TmpMap&) = delete;
};

/// NULL-ctx vector / map arguments are empty.
Arrays args_or_empty(mlx_vector_array v) {
  return v.ctx == nullptr ? Arrays{} : mlxrs::vec(v);
}
mx::Kwargs kwargs_or_empty(mlx_map_string_to_array m) {
  return m.ctx == nullptr ? mx::Kwargs{} : mlxrs::map_arr(m);
}

KwFn wrap_kwargs(
    int (*fun)(
        mlx_vector_array*,
        const mlx_vector_array,
        const mlx_map_string_to_array,
        void*),
    std::shared_ptr<void> payload) {
  return [fun, payload = std::move(payload)](
             const Arrays& args, const mx::Kwargs& kwargs) {
    TmpVec a(args);
    TmpMap k(kwargs);
    TmpVec res;
    cb_begin();
    if (int st = fun(&res.h, a.h, k.h, payload.get()); st != 0) {
      cb_fail("mlx_closure_kwargs", st);
    }
    return res.take();
  };
}

} // namespace

extern "C" mlx_closure_kwargs mlx_closure_kwargs_new(void) {
  return mlx_closure_kwargs{nullptr};
}

extern "C" int mlx_closure_kwargs_free(mlx_closure_kwargs cls) {
  delete static_cast<KwFn*>(cls.ctx);
  return 0;
}

extern "C" mlx_closure_kwargs mlx_closure_kwargs_new_func(
    int (*fun)(
        mlx_vector_array*,
        const mlx_vector_array,
        const mlx_map_string_to_array)) {
  try {
    check_fun(reinterpret_cast<const void*>(fun));
    return handle_new<KwFn, mlx_closure_kwargs>(
        [fun](const Arrays& args, const mx::Kwargs& kwargs) {
          TmpVec a(args);
          TmpMap k(kwargs);
          TmpVec res;
          cb_begin();
          if (int st = fun(&res.h, a.h, k.h); st != 0) {
            cb_fail("mlx_closure_kwargs", st);
          }
          return res.take();
        });
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_closure_kwargs{nullptr};
  }
}

extern "C" mlx_closure_kwargs mlx_closure_kwargs_new_func_payload(
    int (*fun)(
        mlx_vector_array*,
        const mlx_vector_array,
        const mlx_map_string_to_array,
        void*),
    void* payload,
    void (*dtor)(void*)) {
  try {
    auto p = make_payload(payload, dtor);
    check_fun(reinterpret_cast<const void*>(fun));
    return handle_new<KwFn, mlx_closure_kwargs>(wrap_kwargs(fun, std::move(p)));
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_closure_kwargs{nullptr};
  }
}

extern "C" int mlx_closure_kwargs_set(
    mlx_closure_kwargs* cls,
    const mlx_closure_kwargs src) {
  MLXRS_TRY
  put<KwFn>(cls, get<KwFn>(src, "closure_kwargs"));
  MLXRS_CATCH
}

extern "C" int mlx_closure_kwargs_apply(
    mlx_vector_array* res,
    mlx_closure_kwargs cls,
    const mlx_vector_array input_0,
    const mlx_map_string_to_array input_1) {
  MLXRS_TRY
  KwFn f = get<KwFn>(cls, "closure_kwargs");
  mlxrs::set_vec(res, f(args_or_empty(input_0), kwargs_or_empty(input_1)));
  MLXRS_CATCH
}

extern "C" int mlx_export_function_kwargs(
    const char* file,
    const mlx_closure_kwargs fun,
    const mlx_vector_array args,
    const mlx_map_string_to_array kwargs,
    bool shapeless) {
  MLXRS_TRY
  mx::export_function(
      mlxrs::str(file),
      get<KwFn>(fun, "closure_kwargs"),
      args_or_empty(args),
      kwargs_or_empty(kwargs),
      shapeless);
  MLXRS_CATCH
}

extern "C" mlx_function_exporter mlxrs_function_exporter_new_kwargs(
    const char* file,
    const mlx_closure_kwargs fun,
    bool shapeless) {
  try {
    return mlx_function_exporter{new mx::FunctionExporter(mx::exporter(
        mlxrs::str(file), get<KwFn>(fun, "closure_kwargs"), shapeless))};
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_function_exporter{nullptr};
  }
}

extern "C" int mlx_function_exporter_apply_kwargs(
    const mlx_function_exporter xfunc,
    const mlx_vector_array args,
    const mlx_map_string_to_array kwargs) {
  MLXRS_TRY
  get<mx::FunctionExporter>(xfunc, "function_exporter")(
      args_or_empty(args), kwargs_or_empty(kwargs));
  MLXRS_CATCH
}

extern "C" int mlxrs_import_function_kwargs(
    mlx_closure_kwargs* res,
    const char* file) {
  MLXRS_TRY
  auto state = std::make_shared<ImportedPerThread>();
  state->file = mlxrs::str(file);
  state->get();
  put<KwFn>(res, KwFn([state](const Arrays& args, const mx::Kwargs& kwargs) {
    auto outs = (*state->get())(args, kwargs);
    Arrays ins(args);
    for (const auto& [k, v] : kwargs) {
      ins.push_back(v);
    }
    move_to_thread_streams(outs, ins);
    return outs;
  }));
  MLXRS_CATCH
}

// ================================================================ export callbacks

namespace {

void json_str(std::ostringstream& o, const std::string& s) {
  o << '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        o << "\\\"";
        break;
      case '\\':
        o << "\\\\";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          o << buf;
        } else {
          o << c;
        }
    }
  }
  o << '"';
}

void json_num(std::ostringstream& o, double v) {
  if (std::isnan(v)) {
    o << "\"nan\"";
  } else if (std::isinf(v)) {
    o << (v > 0 ? "\"inf\"" : "\"-inf\"");
  } else {
    o << v;
  }
}

template <typename V>
void json_list(std::ostringstream& o, const V& v) {
  o << '[';
  for (size_t i = 0; i < v.size(); i++) {
    o << (i ? "," : "") << v[i];
  }
  o << ']';
}

void json_dtype(std::ostringstream& o, mx::Dtype d) {
  o << static_cast<int>(mlxrs::from_dtype(d));
}

/// One `StateT`, tagged by its alternative (Shape and std::vector<int> are
/// the same C++ type: the index tells them apart).
void json_state(std::ostringstream& o, const mx::StateT& st) {
  switch (st.index()) {
    case 0:
      o << "{\"bool\":" << (std::get<0>(st) ? "true" : "false") << "}";
      break;
    case 1:
      o << "{\"int\":" << std::get<1>(st) << "}";
      break;
    case 2:
      o << "{\"size\":" << std::get<2>(st) << "}";
      break;
    case 3:
      o << "{\"float\":";
      json_num(o, std::get<3>(st));
      o << "}";
      break;
    case 4:
      o << "{\"double\":";
      json_num(o, std::get<4>(st));
      o << "}";
      break;
    case 5:
      o << "{\"dtype\":";
      json_dtype(o, std::get<5>(st));
      o << "}";
      break;
    case 6:
      o << "{\"shape\":";
      json_list(o, std::get<6>(st));
      o << "}";
      break;
    case 7:
      o << "{\"strides\":";
      json_list(o, std::get<7>(st));
      o << "}";
      break;
    case 8:
      o << "{\"ints\":";
      json_list(o, std::get<8>(st));
      o << "}";
      break;
    case 9:
      o << "{\"sizes\":";
      json_list(o, std::get<9>(st));
      o << "}";
      break;
    case 10: {
      o << "{\"bool_triples\":[";
      const auto& v = std::get<10>(st);
      for (size_t i = 0; i < v.size(); i++) {
        auto [a, b, c] = v[i];
        o << (i ? "," : "") << "[" << (a ? "true" : "false") << ","
          << (b ? "true" : "false") << "," << (c ? "true" : "false") << "]";
      }
      o << "]}";
      break;
    }
    case 11: {
      o << "{\"scalars\":[";
      const auto& v = std::get<11>(st);
      for (size_t i = 0; i < v.size(); i++) {
        o << (i ? "," : "");
        if (v[i].index() == 0) {
          o << "{\"bool\":" << (std::get<0>(v[i]) ? "true" : "false") << "}";
        } else if (v[i].index() == 1) {
          o << "{\"int\":" << std::get<1>(v[i]) << "}";
        } else {
          o << "{\"float\":";
          json_num(o, std::get<2>(v[i]));
          o << "}";
        }
      }
      o << "]}";
      break;
    }
    case 12: {
      const auto& v = std::get<12>(st);
      o << "{\"optional_float\":";
      if (v) {
        json_num(o, *v);
      } else {
        o << "null";
      }
      o << "}";
      break;
    }
    case 13:
      o << "{\"string\":";
      json_str(o, std::get<13>(st));
      o << "}";
      break;
    default:
      throw std::runtime_error("mlxrs: unknown export state kind");
  }
}

/// An `ExportCallbackInput` as JSON; arrays go to `arrays` (by index).
std::string json_event(const mx::ExportCallbackInput& in, Arrays& arrays) {
  std::ostringstream o;
  o.precision(17);
  o << '{';
  bool first = true;
  for (const auto& [key, val] : in) {
    o << (first ? "" : ",");
    first = false;
    json_str(o, key);
    o << ':';
    switch (val.index()) {
      case 0: {
        o << "{\"tensor_specs\":[";
        const auto& v = std::get<0>(val);
        for (size_t i = 0; i < v.size(); i++) {
          const auto& [name, shape, dtype] = v[i];
          o << (i ? "," : "") << '[';
          json_str(o, name);
          o << ',';
          json_list(o, shape);
          o << ',';
          json_dtype(o, dtype);
          o << ']';
        }
        o << "]}";
        break;
      }
      case 1: {
        o << "{\"named_arrays\":[";
        const auto& v = std::get<1>(val);
        for (size_t i = 0; i < v.size(); i++) {
          o << (i ? "," : "") << '[';
          json_str(o, v[i].first);
          o << ',' << arrays.size() << ']';
          arrays.push_back(v[i].second);
        }
        o << "]}";
        break;
      }
      case 2: {
        o << "{\"named_strings\":[";
        const auto& v = std::get<2>(val);
        for (size_t i = 0; i < v.size(); i++) {
          o << (i ? "," : "") << '[';
          json_str(o, v[i].first);
          o << ',';
          json_str(o, v[i].second);
          o << ']';
        }
        o << "]}";
        break;
      }
      case 3: {
        o << "{\"states\":[";
        const auto& v = std::get<3>(val);
        for (size_t i = 0; i < v.size(); i++) {
          o << (i ? "," : "");
          json_state(o, v[i]);
        }
        o << "]}";
        break;
      }
      case 4:
        o << "{\"string\":";
        json_str(o, std::get<4>(val));
        o << "}";
        break;
      default:
        throw std::runtime_error("mlxrs: unknown export value kind");
    }
  }
  o << '}';
  return o.str();
}

mx::ExportCallback wrap_export_callback(
    mlxrs_export_callback_fun fun,
    std::shared_ptr<void> payload) {
  return [fun, payload = std::move(payload)](const mx::ExportCallbackInput& in) {
    Arrays arrays;
    std::string json = json_event(in, arrays);
    TmpVec v(arrays);
    cb_begin();
    if (int st = fun(json.c_str(), v.h, payload.get()); st != 0) {
      cb_fail("export callback", st);
    }
  };
}

} // namespace

extern "C" int mlxrs_export_function_callback(
    mlxrs_export_callback_fun callback,
    void* payload,
    void (*dtor)(void*),
    const mlx_closure_kwargs fun,
    const mlx_vector_array args,
    const mlx_map_string_to_array kwargs,
    bool shapeless) {
  MLXRS_TRY
  auto p = make_payload(payload, dtor);
  check_fun(reinterpret_cast<const void*>(callback));
  mx::export_function(
      wrap_export_callback(callback, std::move(p)),
      get<KwFn>(fun, "closure_kwargs"),
      args_or_empty(args),
      kwargs_or_empty(kwargs),
      shapeless);
  MLXRS_CATCH
}

extern "C" mlx_function_exporter mlxrs_function_exporter_new_callback(
    mlxrs_export_callback_fun callback,
    void* payload,
    void (*dtor)(void*),
    const mlx_closure_kwargs fun,
    bool shapeless) {
  try {
    auto p = make_payload(payload, dtor);
    check_fun(reinterpret_cast<const void*>(callback));
    return mlx_function_exporter{new mx::FunctionExporter(mx::exporter(
        wrap_export_callback(callback, std::move(p)),
        get<KwFn>(fun, "closure_kwargs"),
        shapeless))};
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
    return mlx_function_exporter{nullptr};
  }
}

// ================================================================ graphs

extern "C" int mlxrs_export_to_dot(mlx_string* res, const mlx_vector_array outputs) {
  MLXRS_TRY
  std::ostringstream os;
  mx::export_to_dot(os, mlxrs::vec(outputs));
  mlxrs::set_string(res, os.str());
  MLXRS_CATCH
}

extern "C" int mlxrs_print_graph(mlx_string* res, const mlx_vector_array outputs) {
  MLXRS_TRY
  std::ostringstream os;
  mx::print_graph(os, mlxrs::vec(outputs));
  mlxrs::set_string(res, os.str());
  MLXRS_CATCH
}
