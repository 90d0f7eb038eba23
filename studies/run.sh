#!/usr/bin/env bash
# Run one study configuration (or all of them, in order) into runs/study/NAME.
#   bash studies/run.sh mnist-compare        # one
#   bash studies/run.sh all                  # the whole study (see docs/results.md for timings)
# Not in `all`: cifar10-resnet20 (the earlier CIFAR-10 study, ~63 min) and mnist-precision-fp32/-bf16 (the bf16
# check: mnist-compare's momentum runs in each precision); run them by name.
# Re-running continues an unfinished configuration (--resume) and rebuilds its report.
# DATA_DIR (default ../shared/data) holds mnist.npz, fashion_mnist.npz and cifar10.npz (and python_stdlib.npz for lm,
# which is built from the running Python where it is absent).
# WORKERS, if set, is passed as --workers (CPU threads; 1 on a machine busy with other work).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-../shared/data}
BIN=${BIN:-.venv/bin}
ORDER=(mnist-compare mnist-paper-5.2 mnist-paper-5.2-long fashion-mnist-compare cifar10-compare mnist-full-reference
       fashion-mnist-rules fashion-mnist-adaptive-momentum lm)
names=("$@")
EXTRA=(cifar10-resnet20 mnist-precision-fp32 mnist-precision-bf16)
[[ ${#names[@]} -eq 0 ]] && { echo "usage: bash studies/run.sh NAME... | all (names: ${ORDER[*]} ${EXTRA[*]})" >&2; exit 2; }
[[ ${names[0]} == all ]] && names=("${ORDER[@]}")
for name in "${names[@]}"; do
    [[ -f studies/$name.args ]] || { echo "studies/run.sh: no configuration $name (names: ${ORDER[*]} ${EXTRA[*]})" >&2; exit 2; }
    read -r -a args < "studies/$name.args"
    echo "== $name: growbatch run ${args[*]} --data-dir $DATA_DIR --out runs/study/$name --resume" >&2
    start=$(date +%s)
    "$BIN/growbatch" run "${args[@]}" --data-dir "$DATA_DIR" --out "runs/study/$name" --resume --no-progress \
        ${WORKERS:+--workers "$WORKERS"}
    echo "== $name: $(( $(date +%s) - start )) s" >&2
done
