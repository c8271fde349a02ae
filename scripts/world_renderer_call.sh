#!/usr/bin/env bash
# Moving the world to another renderer version: the models that read renders -- the conditioning face pack
# (recogniser and detector), the evaluation recogniser and the attribute classifier (taught every attribute pair) --
# trained from scratch on renders of $FACEWORLD_VERSION through world_gpu_call.sh, in time-limited calls on one warm
# machine, then the world they make with a candidate backbone trained on that version evaluated:
#   FACEWORLD_VERSION=faceworld-3 NEXT=checkpoints/world_next bash scripts/world_renderer_call.sh CALL_SECONDS
# Call it again at once (the machine warm: the stages resume from /tmp/runs) until every stage has exported; the
# call in which the last one does evaluates the world, when at least EVAL_SECONDS (default 200) are left:
# seed 31337 with every section of the issue's JSON, seed 27182 with text-to-image and its ceiling.
# The world is assembled at /tmp/wr: checkpoints/world with every part of NEXT (models/, model_configs.json,
# renderer.json, ...) and then the retrained faces/, eval_faces/ and attributes/ in place of their namesakes (marked
# .candidate, so that world_adopt_call.sh W=/tmp/wr trains the identity module on it next).
# Step totals: TOT_<stage> as world_gpu_call.sh reads them; defaults are the committed world's (faces 4,400,
# eval_faces 4,200, face_detector 3,000, attributes 3,000).
# Results under $OUT: world_<version>_seed31337.json, world_<version>_seed27182.json, the exported models
# (render_readers.tgz), world_gpu_call.sh's state pieces and logs (logs.tgz), and eval_logs.tgz.
set -u
CALL=${1:?call seconds}
T0=$(date +%s); left() { echo $(( CALL - ($(date +%s) - T0) )); }
cd "$(dirname "$0")/.."
VERSION=${FACEWORLD_VERSION:?set FACEWORLD_VERSION to the renderer version to move to}
NEXT=${NEXT:-checkpoints/world_next}; OUTD=${OUT:-/tmp/out}; mkdir -p "$OUTD"
NEXT_VERSION=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['version'])" "$NEXT/renderer.json" 2>/dev/null)
if [ "$NEXT_VERSION" != "$VERSION" ] || [ ! -f "$NEXT/models/uvit_v1.safetensors" ]; then
  echo "NEXT=$NEXT must hold a backbone trained on $VERSION (models/, model_configs.json, renderer.json naming" \
    "it; it names '${NEXT_VERSION:-nothing}')" >&2
  exit 2
fi
export FACEWORLD_VERSION TOT_faces=${TOT_faces:-4400} TOT_eval_faces=${TOT_eval_faces:-4200} \
  TOT_face_detector=${TOT_face_detector:-3000} TOT_attributes=${TOT_attributes:-3000}
declare -A EXPORT=([faces]=faces/recogniser.onnx [eval_faces]=eval_faces/recogniser.onnx
                   [face_detector]=faces/detector.onnx [attributes]=attributes/attributes.safetensors)
todo() {  # the stages not exported yet (world_gpu_call.sh would start a finished one again: its checkpoint is gone)
  for s in faces eval_faces face_detector attributes; do [ -f "/tmp/world/${EXPORT[$s]}" ] || echo -n "$s "; done; }
if [ -n "$(todo)" ]; then  # /tmp/world starts with NEXT's renderer.json (the version the stages export beside) alone
  mkdir -p /tmp/wr_seed && cp "$NEXT/renderer.json" /tmp/wr_seed/
  BASE=/tmp WORLD_FROM=/tmp/wr_seed OUT=$OUTD bash scripts/world_gpu_call.sh $(( CALL - 15 )) "$(todo)" no
fi
[ -z "$(todo)" ] || { echo "[$(( CALL - $(left) )) s] stages not all exported yet: call again"; exit 0; }
W=/tmp/wr
source scripts/gpu_state.sh
overlay_world $W "$NEXT"/* /tmp/world/faces /tmp/world/eval_faces /tmp/world/attributes
tar czf "$OUTD/render_readers.tgz" -C /tmp/world faces eval_faces attributes renderer.json
[ "$(left)" -ge "${EVAL_SECONDS:-200}" ] || { echo "exported; $(left) s left: evaluate in the next call"; exit 0; }
source scripts/device_env.sh
L=$OUTD/eval_logs; mkdir -p $L
timeout $(( $(left) - 10 )) python3 -m pretrain.world evaluate --world $W --seed 27182 --only text_to_image,t2i_ceiling \
  --device "${DEVICE:-cuda}" --out "$OUTD/world_${VERSION}_seed27182.json" > $L/seed27182.log 2>&1 &
timeout $(( $(left) - 10 )) python3 -m pretrain.world evaluate --world $W --seed 31337 \
  --only faces,attributes,text_to_image,t2i_ceiling,frechet,sizes --demo checkpoints/demo \
  --device "${DEVICE:-cuda}" --out "$OUTD/world_${VERSION}_seed31337.json" > $L/seed31337.log 2>&1
wait
for f in $L/*.log; do echo "== $f"; grep -v Warning "$f" | tail -5; done
tar czf "$OUTD/eval_logs.tgz" -C "$OUTD" eval_logs && rm -rf $L
echo "[$(( CALL - $(left) )) s] done"
