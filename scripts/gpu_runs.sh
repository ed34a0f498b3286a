#!/usr/bin/env bash
# Several training recipes at once on one lent GPU, each run's snapshot chosen by validation
# metrics, the chosen generators packed for the trip back (float16, split under 16 MiB).
#
# Usage (repository root; the GPU machine gets the ICT folder and the cached decoupling nets
# carried in .devdata/, see docs/training.md "Training on a lent GPU"):
#     OUT=/tmp/out TRAIN_MIN=5.5 bash scripts/gpu_runs.sh "NAME key=value ..." "NAME2 ..." ...
#
# Environment: OUT (where the results go), WORK (scratch, default /tmp/fm), ICT (ICT-FaceKit
# folder, default .devdata/ict), EMB (cached decoupling nets, default .devdata/emb), DATA (an
# existing ICT 4D dataset; built from ICT when absent), CONFIG (default configs/release.yaml),
# TRAIN_MIN (minutes of training per run), DEVICE (default cuda), KEEP (models packed, 3),
# THREADS (per run, 3), WHEELS (folder of wheels to install first, default .whl; "none"),
# BENCH_STEPS / BENCH_S (step benchmark), SELECT_S (selection time limit), SELECT_ICT=none
# (select by validation specificity alone), BUILD_ARGS (extra `data build-ict` arguments).
#
# Writes to OUT: log.txt, results.tar.gz (every run's config, metrics, selection, log, last
# sample render) and, for the KEEP runs whose chosen snapshot decouples best, NAME.st.part-aa,
# -ab, ... (cat them together to get NAME's model.safetensors, float16) -- at most 8 files.
set -uo pipefail
OUT=${OUT:?set OUT}
WORK=${WORK:-/tmp/fm}
ICT=${ICT:-.devdata/ict}
EMB=${EMB:-.devdata/emb}
CONFIG=${CONFIG:-configs/release.yaml}
TRAIN_MIN=${TRAIN_MIN:-5.5}
DEVICE=${DEVICE:-cuda}
KEEP=${KEEP:-3}
THREADS=${THREADS:-3}
export PYTHONUNBUFFERED=1 FACEMODEL_CACHE=$WORK/cache
mkdir -p "$OUT" "$WORK/runs" "$FACEMODEL_CACHE/embeddings"
exec > >(tee -a "$OUT/log.txt") 2>&1
log() { echo "[$(date +%T)] $*"; }

WHEELS=${WHEELS:-.whl}  # wheels of packages the GPU image lacks (pydantic); "none" to skip
if [ -d "$WHEELS" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
        || { log "wheel install failed"; exit 3; }
    export PYTHONPATH=/tmp/site:$PWD
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, platform; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), platform.processor() or platform.machine())"

DATA=${DATA:-$WORK/ict4d}
if [ ! -f "$DATA/manifest.json" ]; then
    log "building the dataset from $ICT"
    python3 -m facemodel data build-ict --source "$ICT" --out "$DATA" --quiet ${BUILD_ARGS:-} || { log "dataset build failed"; exit 4; }
fi
python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print('dataset', m['checksum'][:16], m['num_meshes'], 'meshes')" "$DATA/manifest.json"
# the carried decoupling nets are keyed by the dataset checksum; a rebuild on another CPU can
# round differently (a different checksum for the same data): relabel them rather than retrain
[ -d "$EMB" ] && python3 - "$EMB" "$FACEMODEL_CACHE/embeddings" "$DATA/manifest.json" <<'NETS'
import json, shutil, sys
from pathlib import Path
emb, cache, manifest = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text())
for src in emb.iterdir():
    meta = json.loads((src / "meta.json").read_text())
    dst = cache / f"{manifest['checksum'][:16]}-{meta['tag']}"
    shutil.copytree(src, dst, dirs_exist_ok=True)
    if meta["dataset_checksum"] != manifest["checksum"]:
        print(f"WARNING: dataset checksum {manifest['checksum'][:16]} differs from the nets' {meta['dataset_checksum'][:16]}; relabelled")
        meta["dataset_checksum"] = manifest["checksum"]
        (dst / "meta.json").write_text(json.dumps(meta))
NETS

log "step time, one process alone (benchmarks/train_step.py, $CONFIG)"
timeout "${BENCH_S:-90}" python3 benchmarks/train_step.py --data "$DATA" --config "$CONFIG" --steps "${BENCH_STEPS:-40}" --device "$DEVICE" data="$DATA" \
    || log "step benchmark failed or timed out"

names=()
pids=()
for spec in "$@"; do
    read -r name overrides <<<"$spec"
    names+=("$name")
    log "start $name: $overrides"
    # shellcheck disable=SC2086
    python3 -m facemodel.training --config "$CONFIG" --out "$WORK/runs/$name" --time-limit "$TRAIN_MIN" --quiet \
        data="$DATA" device="$DEVICE" threads="$THREADS" $overrides > "$WORK/runs/$name.log" 2>&1 &
    pids+=($!)
done
wait "${pids[@]}"  # (a bare `wait` would also wait for the tee above)
for name in "${names[@]}"; do log "$name: $(tail -n 1 "$WORK/runs/$name.log")"; done

pack_logs() {
    (cd "$WORK/runs" && tar -czf "$OUT/results.tar.gz.tmp" --ignore-failed-read \
        $(for n in "${names[@]}"; do echo "$n.log" "$n.select.log" "$n/config.json" "$n/metrics.jsonl" "$n/selection.json" \
            "$n/selected/config.json" "$n/model/config.json" $(ls "$n"/samples/*.png 2>/dev/null | tail -n 1); done) 2>/dev/null
     mv "$OUT/results.tar.gz.tmp" "$OUT/results.tar.gz")
}
pack_logs  # early, in case the selection runs out of time

pids=()
ict_arg="--ict $ICT"
[ "${SELECT_ICT:-yes}" = none ] && ict_arg=""  # specificity only (no decoupling nets needed)
log "selection (validation specificity, 40x40 decoupling probe, spill)"
for name in "${names[@]}"; do
    OMP_NUM_THREADS=$THREADS timeout "${SELECT_S:-150}" python3 -m facemodel.training.select --run "$WORK/runs/$name" --data "$DATA" $ict_arg \
        --export "$WORK/runs/$name/selected" > "$WORK/runs/$name.select.log" 2>&1 &
    pids+=($!)
done
wait "${pids[@]}"
for name in "${names[@]}"; do log "$name: $(tail -n 1 "$WORK/runs/$name.select.log")"; done

log "packing"
pack_logs
python3 - "$WORK/runs" "$OUT" "$KEEP" "${names[@]}" <<'EOF'
import json, subprocess, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
runs, out, keep, names = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
scored = []
for n in names:
    try:
        c = json.loads((runs / n / "selection.json").read_text())["chosen"]
        scored.append(((c["dec_identity"] + c["dec_expression"]) / 2, n, c))
    except (OSError, KeyError, ValueError) as exc:  # no selection: the final export, ranked last
        print(n, "no selection:", exc)
        if (runs / n / "model" / "model.safetensors").is_file():
            scored.append((-1.0, n, {"step": "final", "folder": "model"}))
for score, n, c in sorted(scored, reverse=True)[:keep]:
    folder = runs / n / c.get("folder", "selected")
    t = {k: (v.half() if v.is_floating_point() and k.startswith("generator.") else v)
         for k, v in load_file(folder / "model.safetensors").items()}
    f = runs / n / "selected-fp16.safetensors"
    save_file(t, f)
    subprocess.run(["split", "-b", "15000000", str(f), str(out / f"{n}.st.part-")], check=True)
    print(f"packed {n}: step {c['step']}, mean decoupling {score:.1f}")
EOF
ls -la "$OUT"
log "done"
