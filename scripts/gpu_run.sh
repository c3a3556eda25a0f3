#!/usr/bin/env bash
# The GPU-machine side of a device session (docs/gpu.md): run from the
# repository root there, after the wheel parts are in /root/parts and the
# binaries (mlxrs.xz, base.xz: stripped, OpenBLAS dependency removed) in
# .gpu/bin. Usage: bash scripts/gpu_run.sh STAGE, STAGE one of
#   A  decode analysis: fused vs eager tokens, host-time split per step
#      (MLXRS_DECODE_TIMING) under MLX graph settings, an interleaved sweep
#      of those settings for mlxrs and mlx-lm, then bench_lm.sh llama bf16
#      against mlx-lm and the base binary (5 rounds)
#   B  bench_lm.sh: llama 4-bit, qwen3 bf16, llama batch 8, qwen3 4-bit
#      (5 rounds each; split over two calls if one would pass 600 s)
#   C  bench_serve.sh on a random llama-3.2-1b folder, C = 1/8/32 (base too)
#   D  LoRA: mlxrs lora vs mlx_lm.lora on that folder (5 rounds)
#   E  Kokoro RTF (the ONNX parts in /root/pypi)
#   F  LoRA loss check: mlxrs lora (as is, compile off, projection stacks
#      off) next to mlx_lm.lora on the tiny llama fixtures (f32, bf16)
#   G  LoRA on the 1B folder, every report, 5 rounds
#   H  bench_lm.sh llama bf16 against mlx-lm and the base binary (5 rounds)
#   I  projection stacks + compiled SwiGLU on/off (5 rounds); qwen3 4-bit
#   J  LoRA per-step losses from the same initial adapters on one batch
#   K  LoRA seed spread (seeds 0/1/2, both programs), then both from the
#      same initial adapters on the full data
#   L  HEAD vs the previous binary (base): greedy tokens, a decode step's
#      graph (node counts), per-node host costs (scripts/node_cost.py),
#      bench_lm.sh llama bf16 vs mlx-lm and base (5 rounds)
#   M  the same, shorter: tokens, node counts (llama, qwen3), node_cost.py,
#      bench_lm.sh llama bf16 vs mlx-lm and base (5 rounds)
#   N  Qwen3's joint q/k norm: tokens and logprobs HEAD vs base (tiny qwen3,
#      bf16 and f32), qwen3-0.6b step nodes and host split, both binaries
#   O  batched decode with grouped prefill (session 11): llama bf16 batch 8
#      and batch 32 vs mlx-lm's BatchGenerator and base (5 rounds each)
#   T  the evaluation thread (session 12): tokens and logprobs with it on
#      and off (tiny llama bf16, qwen3 bf16/f32), the host split of both,
#      bench_lm.sh llama bf16 vs mlx-lm and the same binary with
#      MLXRS_EVAL_THREAD=0 as base (5 rounds)
#   U  bench_lm.sh qwen3 bf16, llama 4-bit, qwen3 4-bit (5 rounds each, the
#      one-thread binary as base)
#   V  kernel census (session 13): MLX's CUDA graphs of a few decode steps
#      as dot files (MLX_SAVE_CUDA_GRAPHS_DOT_FILE), mlxrs and mlx-lm, llama
#      bf16 and 4-bit, packed to $OUT/dots.tar.xz
#   W  MLX_MAX_OPS_PER_BUFFER / MLX_USE_CUDA_GRAPHS sweep, 5 interleaved
#      rounds, llama bf16 (W_SHAPES="bf16 q4", W_ENVS override)
#   Q  4-bit prefill through dequantize + dense matmul (session 14):
#      scripts/qmm_cost.py, tokens/logprobs with MLXRS_GPU_DEQUANT_ROWS=0
#      and 256 (tiny llama/qwen3 4-bit, a ~300-token prompt), a prefill
#      sweep (p512/p2048), bench_lm.sh llama 4-bit vs mlx-lm and base
#   P  bounded prefill memory (session 16; the binary of fdba73c paced only
#      quantized models, HEAD paces every long GPU prefill): the matmul_t test binary
#      (.gpu/bin/mt.xz), tokens/logprobs of the tiny 4-bit fixtures with
#      MLXRS_PREFILL_LAYERS_AHEAD=0 / default / MLXRS_GPU_DEQUANT_ROWS=0
#      (a ~300-token prompt), then peak memory and prefill speed of
#      llama-3.2-1b 4-bit p2048 per setting (3 interleaved rounds; P_SHAPES
#      adds shapes, e.g. "llama-3.1-8b"; P_PARTS="mt tokens memory" picks)
#   Z  split_halves (session 13): tokens and logprobs HEAD vs base (tiny
#      llama bf16 / f32, qwen3 bf16), HEAD's kernel census (bf16), then
#      bench_lm.sh llama bf16 vs mlx-lm and base (5 rounds; Z_SHAPES adds
#      more, e.g. "llama-3.2-1b: qwen3-0.6b:")
#   Y  the fused add + RMSNorm + projection kernels (sessions 17-18): the
#      norm_matvec test binary (.gpu/bin/nm.xz; by default and with
#      MLXRS_FUSE_NORM_MATVEC=0), tokens and logprobs default / =0 / base
#      (tiny llama bf16 / f32, qwen3 bf16, llama / qwen3 4-bit), the kernel
#      census of a llama bf16 step, then the same binary by default and
#      with =0, 5 interleaved rounds (Y_AB shapes,
#      default "llama-3.2-1b: qwen3-0.6b:4"); Y_PARTS="test tokens census ab";
#      Y_MODELS="FIXTURE:DTYPE ..." picks the tokens part's tiny fixtures
# Everything it writes lands under $OUT.
set -uo pipefail
stage=${1:?usage: gpu_run.sh A..Z}
if [ ! -e /tmp/site/mlx/lib/libmlx.so ]; then bash .gpu/p5/install-mlx-cuda.sh > /tmp/exports.sh; fi
export LD_LIBRARY_PATH=/tmp/site/mlx/lib:${LD_LIBRARY_PATH:-} PYTHONPATH=/tmp/site MLX_LIB_DIR=/tmp/site/mlx/lib
mkdir -p /tmp/b
for n in mlxrs base; do [ -x /tmp/b/$n ] || [ ! -e .gpu/bin/$n.xz ] || { xz -dc .gpu/bin/$n.xz > /tmp/b/$n; chmod +x /tmp/b/$n; }; done
M=/tmp/b/mlxrs; B=/tmp/b/base; PY=python3
# The current binary with decode steps queued on the generating thread.
printf '#!/bin/sh\nMLXRS_EVAL_THREAD=0 exec /tmp/b/mlxrs "$@"\n' > /tmp/b/one; chmod +x /tmp/b/one
export PYTHON=$PY
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,utilization.gpu --format=csv | tee -a $OUT/nvidia.txt
gtps() { tail -1 | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d=d.get("average",d); print(round(d["generation_tps"],1))' 2>/dev/null; }
# /tmp/ldata: 64 made-up rows of 200 common words (train/valid/test.jsonl)
make_lora_data() {
  mkdir -p /tmp/ldata
  $PY - /tmp/ldata <<'PYEOF'
import json, random, sys
random.seed(0)
words = "the a of to and in is it that was for on are as with his they at be this from have or by one had not but what all were when we there can an your which their said if do will each about how up out them then she many some so these would other into has more her two like him see time could no make than first been its who now people my made over did down only way find use may water long little very after words called just where most know".split()
rows = [{"text": " ".join(random.choice(words) for _ in range(200))} for _ in range(64)]
# In token-length order: mlx-lm 0.32 groups rows in file order, mlxrs by
# token length, so this order gives both the same batches (docs/lora.md).
try:
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained("models/tiny/llama")
    rows.sort(key=lambda r: len(tok.encode(r["text"])))
except Exception as e:
    print(f"rows left unsorted: {e}", file=sys.stderr)
for f, n in (("train", 64), ("valid", 8), ("test", 8)):
    open(f"{sys.argv[1]}/{f}.jsonl", "w").write("\n".join(json.dumps(r) for r in rows[:n]) + "\n")
PYEOF
}
# kernel_census DIR: the kernels of the CUDA graphs MLX saved under DIR
# (MLX_SAVE_CUDA_GRAPHS_DOT_FILE=DIR/g): per graph, then by name over the
# last three graphs (about one decode step).
kernel_census() {
  python3 - "$1" <<'PYEOF'
import collections, glob, re, sys
fs = sorted(glob.glob(sys.argv[1] + "/g_*.dot"), key=lambda p: int(re.search(r"_(\d+)\.dot", p).group(1)))
print("kernels per graph", [len(re.findall(r'label="\d+\n_Z', open(f).read())) for f in fs])
names = [m for f in fs[-3:] for m in re.findall(r'label="\d+\n(_Z[^\n"]*)', open(f).read())]
ident = lambda n: (re.match(r"_ZN3mlx4core2cu(\d+)", n) and (lambda k: n[len(re.match(r"_ZN3mlx4core2cu\d+", n).group(0)):][:k])(int(re.match(r"_ZN3mlx4core2cu(\d+)", n).group(1)))) or n[:40]
print("last 3 graphs:", len(names), "kernels")
for k, v in collections.Counter(ident(n) for n in names).most_common():
    print(f"{v:4d} {k}")
PYEOF
}
case $stage in
P)
  parts=${P_PARTS:-mt tokens memory}
  if [[ $parts == *mt* ]] && [ -e .gpu/bin/mt.xz ]; then
    xz -dc .gpu/bin/mt.xz > /tmp/b/mt; chmod +x /tmp/b/mt
    /tmp/b/mt --test-threads=1 2>&1 | tail -25 | tee $OUT/p_mt.txt
  fi
  # ~360 tokens: past the dense path's 256 rows, within the fixtures' 512.
  PR=$(python3 -c 'print(" ".join(["The quick brown fox jumps over the lazy dog."] * 14))')
  [[ $parts == *tokens* ]] && for m in llama-4bit qwen3-4bit; do
    for e in "MLXRS_PREFILL_LAYERS_AHEAD=0" "X=1" "MLXRS_GPU_DEQUANT_ROWS=0"; do
      env $e $M generate --model models/tiny/$m -p "$PR" -m 32 --temp 0 --ignore-chat-template --json --dtype bfloat16 > "$OUT/p_${m}_${e%%=*}.json" 2>>$OUT/stderr.txt
    done
    for o in X MLXRS_GPU_DEQUANT_ROWS; do
      python3 -c 'import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:3]); print(sys.argv[3], "prompt", a.get("prompt_tokens"), "tokens", "same" if a["tokens"]==b["tokens"] else "DIFFER", "logprobs", "same" if a["logprobs"]==b["logprobs"] else "differ, max |d| %.3g" % max(abs(x-y) for x,y in zip(a["logprobs"],b["logprobs"])), len(a["tokens"]))' "$OUT/p_${m}_MLXRS_PREFILL_LAYERS_AHEAD.json" "$OUT/p_${m}_$o.json" "$m ahead=0 vs $o"
    done
  done 2>&1 | tee $OUT/p_tokens.txt
  pk() { tail -1 | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d=d.get("average",d); print("prefill %.1f tok/s peak %.3f GB" % (d["prompt_tps"], d["peak_memory_gb"]))' 2>/dev/null; }
  [[ $parts == *memory* ]] && for sh in llama-3.2-1b ${P_SHAPES:-}; do
    for r in 1 2 3; do
      for e in MLXRS_GPU_DEQUANT_ROWS=0 MLXRS_PREFILL_LAYERS_AHEAD=0 MLXRS_PREFILL_LAYERS_AHEAD=1 X=1 MLXRS_PREFILL_LAYERS_AHEAD=4; do
        echo "$sh round $r [$e] $(env $e $M bench --shape $sh -q 4 -p 2048 -g 8 -n 2 --json 2>>$OUT/stderr.txt | pk)"
      done
      [ $sh = llama-3.2-1b ] || break
    done
  done 2>&1 | tee $OUT/p_memory.txt
  ;;
A)
  # 1. correctness of the fused SwiGLU on the GPU: tokens with and without compile, and Python's text
  $M generate --model models/tiny/llama -p "The quick brown fox" -m 32 --temp 0 --ignore-chat-template --json > $OUT/gen_fused.json 2>>$OUT/stderr.txt
  MLXRS_FUSE_PROJECTIONS=0 MLX_DISABLE_COMPILE=1 $M generate --model models/tiny/llama -p "The quick brown fox" -m 32 --temp 0 --ignore-chat-template --json > $OUT/gen_eager.json 2>>$OUT/stderr.txt
  $M generate --model models/tiny/llama -p "The quick brown fox" -m 32 --temp 0 --ignore-chat-template > $OUT/gen_fused.txt 2>>$OUT/stderr.txt
  $PY -m mlx_lm generate --model models/tiny/llama --prompt "The quick brown fox" --max-tokens 32 --temp 0 --ignore-chat-template > $OUT/gen_py.txt 2>>$OUT/stderr.txt
  python3 -c 'import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:3]); ka=[k for k in a if "token" in k]; print("token keys", ka); print("fused == eager tokens" if all(a[k]==b[k] for k in ka) else "FUSED DIFFERS")' $OUT/gen_fused.json $OUT/gen_eager.json
  # 2. where decode time goes (host build / queue / wait), bf16 and 4-bit
  for q in "" "-q 4"; do
    for e in "" "MLXRS_FUSE_PROJECTIONS=0 MLX_DISABLE_COMPILE=1" "MLX_USE_CUDA_GRAPHS=0" "MLX_MAX_OPS_PER_BUFFER=1000 MLX_MAX_MB_PER_BUFFER=100000"; do
      echo "== timing q=[$q] env=[$e]"; env $e MLXRS_DECODE_TIMING=1 $M bench --shape llama-3.2-1b -p 128 -g 256 -n 2 $q 2>&1 | grep -E 'decode timing|Averages'
    done
  done 2>&1 | tee $OUT/timing.txt
  # 3. env sweep, interleaved, mlxrs and mlx-lm, llama-3.2-1b bf16 decode
  $M bench --shape llama-3.2-1b --dump-config /tmp/cfg.json
  for r in $(seq ${SWEEP_ROUNDS:-1}); do
    for e in "X=1" "MLXRS_FUSE_PROJECTIONS=0" "MLXRS_FUSE_PROJECTIONS=0 MLX_DISABLE_COMPILE=1" "MLX_USE_CUDA_GRAPHS=0" "MLX_MAX_OPS_PER_BUFFER=1000 MLX_MAX_MB_PER_BUFFER=100000"; do
      a=$(env $e $M bench --shape llama-3.2-1b -p 128 -g 256 -n 2 --json 2>>$OUT/stderr.txt | gtps)
      b=$(env $e $PY scripts/bench_lm.py /tmp/cfg.json -p 128 -g 256 -n 2 2>>$OUT/stderr.txt | gtps)
      echo "round $r env [$e] mlxrs $a python $b"
    done
  done 2>&1 | tee $OUT/sweep.txt
  # 4. the reported bench: mlxrs vs mlx-lm vs e029b22, 5 interleaved rounds
  MLXRS=$M BASELINE=$([ -x $B ] && echo $B) NO_DOC=1 ROUNDS=5 bash scripts/bench_lm.sh llama-3.2-1b 512 256 bfloat16 2>&1 | tee $OUT/bench_llama_bf16.md
  ;;
B)
  MLXRS=$M NO_DOC=1 ROUNDS=5 bash scripts/bench_lm.sh llama-3.2-1b 512 256 bfloat16 4 2>&1 | tee $OUT/bench_llama_q4.md
  MLXRS=$M NO_DOC=1 ROUNDS=5 bash scripts/bench_lm.sh qwen3-0.6b 512 256 bfloat16 2>&1 | tee $OUT/bench_qwen3_bf16.md
  MLXRS=$M NO_DOC=1 ROUNDS=5 BATCH=8 bash scripts/bench_lm.sh llama-3.2-1b 512 128 bfloat16 2>&1 | tee $OUT/bench_llama_b8.md
  MLXRS=$M NO_DOC=1 ROUNDS=5 bash scripts/bench_lm.sh qwen3-0.6b 512 256 bfloat16 4 2>&1 | tee $OUT/bench_qwen3_q4.md
  ;;
C)
  $PY scripts/make_random_checkpoint.py --shape llama-3.2-1b --out /tmp/llama1b > $OUT/mkckpt.txt 2>&1
  PY=$PY MLXRS=$M BASELINE=$([ -x $B ] && echo $B) ROUNDS=5 bash scripts/bench_serve.sh /tmp/llama1b 1,8,32 64 > $OUT/serve.jsonl 2> $OUT/serve.err
  cp /tmp/bench_mlxrs.log /tmp/bench_mlx_lm.log $OUT/ 2>/dev/null
  tail -8 $OUT/serve.jsonl
  ;;
D)
  [ -e /tmp/llama1b/config.json ] || $PY scripts/make_random_checkpoint.py --shape llama-3.2-1b --out /tmp/llama1b > $OUT/mkckpt.txt 2>&1
  make_lora_data
  for r in 1 2 3 4 5; do
    rm -rf /tmp/ad1 /tmp/ad2
    echo "== round $r mlxrs"; $M lora --model /tmp/llama1b --train --data /tmp/ldata --iters 30 --batch-size 4 --num-layers 16 --learning-rate 1e-4 --steps-per-report 10 --steps-per-eval 1000 --max-seq-length 512 --adapter-path /tmp/ad1 --json 2>&1 | grep -E 'train|tokens' | tail -3
    echo "== round $r mlx_lm.lora"; $PY -m mlx_lm lora --model /tmp/llama1b --train --data /tmp/ldata --iters 30 --batch-size 4 --num-layers 16 --learning-rate 1e-4 --steps-per-report 10 --steps-per-eval 1000 --max-seq-length 512 --adapter-path /tmp/ad2 2>&1 | sed 's/\x1b\[[0-9;]*m//g' | grep -E 'Iter|^ +[0-9]+ +[0-9.]+ [^ ]+ +[0-9,]+ ' | tail -3
  done 2>&1 | tee $OUT/lora.txt
  ;;
F)
  make_lora_data
  args="--train --data /tmp/ldata --iters 30 --batch-size 4 --num-layers 2 --learning-rate 1e-4 --steps-per-report 10 --steps-per-eval 1000 --max-seq-length 512"
  for m in ${F_MODELS:-models/tiny/llama-bf16 models/tiny/llama}; do
    rm -rf /tmp/ad2; echo "== $m mlx_lm.lora"; $PY -m mlx_lm lora --model $m $args --adapter-path /tmp/ad2 2>&1 | sed 's/\x1b\[[0-9;]*m//g' | grep -E 'Trainable|^ +[0-9]+ +[0-9.]+ [^ ]+ +[0-9,]+ '
    for e in "X=1" "MLX_DISABLE_COMPILE=1" "MLXRS_FUSE_PROJECTIONS=0" "MLX_ENABLE_TF32=0"; do
      rm -rf /tmp/ad1; echo "== $m mlxrs [$e]"; env $e timeout 60 $M lora --model $m $args --adapter-path /tmp/ad1 2>&1 | grep --line-buffered -E 'Train loss|Trainable|rror'; echo "rc ${PIPESTATUS[0]}"
    done
  done 2>&1 | tee $OUT/lora_check.txt
  ;;
G)
  # session 9: LoRA next to mlx_lm.lora, every report, 5 rounds
  [ -e /tmp/llama1b/config.json ] || $PY scripts/make_random_checkpoint.py --shape llama-3.2-1b --out /tmp/llama1b > $OUT/mkckpt.txt 2>&1
  make_lora_data
  args="--model /tmp/llama1b --train --data /tmp/ldata --iters 30 --batch-size 4 --num-layers 16 --learning-rate 1e-4 --steps-per-report 10 --steps-per-eval 1000 --max-seq-length 512"
  for r in 1 2 3 4 5; do
    rm -rf /tmp/ad1 /tmp/ad2
    echo "== round $r mlxrs"; $M lora $args --adapter-path /tmp/ad1 --json 2>&1 | grep --line-buffered -E '"event":"train"|rror'
    echo "== round $r mlx_lm.lora"; $PY -m mlx_lm lora $args --adapter-path /tmp/ad2 2>&1 | sed 's/\x1b\[[0-9;]*m//g' | grep -E 'Iter|^ +[0-9]+ +[0-9.]+ [^ ]+ +[0-9,]+ |rror'
  done 2>&1 | tee $OUT/lora.txt
  ;;
J)
  # LoRA with the same initial adapters (mlx-lm's, saved after one step at
  # learning rate 0) and a one-batch dataset (every step the same 4 rows,
  # so batch order cannot differ): per-step losses of both programs
  [ -e /tmp/llama1b/config.json ] || $PY scripts/make_random_checkpoint.py --shape llama-3.2-1b --out /tmp/llama1b > $OUT/mkckpt.txt 2>&1
  make_lora_data
  mkdir -p /tmp/l4; for f in train valid test; do head -4 /tmp/ldata/train.jsonl > /tmp/l4/$f.jsonl; done
  args="--model /tmp/llama1b --train --data /tmp/l4 --batch-size 4 --num-layers 16 --steps-per-eval 1000 --max-seq-length 512"
  rm -rf /tmp/init /tmp/ad1 /tmp/ad2
  $PY -m mlx_lm lora $args --iters 1 --learning-rate 0 --adapter-path /tmp/init > /dev/null 2>&1; ls /tmp/init
  {
  echo "== mlx_lm.lora"; $PY -m mlx_lm lora $args --iters ${J_ITERS:-12} --learning-rate 1e-4 --steps-per-report 1 --resume-adapter-file /tmp/init/adapters.safetensors --adapter-path /tmp/ad2 2>&1 | sed 's/\x1b\[[0-9;]*m//g' | grep -E '^ +[0-9]+ +[0-9.]+ |Iter|rror'
  echo "== mlxrs"; timeout 120 $M lora $args --iters ${J_ITERS:-12} --learning-rate 1e-4 --steps-per-report 1 --resume-adapter-file /tmp/init/adapters.safetensors --adapter-path /tmp/ad1 2>&1 | grep --line-buffered -E 'Train loss|rror'
  echo "== mlxrs MLX_DISABLE_COMPILE=1"; MLX_DISABLE_COMPILE=1 timeout 120 $M lora $args --iters ${J_ITERS:-12} --learning-rate 1e-4 --steps-per-report 1 --resume-adapter-file /tmp/init/adapters.safetensors --adapter-path /tmp/ad3 2>&1 | grep --line-buffered -E 'Train loss|rror'
  } 2>&1 | tee $OUT/lora_same_init.txt
  ;;
K)
  # LoRA seed spread: both programs, seeds 0/1/2, then mlxrs from mlx-lm's
  # initial adapters on the full data (stage J's /tmp/init)
  [ -e /tmp/llama1b/config.json ] || $PY scripts/make_random_checkpoint.py --shape llama-3.2-1b --out /tmp/llama1b > $OUT/mkckpt.txt 2>&1
  rm -rf /tmp/ldata; make_lora_data
  args="--model /tmp/llama1b --train --data /tmp/ldata --iters 30 --batch-size 4 --num-layers 16 --learning-rate 1e-4 --steps-per-report 10 --steps-per-eval 1000 --max-seq-length 512"
  for seed in 0 1 2; do
    rm -rf /tmp/ad1 /tmp/ad2
    echo "== seed $seed mlxrs"; timeout 120 $M lora $args --seed $seed --adapter-path /tmp/ad1 2>&1 | grep --line-buffered -E 'Train loss|rror'
    echo "== seed $seed mlx_lm.lora"; $PY -m mlx_lm lora $args --seed $seed --adapter-path /tmp/ad2 2>&1 | sed 's/\x1b\[[0-9;]*m//g' | grep -E '^ +[0-9]+ +[0-9.]+ |rror'
  done 2>&1 | tee $OUT/lora_seeds.txt
  if [ ! -e /tmp/init/adapters.safetensors ]; then $PY -m mlx_lm lora $args --iters 1 --learning-rate 0 --adapter-path /tmp/init > /dev/null 2>&1; fi
  { echo "== mlxrs from mlx-lm's init"; timeout 120 $M lora $args --resume-adapter-file /tmp/init/adapters.safetensors --adapter-path /tmp/ad1 2>&1 | grep --line-buffered -E 'Train loss|rror'
    echo "== mlx_lm.lora from its init"; $PY -m mlx_lm lora $args --resume-adapter-file /tmp/init/adapters.safetensors --adapter-path /tmp/ad2 2>&1 | sed 's/\x1b\[[0-9;]*m//g' | grep -E '^ +[0-9]+ +[0-9.]+ |rror'
  } 2>&1 | tee $OUT/lora_same_init_full.txt
  ;;
H)
  # session 9 decode: HEAD vs mlx-lm vs the session-8 binary (base), 5 rounds
  MLXRS=$M BASELINE=$B NO_DOC=1 ROUNDS=5 bash scripts/bench_lm.sh llama-3.2-1b 512 256 bfloat16 2>&1 | tee $OUT/bench_llama_bf16.md
  ;;
I)
  # stacked projections + compiled SwiGLU on/off, 5 interleaved rounds; qwen3 4-bit
  for r in 1 2 3 4 5; do
    for e in "X=1" "MLXRS_FUSE_PROJECTIONS=0 MLX_DISABLE_COMPILE=1"; do
      a=$(env $e MLXRS_DECODE_TIMING=1 $M bench --shape llama-3.2-1b -p 128 -g 256 -n 2 --json 2>$OUT/t.txt | gtps)
      echo "round $r env [$e] mlxrs $a $(grep -o 'build.*' $OUT/t.txt | tail -1)"
    done
  done 2>&1 | tee $OUT/ab.txt
  MLXRS=$M NO_DOC=1 ROUNDS=5 bash scripts/bench_lm.sh qwen3-0.6b 512 256 bfloat16 4 2>&1 | tee $OUT/bench_qwen3_q4.md
  ;;
L)
  # session 10: kept weight transposes + two-dimensional decode step (HEAD)
  # against the session-9 binary (base): tokens, a step's graph, per-node
  # host costs, then bench_lm.sh llama bf16 vs mlx-lm and base, 5 rounds
  for n in mlxrs base; do
    /tmp/b/$n generate --model models/tiny/llama-bf16 -p "The quick brown fox" -m 48 --temp 0 --ignore-chat-template --json > $OUT/gen_$n.json 2>>$OUT/stderr.txt
  done
  python3 -c 'import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:3]); ka=[k for k in a if "token" in k]; print("HEAD == base tokens" if all(a[k]==b[k] for k in ka) else "TOKENS DIFFER", a["tokens"][:12])' $OUT/gen_mlxrs.json $OUT/gen_base.json | tee $OUT/tokens.txt
  for q in "" "-q 4"; do
    f=$OUT/step_q${q##* }.dot
    MLXRS_DECODE_TIMING=1 MLXRS_DECODE_DOT=$f $M bench --shape llama-3.2-1b -p 16 -g 4 -n 1 $q > /dev/null 2>>$OUT/stderr.txt
    echo "== [$q] nodes $(grep -c 'label' $f)"; grep -o 'label ="[A-Za-z]*' $f | sort | uniq -c | sort -rn | head -20
  done 2>&1 | tee $OUT/step_nodes.txt
  $PY scripts/node_cost.py 2>&1 | tee $OUT/node_cost.txt
  MLXRS=$M BASELINE=$B NO_DOC=1 ROUNDS=5 bash scripts/bench_lm.sh llama-3.2-1b 512 256 bfloat16 2>&1 | tee $OUT/bench_llama_bf16.md
  ;;
M)
  for n in mlxrs base; do
    /tmp/b/$n generate --model models/tiny/llama-bf16 -p "The quick brown fox" -m 48 --temp 0 --ignore-chat-template --json > $OUT/gen_$n.json 2>>$OUT/stderr.txt
  done
  python3 -c 'import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:3]); print("HEAD == base tokens" if a["tokens"]==b["tokens"] else "TOKENS DIFFER", a["tokens"][:12])' $OUT/gen_mlxrs.json $OUT/gen_base.json | tee $OUT/tokens.txt
  for s in llama-3.2-1b qwen3-0.6b; do
    f=$OUT/step_$s.dot
    MLXRS_DECODE_TIMING=1 MLXRS_DECODE_DOT=$f $M bench --shape $s -p 128 -g 256 -n 2 2>&1 | grep -E 'decode timing|Averages'
    echo "== $s nodes $(grep -c 'label' $f)"; grep -o 'label ="[A-Za-z]*' $f | sort | uniq -c | sort -rn | head -14
  done 2>&1 | tee $OUT/step_nodes.txt
  timeout 120 $PY scripts/node_cost.py 2>&1 | tee $OUT/node_cost.txt
  MLXRS=$M BASELINE=$B NO_DOC=1 ROUNDS=5 bash scripts/bench_lm.sh llama-3.2-1b 512 256 bfloat16 2>&1 | tee $OUT/bench_llama_bf16.md
  ;;
N)
  for d in bfloat16 float32; do
    for n in mlxrs base; do
      /tmp/b/$n generate --model models/tiny/qwen3 -p "The quick brown fox" -m 48 --temp 0 --ignore-chat-template --json --dtype $d > $OUT/gen_${n}_$d.json 2>>$OUT/stderr.txt
    done
    python3 -c 'import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:3]); print(sys.argv[3], "tokens", "same" if a["tokens"]==b["tokens"] else "DIFFER", "logprobs", "same" if a["logprobs"]==b["logprobs"] else "DIFFER max %g" % max(abs(x-y) for x,y in zip(a["logprobs"],b["logprobs"])), a["tokens"][:8])' $OUT/gen_mlxrs_$d.json $OUT/gen_base_$d.json $d
  done 2>&1 | tee $OUT/qk_tokens.txt
  for n in mlxrs base; do
    f=$OUT/step_qwen3_$n.dot
    MLXRS_DECODE_TIMING=1 MLXRS_DECODE_DOT=$f /tmp/b/$n bench --shape qwen3-0.6b -p 128 -g 256 -n 2 2>&1 | grep -E 'decode timing|Averages'
    echo "== $n nodes $(grep -c 'label' $f 2>/dev/null)"; grep -o 'label ="[A-Za-z]*' $f 2>/dev/null | sort | uniq -c | sort -rn | head -8
  done 2>&1 | tee $OUT/qk_nodes.txt
  ;;
O)
  MLXRS=$M BASELINE=$([ -x $B ] && echo $B) NO_DOC=1 ROUNDS=5 BATCH=8 bash scripts/bench_lm.sh llama-3.2-1b 512 128 bfloat16 2>&1 | tee $OUT/bench_llama_b8.md
  MLXRS=$M NO_DOC=1 ROUNDS=5 BATCH=32 bash scripts/bench_lm.sh llama-3.2-1b 512 64 bfloat16 2>&1 | tee $OUT/bench_llama_b32.md
  ;;
T)
  for m in llama-bf16:bfloat16 qwen3:bfloat16 qwen3:float32; do
    for t in 0 1; do
      MLXRS_EVAL_THREAD=$t $M generate --model models/tiny/${m%%:*} -p "The quick brown fox" -m 48 --temp 0 --ignore-chat-template --json --dtype ${m##*:} > $OUT/gen_${m%%:*}_${m##*:}_$t.json 2>>$OUT/stderr.txt
    done
    python3 -c 'import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:3]); print(sys.argv[3], "tokens", "same" if a["tokens"]==b["tokens"] else "DIFFER", "logprobs", "same" if a["logprobs"]==b["logprobs"] else "DIFFER", len(a["tokens"]), a["tokens"][:8])' $OUT/gen_${m%%:*}_${m##*:}_0.json $OUT/gen_${m%%:*}_${m##*:}_1.json $m
  done 2>&1 | tee $OUT/thread_tokens.txt
  for q in "" "-q 4"; do
    for t in 0 1; do
      echo "== eval thread $t [$q]"; MLXRS_EVAL_THREAD=$t MLXRS_DECODE_TIMING=1 $M bench --shape llama-3.2-1b -p 128 -g 256 -n 2 $q 2>&1 | grep -E 'decode timing|Averages'
    done
  done 2>&1 | tee $OUT/thread_timing.txt
  MLXRS=$M BASELINE=/tmp/b/one NO_DOC=1 ROUNDS=5 bash scripts/bench_lm.sh llama-3.2-1b 512 256 bfloat16 2>&1 | tee $OUT/bench_llama_bf16.md
  ;;
U)
  MLXRS=$M BASELINE=/tmp/b/one NO_DOC=1 ROUNDS=5 bash scripts/bench_lm.sh qwen3-0.6b 512 256 bfloat16 2>&1 | tee $OUT/bench_qwen3_bf16.md
  MLXRS=$M BASELINE=/tmp/b/one NO_DOC=1 ROUNDS=5 bash scripts/bench_lm.sh llama-3.2-1b 512 256 bfloat16 4 2>&1 | tee $OUT/bench_llama_q4.md
  MLXRS=$M BASELINE=/tmp/b/one NO_DOC=1 ROUNDS=5 bash scripts/bench_lm.sh qwen3-0.6b 512 256 bfloat16 4 2>&1 | tee $OUT/bench_qwen3_q4.md
  ;;
Y)
  parts=${Y_PARTS:-test tokens census ab}
  if [[ $parts == *test* ]] && [ -e .gpu/bin/nm.xz ]; then
    xz -dc .gpu/bin/nm.xz > /tmp/b/nm; chmod +x /tmp/b/nm
    { /tmp/b/nm --test-threads=1; MLXRS_FUSE_NORM_MATVEC=0 /tmp/b/nm --test-threads=1; } 2>&1 | grep -E "^test |test result|panicked|differ" | tee $OUT/y_test.txt
  fi
  [[ $parts == *tokens* ]] && for m in ${Y_MODELS:-llama-bf16:bfloat16 llama:float32 qwen3:bfloat16 llama-4bit:bfloat16 qwen3-4bit:bfloat16}; do
    f=$OUT/y_${m%%:*}_${m##*:}
    $M generate --model models/tiny/${m%%:*} -p "The quick brown fox" -m 48 --temp 0 --ignore-chat-template --json --dtype ${m##*:} > ${f}_on.json 2>>$OUT/stderr.txt
    MLXRS_FUSE_NORM_MATVEC=0 $M generate --model models/tiny/${m%%:*} -p "The quick brown fox" -m 48 --temp 0 --ignore-chat-template --json --dtype ${m##*:} > ${f}_off.json 2>>$OUT/stderr.txt
    $B generate --model models/tiny/${m%%:*} -p "The quick brown fox" -m 48 --temp 0 --ignore-chat-template --json --dtype ${m##*:} > ${f}_base.json 2>>$OUT/stderr.txt
    for o in off base; do
      python3 -c 'import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:3]); print(sys.argv[3], "tokens", "same" if a["tokens"]==b["tokens"] else "DIFFER", "logprobs", "same" if a["logprobs"]==b["logprobs"] else "differ, max |d| %.3g" % max(abs(x-y) for x,y in zip(a["logprobs"],b["logprobs"])), len(a["tokens"]), a["tokens"][:6])' ${f}_on.json ${f}_$o.json "$m fused vs $o"
    done
  done 2>&1 | tee $OUT/y_tokens.txt
  if [[ $parts == *census* ]]; then
    rm -rf /tmp/yd; mkdir -p /tmp/yd
    MLX_SAVE_CUDA_GRAPHS_DOT_FILE=/tmp/yd/g $M bench --shape llama-3.2-1b -p 16 -g 6 -n 1 > /dev/null 2>&1
    kernel_census /tmp/yd 2>&1 | tee $OUT/y_census.txt
  fi
  if [[ $parts == *ab* ]]; then
    for sq in ${Y_AB:-llama-3.2-1b: qwen3-0.6b:4}; do
      q=${sq##*:}; qa=${q:+-q $q}
      for r in 1 2 3 4 5; do
        on=$($M bench --shape ${sq%%:*} $qa -p 512 -g 256 -n 2 --dtype bfloat16 --json 2>>$OUT/stderr.txt | gtps)
        off=$(MLXRS_FUSE_NORM_MATVEC=0 $M bench --shape ${sq%%:*} $qa -p 512 -g 256 -n 2 --dtype bfloat16 --json 2>>$OUT/stderr.txt | gtps)
        echo "${sq} round $r fused $on off $off"
      done
    done 2>&1 | tee $OUT/y_ab.txt
  fi
  ;;
Z)
  for m in llama-bf16:bfloat16 llama:float32 qwen3:bfloat16; do
    for n in mlxrs base; do
      /tmp/b/$n generate --model models/tiny/${m%%:*} -p "The quick brown fox" -m 48 --temp 0 --ignore-chat-template --json --dtype ${m##*:} > $OUT/gen_${m%%:*}_${m##*:}_$n.json 2>>$OUT/stderr.txt
    done
    python3 -c 'import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:3]); print(sys.argv[3], "tokens", "same" if a["tokens"]==b["tokens"] else "DIFFER", "logprobs", "same" if a["logprobs"]==b["logprobs"] else "DIFFER", len(a["tokens"]), a["tokens"][:8])' $OUT/gen_${m%%:*}_${m##*:}_mlxrs.json $OUT/gen_${m%%:*}_${m##*:}_base.json $m
  done 2>&1 | tee $OUT/split_tokens.txt
  rm -rf /tmp/zd; mkdir -p /tmp/zd
  MLX_SAVE_CUDA_GRAPHS_DOT_FILE=/tmp/zd/g $M bench --shape llama-3.2-1b -p 16 -g 6 -n 1 > /dev/null 2>&1
  kernel_census /tmp/zd 2>&1 | tee $OUT/split_census.txt
  for sq in ${Z_SHAPES:-llama-3.2-1b:}; do
    MLXRS=$M BASELINE=$B NO_DOC=1 ROUNDS=5 bash scripts/bench_lm.sh ${sq%%:*} 512 256 bfloat16 ${sq##*:} 2>&1 | tee $OUT/bench_${sq%%:*}_q${sq##*:}.md
  done
  ;;
Q)
  python3 scripts/qmm_cost.py 10 2>&1 | tee $OUT/qmm_cost.txt
  P=$(python3 -c 'print(" ".join(["The quick brown fox jumps over the lazy dog."] * 11))')
  for m in llama-4bit qwen3-4bit; do
    for e in 0 256; do
      MLXRS_GPU_DEQUANT_ROWS=$e $M generate --model models/tiny/$m -p "$P" -m 32 --temp 0 --ignore-chat-template --json --dtype bfloat16 > $OUT/q_${m}_$e.json 2>>$OUT/stderr.txt
    done
    python3 -c 'import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:3]); print(sys.argv[3], "prompt", a.get("prompt_tokens"), "tokens", "same" if a["tokens"]==b["tokens"] else "DIFFER", "logprobs", "same" if a["logprobs"]==b["logprobs"] else "differ, max |d| %.3g" % max(abs(x-y) for x,y in zip(a["logprobs"],b["logprobs"])), len(a["tokens"]))' $OUT/q_${m}_0.json $OUT/q_${m}_256.json $m
  done 2>&1 | tee $OUT/q_tokens.txt
  ptps() { tail -1 | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d=d.get("average",d); print(round(d["prompt_tps"],1))' 2>/dev/null; }
  for r in 1 2; do
    for p in 512 2048; do
      for e in 0 256; do
        echo "round $r p$p MLXRS_GPU_DEQUANT_ROWS=$e prefill $(MLXRS_GPU_DEQUANT_ROWS=$e $M bench --shape llama-3.2-1b -q 4 -p $p -g 16 -n 2 --json 2>>$OUT/stderr.txt | ptps)"
      done
    done
  done 2>&1 | tee $OUT/q_sweep.txt
  for sq in ${Z_SHAPES:-llama-3.2-1b:4}; do
    MLXRS=$M BASELINE=$B NO_DOC=1 ROUNDS=5 bash scripts/bench_lm.sh ${sq%%:*} 512 256 bfloat16 ${sq##*:} 2>&1 | tee $OUT/bench_${sq%%:*}_q${sq##*:}.md
  done
  ;;
V)
  $M bench --shape llama-3.2-1b --dump-config /tmp/cfg.json
  rm -rf /tmp/dots; mkdir -p /tmp/dots
  for q in bf16 q4; do
    a=; [ $q = q4 ] && a="-q 4"
    mkdir -p /tmp/dots/mlxrs_$q /tmp/dots/py_$q
    MLX_SAVE_CUDA_GRAPHS_DOT_FILE=/tmp/dots/mlxrs_$q/g $M bench --shape llama-3.2-1b -p 16 -g 6 -n 1 $a > /tmp/dots/mlxrs_$q.out 2>&1
    MLX_SAVE_CUDA_GRAPHS_DOT_FILE=/tmp/dots/py_$q/g $PY scripts/bench_lm.py /tmp/cfg.json -p 16 -g 6 -n 1 $a > /tmp/dots/py_$q.out 2>&1
    echo "== $q graphs: mlxrs $(ls /tmp/dots/mlxrs_$q | wc -l) mlx-lm $(ls /tmp/dots/py_$q | wc -l)"
  done 2>&1 | tee $OUT/dots.txt
  tar -C /tmp -cJf $OUT/dots.tar.xz dots; ls -la $OUT/dots.tar.xz
  ;;
W)
  for r in 1 2 3 4 5; do
    for q in ${W_SHAPES:-bf16}; do
      a=; [ $q = q4 ] && a="-q 4"
      for e in ${W_ENVS:-X=1 MLX_MAX_OPS_PER_BUFFER=50 MLX_MAX_OPS_PER_BUFFER=200 MLX_MAX_OPS_PER_BUFFER=400 MLX_USE_CUDA_GRAPHS=0}; do
        t=$(env $e $M bench --shape llama-3.2-1b -p 128 -g 256 -n 2 $a --json 2>>$OUT/stderr.txt | gtps)
        echo "round $r $q [$e] $t"
      done
    done
  done 2>&1 | tee -a $OUT/sweep.txt
  ;;
E)
  mkdir -p /root/pypi; cp -r .gpu/kv/* /root/pypi/; ls /root/pypi
  for r in 1 2 3 4 5; do $M speak --model /root/pypi --voice jf_alpha --phonemes "ðə kwˈɪk bɹˈWn fˈɑks ʤˈʌmps ˌOvəɹ ðə lˈAzi dˈɑɡ. ʃi sˈɛlz sˈiʃɛlz bI ðə sˈiʃɔɹ." -o /tmp/m.wav 2>&1 | grep -o "[0-9.]*s of audio.*" | sed "s/^/round $r mlxrs: /"; done | tee $OUT/tts.txt
  ;;
esac
