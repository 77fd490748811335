#!/usr/bin/env bash
# Demo: 4 `orion hunt` workers on one experiment, coordinated through the embedded Redis.
# Usage: bash examples/hunt.sh [NAME] [MAX_TRIALS] [WORKERS]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
name="${1:-demo-$(date +%s)}"
max_trials="${2:-40}"
workers="${3:-4}"
for i in $(seq "$workers"); do
  # one working directory for the whole fleet: see docs/guarantees.md ("A shared working_dir")
  orion hunt --config "$here/orion_config.yaml" -n "$name" --exp-max-trials "$max_trials" \
    --working-dir "/tmp/$name-trials" \
    python "$here/objective.py" -x~'uniform(-5, 5)' -y~'uniform(-5, 5)' > "/tmp/$name-worker-$i.log" 2>&1 &
done
wait
# Oríon 0.2.7's `orion status`/`info` re-load experiments from the *global* storage config
# (they ignore --config): select our backend through the environment for them.
export ORION_STORAGE_TYPE=redis
orion status -n "$name"
orion info -n "$name" | sed -n '/^Stats/,$p'
