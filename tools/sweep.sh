#!/usr/bin/env bash
# Train several recipes side by side on one machine (a borrowed GPU, say) within a time limit, and
# bundle each run's model, card, history and metrics for the trip back.
#
#   tools/sweep.sh CONFIGS MINUTES [BUNDLES]
#
# CONFIGS: one run per line, `NAME ARGUMENTS…` (blank lines and # comments skipped; examples in
# tools/sweep-configs/); each runs as `$PYTHON -m fer_fastai.train --data $DATA --out runs/NAME ARGUMENTS…`,
# its output in runs/NAME.log. After MINUTES, runs still going get Ctrl-C (SIGINT): each keeps its best
# model so far and a checkpoint, but no calibration or metrics.json. Run the same command again on the
# same machine (a device machine stays warm for seconds only: call again at once) and those runs resume
# from their checkpoints while finished ones are left alone. BUNDLES (default runs/bundles) gets
# NAME.tar per run. PYTHON defaults to python3, DATA to ../shared/fer2013.
#
# On this project's borrowed GPUs the working tree travels but ../shared does not, and the tree may
# hold 64 MiB: pack the training faces (`python tools/pack_faces.py pack ../shared/fer2013
# .devdata/train.npz`), download the wheels that machine's Python 3.12 lacks (`pip download --no-deps
# --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 -d .whl
# fastai==2.8.12 fastcore==2.2.41 fasttransform==0.0.5 fastprogress==1.0.5 fastdownload==0.0.8
# plum-dispatch==2.9.0 beartype==0.23.1`; /.devdata/ and /.whl/ in .git/info/exclude), delete the
# shipped artifacts' .onnx and .safetensors files for the trip (`git checkout -- artifacts` brings them
# back), and run there, carrying .devdata and .whl:
#   pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD &&
#   python3 tools/pack_faces.py unpack .devdata/train.npz ../shared/fer2013 &&
#   tools/sweep.sh tools/sweep-configs/budget-members.txt 8 $OUT
# The copy has the same files in the same order, so runs trained on it share the validation split of
# runs trained on the original and can join them in `python -m fer_fastai.ensemble` and
# `python -m fer_fastai.ensemble_search`. ($PWD on PYTHONPATH: pack_faces.py imports fer_fastai, which
# is not installed there.) Size MINUTES for the slowest run, from its epoch time with as many runs
# side by side (docs/speed.md), plus start-up; a device call may last 10 minutes, so give a batch at
# most 9, or run fewer at once.
set -uo pipefail
set -m  # background jobs keep the default SIGINT handling, so Ctrl-C reaches them as it would by hand

if [ $# -lt 2 ]; then
    echo "usage: tools/sweep.sh CONFIGS MINUTES [BUNDLES]" >&2
    exit 2
fi
configs=$1 minutes=$2 bundles=${3:-runs/bundles}
python=${PYTHON:-python3} data=${DATA:-../shared/fer2013}
[ -f "$configs" ] || { echo "error: no configs file $configs (one run per line: NAME ARGUMENTS…)" >&2; exit 2; }
mkdir -p runs "$bundles"

names=() pids=()
while read -r name arguments; do
    case "$name" in ''|'#'*) continue ;; esac
    names+=("$name")
    if [ -f "runs/$name/metrics.json" ]; then echo "finished before: $name"; continue; fi
    if [ -f "runs/$name/checkpoint.pth" ]; then  # cut off by an earlier sweep on this machine: go on from there
        # shellcheck disable=SC2086  # the arguments are meant to split into words
        "$python" -m fer_fastai.train --data "$data" --out "runs/$name" $arguments --resume >> "runs/$name.log" 2>&1 &
        echo "resumed $name"
    else
        # shellcheck disable=SC2086
        "$python" -m fer_fastai.train --data "$data" --out "runs/$name" $arguments > "runs/$name.log" 2>&1 &
        echo "started $name: $arguments"
    fi
    pids+=($!)
done < "$configs"

deadline=$((SECONDS + minutes * 60))
while [ ${#pids[@]} -gt 0 ] && [ $SECONDS -lt $deadline ] && kill -0 "${pids[@]}" 2>/dev/null; do sleep 5; done
for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null && echo "time is up: interrupted pid $pid"; done
wait

for name in "${names[@]}"; do
    files=()
    for file in model.safetensors model.json history.csv metrics.json; do
        [ -f "runs/$name/$file" ] && files+=("$name/$file")
    done
    echo "== $name: $(tail -n 1 "runs/$name.log")"
    if [ ${#files[@]} -gt 0 ]; then tar -cf "$bundles/$name.tar" -C runs "${files[@]}" "$name.log"; fi
done
