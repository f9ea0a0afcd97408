#!/usr/bin/env bash
# Meta-World policy comparison (the paper's Table I/II protocol with state observations):
#   1. scripted demonstrations of the four paper tasks,
#   2. tokenizers: OAT, OAT x and QueST-style trained with experiments.train, one per training seed (seed s trains
#      tokenizer s and policy s); Bin and FAST fitted at policy start,
#   3. one autoregressive policy per token type and training seed, and the Diffusion Policy baseline (dp, no
#      tokenizer) per training seed, with the same model sizes, data, steps and seeds,
#   4. closed-loop evaluation with the same tasks, goals, episodes and seeds for every policy
#      (OAT is evaluated at k = 1, 2, 4, 8 tokens: OAT_1 .. OAT_8), and one merged table + plot; with several
#      training seeds the table's mean ± s.e. is over training seeds.
#
# Usage (from the repository root, the venv active):
#   bash experiments/recipes/metaworld_policy_comparison.sh                   # full budget
#   RUNS=runs/pilot DEMOS=20 POLICY_STEPS=1000 EPISODES=10 EVAL_SEEDS=0 TYPES="oat bin" \
#     POLICY_FLAGS="--config.model.width=128 --config.model.depth=2" bash experiments/recipes/...   # a pilot
# Every step is skipped when its output exists, so re-running resumes. Logs go to $RUNS/logs/.
set -euo pipefail

RUNS=${RUNS:-runs/metaworld_policy}                       # output root
TASKS=${TASKS:-box-close-v3,coffee-pull-v3,disassemble-v3,stick-pull-v3}
DEMOS=${DEMOS:-50}                                        # scripted demonstrations per task
TYPES=${TYPES:-"oat oatx quest bin fast dp"}              # token types (and dp, the diffusion baseline) to compare
TOKENIZER_FLAGS=${TOKENIZER_FLAGS:-}                      # extra flags for every tokenizer run
POLICY_STEPS=${POLICY_STEPS:-5000}                        # policy updates (same for every token type)
POLICY_FLAGS=${POLICY_FLAGS:-}                            # extra flags for every policy run (same for all)
TRAIN_SEEDS=${TRAIN_SEEDS:-"0 1 2"}                       # training seeds of the learned tokenizers (OAT, OAT x,
#                                                           QueST-style) and their policies (space-separated)
FITTED_SEEDS=${FITTED_SEEDS:-0}                           # policy training seeds of Bin and FAST
EPISODES=${EPISODES:-50}                                  # evaluation episodes per task and seed
EVAL_SEEDS=${EVAL_SEEDS:-0,1,2}                           # evaluation seeds (goals and sampling keys) of a single
#                                                           policy; several training seeds: seed s on evaluation seed s
OAT_KS=${OAT_KS:-1,2,4,8}                                 # anytime-decoding k evaluated for OAT

DATA="$RUNS/data/metaworld_paper_tasks"
LOGS="$RUNS/logs"
mkdir -p "$LOGS"
stamp() { date +%H:%M:%S; }

if [ ! -f "$DATA/dataset_info.json" ]; then
  echo "$(stamp) demonstrations -> $DATA"
  python -m data_pipelines.metaworld --tasks="$TASKS" --episodes_per_task="$DEMOS" --output="$DATA" \
    > "$LOGS/data.log" 2>&1
fi

seeds_of() { case $1 in bin|fast) echo "$FITTED_SEEDS" ;; *) echo "$TRAIN_SEEDS" ;; esac; }

for t in $TYPES; do
  case $t in
    oat) variant="" ;;
    oatx) variant=":oatx" ;;
    quest) variant=":quest" ;;
    *) continue ;;                                        # bin / fast are fitted inside the policy run
  esac
  for s in $TRAIN_SEEDS; do
    if [ ! -f "$RUNS/tok_${t}_s$s/tokenizer/config.json" ]; then
      echo "$(stamp) tokenizer $t seed $s"
      # shellcheck disable=SC2086
      python -m experiments.train --config="experiments/configs/oat.py$variant" --config.data.path="$DATA" \
        --config.seed="$s" $TOKENIZER_FLAGS --workdir="$RUNS/tok_${t}_s$s" \
        > "$LOGS/tok_${t}_s$s.log" 2>&1
    fi
  done
done

for t in $TYPES; do
  for s in $(seeds_of "$t"); do
    work="$RUNS/policy_${t}_s$s"
    if [ ! -f "$work/policy/policy.json" ]; then
      tok=""
      case $t in oat|oatx|quest) tok="--config.tokenizer.path=$RUNS/tok_${t}_s$s" ;; esac
      echo "$(stamp) policy $t seed $s"
      # shellcheck disable=SC2086
      python -m experiments.train --config="experiments/configs/policy.py:$t" $tok --config.data.path="$DATA" \
        --config.train.num_steps="$POLICY_STEPS" --config.seed="$s" \
        $POLICY_FLAGS --workdir="$work" > "$LOGS/policy_${t}_s$s.log" 2>&1
    fi
  done
done

results=()
for t in $TYPES; do
  works=$(for s in $(seeds_of "$t"); do printf "%s," "$RUNS/policy_${t}_s$s"; done)
  ks=""
  label=$(echo "$t" | sed 's/^oatx$/OATx/; s/^oat$/OAT/; s/^quest$/QueST/; s/^bin$/Bin/; s/^fast$/FAST/; s/^dp$/DP/')
  [ "$t" = "oat" ] && ks="--num_tokens=$OAT_KS"
  out="$RUNS/eval/$t"
  if [ ! -f "$out/results.json" ]; then
    echo "$(stamp) evaluate $t"
    # shellcheck disable=SC2086
    # Learned types: training seed i is evaluated on the i-th evaluation seed (same episode count as a single
    # policy on every evaluation seed); Bin and FAST: their policy on every evaluation seed.
    pairing=""
    [ "$(seeds_of "$t" | wc -w)" -gt 1 ] && pairing="--paired --seeds=$(seeds_of "$t" | tr ' ' ',')"
    python -m experiments.eval_policy --workdir="${works%,}" --label="$label" --tasks="$TASKS" \
      --episodes="$EPISODES" --seeds="$EVAL_SEEDS" $pairing $ks --output="$out" > "$LOGS/eval_$t.log" 2>&1
  fi
  results+=("$out/results.json")
done

# Latencies are re-timed here (nothing else of the recipe runs any more), then training curves and target stats.
python -m experiments.eval_policy --merge="$(IFS=,; echo "${results[*]}")" --output="$RUNS/eval/table" \
  --remeasure_latency
python -m experiments.recipes.policy_curves --runs="$RUNS" --output="$RUNS/eval/table"
echo "$(stamp) table: $RUNS/eval/table/table.md, plot: $RUNS/eval/table/success_vs_k.png," \
  "training: $RUNS/eval/table/policy_training.md, $RUNS/eval/table/policy_curves.png"
