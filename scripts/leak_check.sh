#!/usr/bin/env bash
# Leak check: mlxrs-core's tests under valgrind memcheck.
#
#   scripts/leak_check.sh                      # lib, ops_smoke, differential, gguf, indexing, io_stream, export_kwargs
#   scripts/leak_check.sh differential gguf    # only these test targets ("lib" = unit tests)
#
# Each test binary runs single-threaded under
#   valgrind --leak-check=full --errors-for-leak-kinds=definite
# with the suppressions below (MLX's own behaviour, not mlxrs's). The script
# fails if any binary has a definite leak or an unsuppressed memory error;
# the logs are kept in target/leak-check/<test>.log. Needs valgrind
# (apt-get install valgrind); a full run takes a few minutes.
#
# Suppressions (see docs/testing.md):
#   - mlx-copy-overread: MLX's vectorized CPU copy (used by matmul_general
#     for non-contiguous inputs) reads up to 16 bytes past the end of small
#     heap buffers (the extra lanes are discarded). MLX behaviour, not an
#     mlxrs error.
# MLX's one-time allocations (scheduler threads, device/stream registries,
# the buffer cache) are "still reachable" or "possibly lost" (thread stacks),
# which --errors-for-leak-kinds=definite does not count.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
  echo "leak_check: valgrind not found (apt-get install valgrind)" >&2
  exit 2
fi

tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
  tests=(lib ops_smoke differential gguf indexing io_stream export_kwargs)
fi

out=target/leak-check
mkdir -p "$out"
supp="$out/mlx.supp"
cat >"$supp" <<'EOF'
{
   mlx-copy-overread
   Memcheck:Addr16
   fun:*dispatch_all_types*copy*
   ...
   obj:*/libmlx.so*
}
{
   mlx-copy-overread-8
   Memcheck:Addr8
   fun:*dispatch_all_types*copy*
   ...
   obj:*/libmlx.so*
}
EOF

echo "leak_check: building mlxrs-core's tests" >&2
build_log=$(cargo test -p mlxrs-core --no-run 2>&1) || { echo "$build_log" >&2; exit 1; }

status=0
for t in "${tests[@]}"; do
  if [ "$t" = lib ]; then
    pat='unittests src/lib.rs'
  else
    pat="tests/$t.rs"
  fi
  bin=$(printf '%s\n' "$build_log" | sed -n "s|.*Executable $pat (\(.*\))|\1|p" | tail -1)
  if [ -z "$bin" ]; then
    echo "leak_check: no test binary for '$t'" >&2
    status=1
    continue
  fi
  log="$out/$t.log"
  echo "leak_check: $t ($bin)" >&2
  if valgrind --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite \
    --error-exitcode=99 --suppressions="$supp" --num-callers=40 \
    "$bin" --test-threads=1 >"$log" 2>&1; then
    rc=0
  else
    rc=$?
  fi
  summary=$(grep -E "definitely lost:|ERROR SUMMARY:|test result:" "$log" | sed 's/^==[0-9]*== //' | tr '\n' ';')
  echo "  $summary" >&2
  if [ $rc -ne 0 ]; then
    echo "leak_check: $t FAILED (exit $rc); see $log" >&2
    status=1
  fi
done
exit $status
