#!/usr/bin/env bash
# The optimized-BLAS ratio on Linux CPU: the f32 matmul criterion bench with
# mlxrs's default link (OpenBLAS ahead of libmlx), then with the wheel's
# reference BLAS forced first via LD_PRELOAD. Prints GFLOP/s and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p mlxrs-benches --bench ops --no-run >/dev/null 2>&1
bin=$(ls -t target/release/deps/ops-* | grep -v '\.d$' | head -1)
lib=$(dirname "$(readlink -f "$(ldd "$bin" | awk '/libmlx.so/{print $3}')")")
ref=$(ls "$lib"/../../mlx_cpu.libs/libblas-*.so* 2>/dev/null | head -1)
[ -n "$ref" ] || { echo "no wheel reference BLAS found next to $lib" >&2; exit 1; }
t() { "$@" "$bin" --bench matmul_1024x1024_float32 2>/dev/null | awk '/time:/{gsub(/\[|\]/,""); print $4, $5; exit}'; }
fast=$(t env); slow=$(t env LD_PRELOAD="$ref")
python3 - "$fast" "$slow" <<'PY'
import sys
def sec(s):
    v, u = s.split(); return float(v) * {"s": 1, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}[u]
f, s = sec(sys.argv[1]), sec(sys.argv[2])
fl = 2 * 1024**3
print(f"matmul 1024^2 f32: OpenBLAS {fl/f/1e9:.1f} GFLOP/s, wheel reference BLAS {fl/s/1e9:.1f} GFLOP/s, ratio {s/f:.1f}x")
PY
