#!/usr/bin/env bash
# Closed-loop screening of tokenizer designs on one Meta-World task set (docs/POLICY.md, "Task sets no run was tuned
# on"): scripted demonstrations, one tokenizer per design and training seed, the comparison's small policy at
# POLICY_STEPS, closed-loop evaluation (training seed s on evaluation seed s). Designs are "name|variant|flags" (flags
# comma-separated), e.g. TYPES="oat|| quest|:quest| registers||--config.model.encoder=registers,--config.model.enc_patch=2"
# (the default's ordered conv tokens, QueST-style, and the paper's register encoder with the default's objective).
# Every step is skipped when its output exists, so re-running resumes (and a new POLICY_STEPS reuses the tokenizers).
#   RUNS=runs/setA TASKS=hammer-v3,sweep-into-v3,basketball-v3,peg-unplug-side-v3 SEEDS="0 1" \
#     bash experiments/recipes/closed_loop_screen.sh
set -euo pipefail
RUNS=${RUNS:?set RUNS}; TASKS=${TASKS:?set TASKS}; SEEDS=${SEEDS:-0}; POLICY_STEPS=${POLICY_STEPS:-1500}
DEMOS=${DEMOS:-50}; EPISODES=${EPISODES:-50}; KS=${KS:-8}; TYPES=${TYPES:-"oat|| quest|:quest|"}
POLICY_FLAGS="--config.model.width=128 --config.model.depth=2 --config.model.num_heads=4 --config.model.state_hidden=128
  --config.train.batch_size=64 --config.train.eval_every=500 --config.checkpoint.every=500 --config.optim.lr=1e-3
  --config.optim.warmup_steps=50 ${EXTRA_POLICY_FLAGS:-}"
DATA="$RUNS/data"; LOGS="$RUNS/logs"; mkdir -p "$LOGS"
stamp() { date +%H:%M:%S; }
if [ ! -f "$DATA/dataset_info.json" ]; then
  echo "$(stamp) demonstrations -> $DATA"
  python -m data_pipelines.metaworld --tasks="$TASKS" --episodes_per_task="$DEMOS" --output="$DATA" > "$LOGS/data.log" 2>&1
fi
for spec in $TYPES; do
  IFS='|' read -r name variant flags <<< "$spec"; flags=${flags//,/ }
  for s in $SEEDS; do
    if [ ! -f "$RUNS/tok_${name}_s$s/tokenizer/config.json" ]; then
      echo "$(stamp) tokenizer $name seed $s"
      # shellcheck disable=SC2086
      python -m experiments.train --config="experiments/configs/oat.py$variant" --config.data.path="$DATA" \
        --config.seed="$s" $flags --workdir="$RUNS/tok_${name}_s$s" \
        > "$LOGS/tok_${name}_s$s.log" 2>&1
    fi
  done
done
for spec in $TYPES; do
  IFS='|' read -r name _ _ <<< "$spec"
  for s in $SEEDS; do
    work="$RUNS/policy_${name}_st${POLICY_STEPS}_s$s"
    if [ ! -f "$work/policy/policy.json" ]; then
      echo "$(stamp) policy $name seed $s"
      # shellcheck disable=SC2086
      python -m experiments.train --config=experiments/configs/policy.py:oat --config.tokenizer.path="$RUNS/tok_${name}_s$s" \
        --config.data.path="$DATA" --config.train.num_steps="$POLICY_STEPS" --config.seed="$s" \
        $POLICY_FLAGS --workdir="$work" > "$LOGS/policy_${name}_st${POLICY_STEPS}_s$s.log" 2>&1
    fi
  done
done
for spec in $TYPES; do
  IFS='|' read -r name variant _ <<< "$spec"
  works=$(for s in $SEEDS; do printf "%s," "$RUNS/policy_${name}_st${POLICY_STEPS}_s$s"; done)
  out="$RUNS/eval/${name}_st${POLICY_STEPS}"
  ks="--num_tokens=$KS"; case $variant in *oatx*|*quest*) ks="" ;; esac   # unordered: full length only
  if [ ! -f "$out/results.json" ]; then
    echo "$(stamp) evaluate $name"
    # shellcheck disable=SC2086
    python -m experiments.eval_policy --workdir="${works%,}" --label="$name" --tasks="$TASKS" --episodes="$EPISODES" \
      --paired --seeds="$(echo $SEEDS | tr ' ' ',')" $ks --output="$out" > "$LOGS/eval_${name}_st${POLICY_STEPS}.log" 2>&1
  fi
  grep -h "^| $name" "$out/results.md" || true
done
python -m experiments.recipes.policy_open_loop --data="$DATA" --output="$RUNS/open_loop_st$POLICY_STEPS" --workdirs="$(
  for spec in $TYPES; do IFS='|' read -r name _ _ <<< "$spec"; for s in $SEEDS; do
    printf "%s," "$RUNS/policy_${name}_st${POLICY_STEPS}_s$s"; done; done)" > "$LOGS/open_loop_st$POLICY_STEPS.log" 2>&1
echo "$(stamp) done: $RUNS/eval/*_st$POLICY_STEPS/results.md, $RUNS/open_loop_st$POLICY_STEPS/open_loop.md"
