#!/usr/bin/env bash
# The llama.cpp backend benchmark (issue 16) for one weight format: the latency curve first (the
# tree drafters size their trees from it), then every method and baseline in one bench run.
#   benchmarks/llamacpp/run.sh float32|bfloat16|q4_1 PROMPTS_PER_CATEGORY [THREADS]
# Run it under the shared lock: flock /tmp/specdecode-bench.lock benchmarks/llamacpp/run.sh float32 1
set -euo pipefail
cd "$(dirname "$0")/../.."
fmt=$1 n=$2 threads=${3:-1}
case $fmt in
    float32) dtype=(--dtype float32) ;;
    bfloat16) dtype=(--dtype bfloat16) ;;
    q4_1) dtype=(--tie-tolerance 0.25) ;;  # the file as it is; near-tie tolerance as for bf16
    *) echo "unknown format $fmt" >&2; exit 2 ;;
esac
uptime
python benchmarks/llamacpp/calibrate.py "$fmt" "$threads"
specdecode bench --backend llama.cpp "${dtype[@]}" --threads "$threads" --dataset spec-bench \
    --n-per-category "$n" --max-new-tokens 256 --warmup 1 \
    --methods "${METHODS:-llama-ar,llama-pld,hf-ar,pld,hybrid,suffix}" --no-progress \
    --out "benchmarks/llamacpp/smollm2-135m-$fmt-${n}x256${SUFFIX:-}.json"
uptime
