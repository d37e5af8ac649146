#!/usr/bin/env bash
# The training acceptance job (issue 17): a real 2-process CPU torchrun run of a tiny model with
# Partial FC on a set packed by `faceaux pack` from SyntheticFaces, stopped after 10 of 20
# steps, resumed on ONE process (Partial FC re-sharded) to the end; the loss curve must continue
# (steps 1..20 each logged once, no jump beyond the step-to-step noise). Then `faceaux eval` of
# the final checkpoint on a generated miniature IJB-C folder and on a .bin.
# Usage: bash .ci/train_smoke.sh [WORKDIR]   (run from anywhere; needs the train and demo extras)
set -euo pipefail

cd "$(dirname "$0")/.."
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
export OMP_NUM_THREADS=1
start=$(date +%s)

echo "-- data: SyntheticFaces (20 identities x 6 images, 56x56 JPEG) -> faceaux pack"
python - "$out" <<'PY'
import sys
from pathlib import Path

sys.path.insert(0, "tests")
from train.tiny_data import write_image_folder

write_image_folder(Path(sys.argv[1]) / "images", num_identities=20, images_per_identity=6)
PY
faceaux pack "$out/images" "$out/rec/train" --no-progress

model=(--model iresnet_nano --model-kwargs '{"input_size": [56, 56], "embedding_size": 32}')
common=("${model[@]}" --data "$out/rec/train" --head partial_fc --sample-rate 0.5
  --scale 16 --m2 0.2 --lr 0.05 --batch-size 16 --steps 20 --checkpoint-every 5
  --log-every 1 --num-workers 1 --progress false --output "$out/run")

echo "-- torchrun --nproc_per_node=2: steps 1-10"
torchrun --standalone --nproc_per_node=2 -m faceaux train "${common[@]}" --stop-after 10
echo "-- one process: resume at step 10, continue to 20"
python -m faceaux train "${common[@]}" --resume auto

python - "$out/run/log.jsonl" <<'PY'
import json
import statistics
import sys

records = [json.loads(line) for line in open(sys.argv[1])]
steps = [r["step"] for r in records if "loss" in r]
worlds = {r["step"]: r["world_size"] for r in records if "loss" in r}
loss = {r["step"]: r["loss"] for r in records if "loss" in r}
assert steps == list(range(1, 21)), f"steps are not continuous: {steps}"
assert {worlds[s] for s in range(1, 11)} == {2} and {worlds[s] for s in range(11, 21)} == {1}
noise = statistics.pstdev([loss[s + 1] - loss[s] for s in range(1, 10)])
jump = loss[11] - loss[10]
print(f"loss at 10 (2 processes) {loss[10]:.4f}, at 11 (1 process) {loss[11]:.4f}; "
      f"jump {jump:+.4f}, step-to-step noise {noise:.4f}")
assert abs(jump) <= 3 * noise, "the loss jumped at the resume beyond 3x the step-to-step noise"
print(f"mean loss steps 1-5 {statistics.mean(loss[s] for s in range(1, 6)):.4f}, "
      f"steps 16-20 {statistics.mean(loss[s] for s in range(16, 21)):.4f}")
PY

echo "-- faceaux eval on a miniature IJB-C folder and a .bin"
python tests/eval/ijb_miniature.py "$out/ijb"
faceaux eval "${model[@]}" --checkpoint "$out/run/checkpoints/step_00000020/model.pt" \
  --ijb "$out/ijb" --bin "$out/ijb/tiny.bin" --num-workers 1 --json "$out/eval.json"
echo "train smoke job: done in $(( $(date +%s) - start )) s"
