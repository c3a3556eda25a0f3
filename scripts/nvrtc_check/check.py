#!/usr/bin/env python3
"""Compile-check the CUDA kernels of crates/mlxrs-sys/csrc/norm_matvec.cpp
with NVRTC on a machine without a GPU (NVRTC compiles to PTX without one),
as MLX's `cuda_kernel` would assemble them: a device run costs minutes of
budget, a typo here costs seconds.

Needs (paths by env var, defaults as on the project's CPU machine):
  NVRTC_LIB    libnvrtc.so.13 (`pip download nvidia-cuda-nvrtc` and unzip)
  CUDA_INC     CUDA runtime headers (`pip download nvidia-cuda-runtime`,
               unzip: nvidia/cu13/include)
  MLX_CUDA_INC the mlx-cuda-13 wheel's mlx/include (cutlass, cute, cccl)
  MLX_DEVICE   a folder holding mlx/backend/cuda/device/*.cuh (MLX's JIT
               headers, embedded in libmlx; from MLX's source tree)
  DUMP         the dump_source binary (build line below)
Build dump_source (links the C layer's archive and the CPU wheel's libmlx):
  g++ -std=c++20 -I crates/mlxrs-sys/csrc -I $MLX/include \\
    scripts/nvrtc_check/dump_source.cpp target/debug/build/mlxrs-sys-*/out/libmlxrs_c.a \\
    -L $MLX/lib -lmlx -Wl,-rpath,$MLX/lib -o /tmp/dump_source
Usage: check.py [DTYPE,K,ROWS,RESID,SWIGLU,BITS,GROUP ...] (default: a
spread over dtypes, dense / 4-bit / 8-bit, residue widths). Prints one line
per kernel (PTX size, local-memory spills) or NVRTC's log, exit 1 on any
failure."""
import ctypes, os, subprocess, sys

env = os.environ.get
nv = ctypes.CDLL(env("NVRTC_LIB", "/tmp/nvrtc/x/nvidia/cu13/lib/libnvrtc.so.13"))
incs = [env("MLX_DEVICE", "/tmp/nvc/inc"), env("MLX_CUDA_INC", "/tmp/whl/x/mlx/include")]
incs += [incs[1] + "/cccl", env("CUDA_INC", "/tmp/nvrtc/x/nvidia/cu13/include")]
dump = env("DUMP", "/tmp/dump_source")


def build(dt, k, rows, resid, swiglu, bits, group):
    body = subprocess.check_output([dump] + [str(v) for v in (dt, k, rows, resid, swiglu, bits, group)]).decode()
    t = ["__nv_bfloat16", "__half", "float"][dt]
    ins = [("x", t)] + ([("d", t)] if resid else []) + [("nw", t), ("w", "uint32_t" if bits else t)]
    ins += [("scales", t), ("biases", t)] if bits else []
    outs = ([("h", t)] if resid else []) + [("y", t)]
    header = "#include <cooperative_groups/reduce.h>\n#include <cuda/std/type_traits>\n"
    if swiglu:
        header += '#include "mlx/backend/cuda/device/binary_ops.cuh"\n#include "mlx/backend/cuda/device/unary_ops.cuh"\n'
    src = '\n#include "mlx/backend/cuda/device/utils.cuh"\n\n#include <cooperative_groups.h>\n\n' + header
    src += "namespace mlx::core::cu {\n\nnamespace cg = cooperative_groups;\n\n__global__ void kern(\n"
    src += "".join(f"    const {ty}* {n},\n" for n, ty in ins)
    src += ",\n".join(f"    {ty}* {n}" for n, ty in outs) + ") {\n" + body + "\n}\n\n} // namespace mlx::core::cu\n"
    prog = ctypes.c_void_p()
    assert nv.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"k.cu", 0, None, None) == 0
    opts = [b"--device-as-default-execution-space", b"--gpu-architecture=compute_90a"]
    opts += [b"-I" + p.encode() for p in incs]
    rc = nv.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    tag = f"dtype {dt} K {k} rows {rows} resid {resid} swiglu {swiglu} bits {bits} group {group}"
    if rc != 0:
        n = ctypes.c_size_t()
        nv.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
        log = ctypes.create_string_buffer(n.value)
        nv.nvrtcGetProgramLog(prog, log)
        print("FAIL", tag)
        print(log.value.decode()[:4000])
        return False
    n = ctypes.c_size_t()
    nv.nvrtcGetPTXSize(prog, ctypes.byref(n))
    ptx = ctypes.create_string_buffer(n.value)
    nv.nvrtcGetPTX(prog, ptx)
    p = ptx.value.decode()
    print("ok", tag, "ptx", len(p), "spills", p.count("ld.local") + p.count("st.local"))
    return True


default = [f"{dt},{c}" for dt in (0, 1, 2) for c in (
    "2048,3072,1,0,0,0", "2048,8192,1,1,0,0", "1024,4096,0,0,0,0", "64,64,1,1,0,0",
    "1024,4096,1,0,4,64", "1024,3072,1,1,4,64", "64,64,1,1,4,64", "2048,3072,1,1,8,128")]
ok = all([build(*map(int, a.split(","))) for a in (sys.argv[1:] or default)])
sys.exit(0 if ok else 1)
