// mlxrs C layer, hand-written part: custom CUDA / Metal kernels
// (mlx::core::fast::cuda_kernel / metal_kernel in mlx/fast.h), in the shape
// of mlx-c's `mlx_fast_cuda_kernel_*` / `mlx_fast_metal_kernel_*`: a kernel
// handle made once, a config handle with the per-call arguments, `apply`.
#include "private.h"

namespace mx = mlx::core;

namespace {

struct KernelConfig {
  std::vector<mx::Shape> output_shapes;
  std::vector<mx::Dtype> output_dtypes;
  std::tuple<int, int, int> grid{1, 1, 1};
  std::tuple<int, int, int> threadgroup{1, 1, 1};
  std::vector<std::pair<std::string, mx::fast::TemplateArg>> template_args;
  std::optional<float> init_value;
  bool verbose = false;
};

KernelConfig& config_ref(mlx_fast_cuda_kernel_config c) {
  if (c.ctx == nullptr) {
    throw std::invalid_argument("mlxrs: empty (null) kernel config handle");
  }
  return *static_cast<KernelConfig*>(c.ctx);
}

mx::fast::CustomKernelFunction& kernel_ref(void* ctx) {
  if (ctx == nullptr) {
    throw std::invalid_argument("mlxrs: empty (null) custom kernel handle");
  }
  return *static_cast<mx::fast::CustomKernelFunction*>(ctx);
}

std::vector<std::string> names(const char* const* data, size_t num) {
  if (num > 0 && data == nullptr) {
    throw std::invalid_argument("mlxrs: null name list");
  }
  std::vector<std::string> out;
  out.reserve(num);
  for (size_t i = 0; i < num; ++i) {
    out.push_back(mlxrs::str(data[i]));
  }
  return out;
}

int apply(
    mlx_vector_array* outputs,
    void* kernel,
    const mlx_vector_array inputs,
    const mlx_fast_cuda_kernel_config config,
    const mlx_stream stream) {
  MLXRS_TRY
  auto& c = config_ref(config);
  mlxrs::set_vec(
      outputs,
      kernel_ref(kernel)(
          mlxrs::vec(inputs),
          c.output_shapes,
          c.output_dtypes,
          c.grid,
          c.threadgroup,
          c.template_args,
          c.init_value,
          c.verbose,
          mlxrs::stream(stream)));
  MLXRS_CATCH
}

} // namespace

extern "C" mlx_fast_cuda_kernel_config mlx_fast_cuda_kernel_config_new(void) {
  mlx_fast_cuda_kernel_config out{nullptr};
  try {
    out.ctx = new KernelConfig();
  } catch (const std::exception& e) {
    mlxrs::fail(e.what());
  }
  return out;
}

extern "C" int mlx_fast_cuda_kernel_config_free(mlx_fast_cuda_kernel_config cls) {
  delete static_cast<KernelConfig*>(cls.ctx);
  return 0;
}

extern "C" int mlx_fast_cuda_kernel_config_add_output_arg(
    mlx_fast_cuda_kernel_config cls,
    const int* shape,
    size_t size,
    mlx_dtype dtype) {
  MLXRS_TRY
  auto& c = config_ref(cls);
  c.output_shapes.push_back(mlxrs::shape(shape, size));
  c.output_dtypes.push_back(mlxrs::to_dtype(dtype));
  MLXRS_CATCH
}

extern "C" int mlx_fast_cuda_kernel_config_set_grid(
    mlx_fast_cuda_kernel_config cls,
    int grid1,
    int grid2,
    int grid3) {
  MLXRS_TRY
  config_ref(cls).grid = {grid1, grid2, grid3};
  MLXRS_CATCH
}

extern "C" int mlx_fast_cuda_kernel_config_set_thread_group(
    mlx_fast_cuda_kernel_config cls,
    int thread1,
    int thread2,
    int thread3) {
  MLXRS_TRY
  config_ref(cls).threadgroup = {thread1, thread2, thread3};
  MLXRS_CATCH
}

extern "C" int mlx_fast_cuda_kernel_config_set_init_value(
    mlx_fast_cuda_kernel_config cls,
    float value) {
  MLXRS_TRY
  config_ref(cls).init_value = value;
  MLXRS_CATCH
}

extern "C" int mlx_fast_cuda_kernel_config_set_verbose(
    mlx_fast_cuda_kernel_config cls,
    bool verbose) {
  MLXRS_TRY
  config_ref(cls).verbose = verbose;
  MLXRS_CATCH
}

extern "C" int mlx_fast_cuda_kernel_config_add_template_arg_dtype(
    mlx_fast_cuda_kernel_config cls,
    const char* name,
    mlx_dtype dtype) {
  MLXRS_TRY
  config_ref(cls).template_args.emplace_back(
      mlxrs::str(name), mlxrs::to_dtype(dtype));
  MLXRS_CATCH
}

extern "C" int mlx_fast_cuda_kernel_config_add_template_arg_int(
    mlx_fast_cuda_kernel_config cls,
    const char* name,
    int value) {
  MLXRS_TRY
  config_ref(cls).template_args.emplace_back(mlxrs::str(name), value);
  MLXRS_CATCH
}

extern "C" int mlx_fast_cuda_kernel_config_add_template_arg_bool(
    mlx_fast_cuda_kernel_config cls,
    const char* name,
    bool value) {
  MLXRS_TRY
  config_ref(cls).template_args.emplace_back(mlxrs::str(name), value);
  MLXRS_CATCH
}

extern "C" int mlx_fast_cuda_kernel_new(
    mlx_fast_cuda_kernel* res,
    const char* name,
    const char* const* input_names,
    size_t num_inputs,
    const char* const* output_names,
    size_t num_outputs,
    const char* source,
    const char* header,
    bool ensure_row_contiguous,
    int shared_memory) {
  MLXRS_TRY
  if (res == nullptr) {
    throw std::invalid_argument("mlxrs: null out-pointer");
  }
  auto f = mx::fast::cuda_kernel(
      mlxrs::str(name),
      names(input_names, num_inputs),
      names(output_names, num_outputs),
      mlxrs::str(source),
      header == nullptr ? std::string() : std::string(header),
      ensure_row_contiguous,
      shared_memory);
  delete static_cast<mx::fast::CustomKernelFunction*>(res->ctx);
  res->ctx = new mx::fast::CustomKernelFunction(std::move(f));
  MLXRS_CATCH
}

extern "C" int mlx_fast_cuda_kernel_free(mlx_fast_cuda_kernel cls) {
  delete static_cast<mx::fast::CustomKernelFunction*>(cls.ctx);
  return 0;
}

extern "C" int mlx_fast_cuda_kernel_apply(
    mlx_vector_array* outputs,
    mlx_fast_cuda_kernel cls,
    const mlx_vector_array inputs,
    const mlx_fast_cuda_kernel_config config,
    const mlx_stream stream) {
  return apply(outputs, cls.ctx, inputs, config, stream);
}

extern "C" int mlx_fast_metal_kernel_new(
    mlx_fast_metal_kernel* res,
    const char* name,
    const char* const* input_names,
    size_t num_inputs,
    const char* const* output_names,
    size_t num_outputs,
    const char* source,
    const char* header,
    bool ensure_row_contiguous,
    bool atomic_outputs) {
  MLXRS_TRY
  if (res == nullptr) {
    throw std::invalid_argument("mlxrs: null out-pointer");
  }
  auto f = mx::fast::metal_kernel(
      mlxrs::str(name),
      names(input_names, num_inputs),
      names(output_names, num_outputs),
      mlxrs::str(source),
      header == nullptr ? std::string() : std::string(header),
      ensure_row_contiguous,
      atomic_outputs);
  delete static_cast<mx::fast::CustomKernelFunction*>(res->ctx);
  res->ctx = new mx::fast::CustomKernelFunction(std::move(f));
  MLXRS_CATCH
}

extern "C" int mlx_fast_metal_kernel_free(mlx_fast_metal_kernel cls) {
  delete static_cast<mx::fast::CustomKernelFunction*>(cls.ctx);
  return 0;
}

extern "C" int mlx_fast_metal_kernel_apply(
    mlx_vector_array* outputs,
    mlx_fast_metal_kernel cls,
    const mlx_vector_array inputs,
    const mlx_fast_cuda_kernel_config config,
    const mlx_stream stream) {
  return apply(outputs, cls.ctx, inputs, config, stream);
}

// ================================================================ precompiled

extern "C" int mlx_fast_precompiled_cuda_kernel(
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
    const mlx_stream s) {
  MLXRS_TRY
  if (compiled_source_len > 0 && compiled_source == nullptr) {
    throw std::invalid_argument("mlxrs: null compiled_source");
  }
  if (num_outputs > 0 &&
      (output_ndims == nullptr || output_dtypes == nullptr)) {
    throw std::invalid_argument("mlxrs: null output shapes / dtypes");
  }
  if (num_scalars > 0 && scalars == nullptr) {
    throw std::invalid_argument("mlxrs: null scalars");
  }
  std::vector<mx::Shape> shapes;
  std::vector<mx::Dtype> dtypes;
  size_t at = 0;
  for (size_t i = 0; i < num_outputs; i++) {
    shapes.push_back(mlxrs::shape(output_shapes + at, output_ndims[i]));
    at += output_ndims[i];
    dtypes.push_back(mlxrs::to_dtype(output_dtypes[i]));
  }
  std::vector<mx::fast::ScalarArg> sc;
  for (size_t i = 0; i < num_scalars; i++) {
    switch (scalars[i].kind) {
      case MLXRS_SCALAR_BOOL:
        sc.emplace_back(scalars[i].b);
        break;
      case MLXRS_SCALAR_INT:
        sc.emplace_back(scalars[i].i);
        break;
      case MLXRS_SCALAR_FLOAT:
        sc.emplace_back(scalars[i].f);
        break;
      default:
        throw std::invalid_argument("mlxrs: bad scalar kind");
    }
  }
  mlxrs::set_vec(
      outputs,
      mx::fast::precompiled_cuda_kernel(
          mlxrs::str(name),
          std::string(compiled_source, compiled_source_len),
          mlxrs::vec(inputs),
          shapes,
          dtypes,
          sc,
          {grid_x, grid_y, grid_z},
          {threadgroup_x, threadgroup_y, threadgroup_z},
          shared_memory,
          mlxrs::opt_float(init_value),
          ensure_row_contiguous,
          mlxrs::stream(s)));
  MLXRS_CATCH
}
