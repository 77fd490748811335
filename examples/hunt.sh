#!/usr/bin/env bash
# Demo: 4 `orion hunt` workers on one experiment, coordinated through the embedded Redis.
# Usage: bash examples/hunt.sh [NAME] [MAX_TRIALS] [WORKERS]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
name="${1:-demo-$(date +%s)}"
max_trials="${2:-40}"
workers="${3:-4}"
for i in $(seq "$workers"); do
  orion hunt --config "$here/orion_config.yaml" -n "$name" --max-trials "$max_trials" \
    python "$here/objective.py" -x~'uniform(-5, 5)' -y~'uniform(-5, 5)' > "/tmp/$name-worker-$i.log" 2>&1 &
done
wait
orion status --config "$here/orion_config.yaml" -n "$name"
orion info --config "$here/orion_config.yaml" -n "$name" | sed -n '/^Stats/,$p'
