#!/usr/bin/env bash
# Adopting a candidate backbone (NEXT, a folder of models/ + model_configs.json) on one GPU host, in three
# time-limited calls on one warm machine. Everything that does not depend on the new identity module runs beside the
# module's training, so the GPU is shared instead of waited for:
#   bash scripts/world_adopt_call.sh 1 CALL_SECONDS   # identity shards, then training (world_identity_call.sh),
#                                                     #   beside it the fine-tuning grid on validation identities
#   bash scripts/world_adopt_call.sh 2 CALL_SECONDS   # training resumed to the end; beside it the grid's rest
#                                                     #   and eval.world's text-only and ceiling rows
#   bash scripts/world_adopt_call.sh 3 CALL_SECONDS   # the module snapshot and identity scale chosen on validation
#                                                     #   identities and exported (unless ENCODER names a module
#                                                     #   chosen already, sampled at ID_SCALE), then eval.world
#   bash scripts/world_adopt_call.sh grid CALL_SECONDS   # the fine-tuning grid alone (resumes; a world whose module
#                                                        #   exists, e.g. one adopted already)
# A world adopted already is evaluated with NEXT=none W=checkpoints/world: the grid, then phase 3 with
# ENCODER=checkpoints/world/faceid_encoder (nothing is laid over it or trained).
# The candidate world is built at $W (default /tmp/wn): checkpoints/world with every file and folder of NEXT in place
# of its namesake (models/ and model_configs.json for a new backbone; renderer.json, faces/, eval_faces/ and
# attributes/ too for a world of another renderer version), so the committed backbone is not needed: a call carrying
# a 16 MB candidate may move checkpoints/world/models/uvit_v1.safetensors out of the working tree to stay under the
# 64 MiB limit.
# Work folders: /tmp/wi (module), /tmp/fg (grid), /tmp/ew (eval.world).
# Results come back under $OUT: finetune_grid.json, identity_grid.json, synthworld.json, the exported
# module (faceid_encoder.tgz), the module's state pieces (ident.tgz.*), the evaluation's work folder without
# images (ew.txz) and the logs (adopt_logs.tgz).
# The machine is released after 30 s idle, and /tmp with it: issue the next call at once. If it went cold,
# carry the last ident.tgz.* as .gpu_ops/state (the training resumes; the shards are written again) and
# pass the grid as GRID_JSON; phase 3 takes the module's snapshots from the carried ident.tgz.* when /tmp/wi
# is gone, and resumes from a carried .gpu_ops/state/ew.txz (its previous return), or
# from EW_STATE (a tarball of ew/, gzip or xz; without data/ and faces/ they are rendered and scored again).
# Environment: W, NEXT (default checkpoints/world_next; "none": W itself, default checkpoints/world),
# SEED (test identities, 55555), VAL_SEED (101),
# EVAL_WORKERS (eval.world --workers, 8), ENCODER and ID_SCALE (phase 3's module and its --id-scale, chosen
# elsewhere; on a warm machine ENCODER=$W/faceid_encoder resumes the evaluation of the module chosen last
# call), GRID_JSON (the fine-tuning grid whose best setting the evaluation uses, when not this machine's;
# phases 1-2 then run no grid),
# VARIANTS (phases 1-2: the module runs side by side, "NAME:FLAGS;NAME:FLAGS", names of letters, digits and
# '-'; default "face4:", the committed recipe), e.g. "face4:;eps:--timestep_weighting eps;seed1:--seed 1".
# Phase 3 then chooses among every variant's snapshots (runs/v_NAME/exports/step_<n>) by sampling, at the
# identity scales IG_SETTINGS (eval.identity_grid --settings; default 1:none:0,0.6:none:0; each module x
# setting samples 8 validation identities, so many snapshots want one setting). IG_EXTRA adds modules trained
# elsewhere to that choice, "NAME=DIR NAME=DIR" (e.g. "committed=checkpoints/world/faceid_encoder").
set -u
PHASE=${1:?phase 1, 2 or 3}; CALL=${2:?call seconds}
T0=$(date +%s); left() { echo $(( CALL - ($(date +%s) - T0) )); }
cd "$(dirname "$0")/.."
source scripts/device_env.sh
OUTD=${OUT:-/tmp/out}; L=$OUTD/adopt_logs; mkdir -p "$L"
NEXT=${NEXT:-checkpoints/world_next}; SEED=${SEED:-55555}; VAL_SEED=${VAL_SEED:-101}
if [ "$NEXT" = none ]; then  # the world at W as it is (no candidate laid over it)
  W=${W:-checkpoints/world}
  [ -f "$W/models/uvit_v1.safetensors" ] || { echo "NEXT=none: W=$W holds no models/uvit_v1.safetensors" >&2; exit 2; }
else
  W=${W:-/tmp/wn}
  if [ ! -f "$W/.candidate" ]; then  # not built by an earlier call on this machine
    if [ ! -f "$NEXT/models/uvit_v1.safetensors" ]; then
      echo "no candidate backbone at $NEXT: set NEXT, or restore one from git history (the worlds adopted since:" \
        "faceworld-3's 'git archive 2ed88ea checkpoints/world_next/models | tar -x'; the latent backbone, commit" \
        "dd0aeba; h, commit 938222a)" >&2
      exit 2
    fi
    # each file and folder of NEXT replaces its namesake whole, not merged (models/: a latent candidate brings
    # autoencoder_kl.safetensors instead of the pixel space; a candidate of another renderer version brings its
    # renderer.json and the models that read its renders: faces/, eval_faces/, attributes/)
    source scripts/gpu_state.sh
    overlay_world "$W" "$NEXT"/* \
      && echo "candidate world at $W: checkpoints/world with $(ls "$NEXT" | tr '\n' ' ')from $NEXT"
  fi
fi
GRID=(python3 -m eval.finetune_baseline grid --world "$W" --seed "$VAL_SEED" --identities 8 --photos 3 --prompts 4
      --device cuda --workers 4 --out /tmp/fg --json "$OUTD/finetune_grid.json")
EVAL=(python3 -m eval.world --seed "$SEED" --identities 50 --photos 3,10 --prompts 10 --seeds 3 --steps 30
      --device cuda --workers "${EVAL_WORKERS:-8}" --world "$W" --out /tmp/ew --no-progress)
# the grid tuned on this backbone: this machine's, else GRID_JSON, else the committed one (previous backbone)
grid_json() { for f in /tmp/fg.json "${GRID_JSON:-}" eval/results/finetune_grid.json; do
  [ -f "$f" ] && { echo "$f"; return; }; done; }
bg=()
case $PHASE in
  grid)
    timeout -s INT $(( $(left) - 25 )) "${GRID[@]}" > "$L/grid.log" 2>&1
    tail -5 "$L/grid.log"
    [ -f "$OUTD/finetune_grid.json" ] && cp "$OUTD/finetune_grid.json" /tmp/fg.json
    ;;
  1|2)
    if [ ! -f /tmp/fg.json ] && [ -z "${GRID_JSON:-}" ]; then  # a grid tuned on this backbone already: not rerun
      timeout -s INT $(( $(left) - 45 )) "${GRID[@]}" > "$L/grid_$PHASE.log" 2>&1 &
      bg+=($!)
    fi
    if [ "$PHASE" = 2 ]; then
      timeout -s INT $(( $(left) - 45 )) "${EVAL[@]}" --methods text_only,ceiling --command-timing 0 \
        --json "$OUTD/synthworld_backbone_rows.json" > "$L/eval_backbone_rows.log" 2>&1 &
      bg+=($!)
    fi
    IFS=';' read -ra variants <<< "${VARIANTS:-face4:}"
    WORLD=$W IDS=12000 PHOTOS=4 STEPS=4000 OUT=$OUTD bash scripts/world_identity_call.sh $(( $(left) - 20 )) "${variants[@]}"
    for p in "${bg[@]}"; do wait "$p"; done
    [ -f "$OUTD/finetune_grid.json" ] && cp "$OUTD/finetune_grid.json" /tmp/fg.json
    ;;
  3)
    if [ "$NEXT" = none ] && [ "$(realpath -m "${ENCODER:-unset}")" != "$(realpath -m "$W/faceid_encoder")" ]; then
      echo "NEXT=none: phase 3 evaluates W's own module (ENCODER=$W/faceid_encoder); W is not written to" >&2
      exit 2
    fi
    EW_STATE=${EW_STATE:-${STATE:-.gpu_ops/state}/ew.txz}
    if [ ! -d /tmp/ew ] && [ -f "$EW_STATE" ]; then  # a previous call's units (resumed; gzip or xz)
      tar xf "$EW_STATE" -C /tmp && echo "evaluation work folder restored from $EW_STATE"
    fi
    if [ ! -d /tmp/wi/runs ]; then  # a cold machine: the module's snapshots from phases 1-2's returned state
      source scripts/gpu_state.sh; restore_state ident /tmp/wi
    fi
    if [ -n "${ENCODER:-}" ]; then  # chosen already: sampled at its scale
      [ -f "$ENCODER/identity.safetensors" ] || { echo "ENCODER=$ENCODER holds no identity.safetensors" >&2; exit 2; }
      if [ "$(realpath "$ENCODER")" != "$(realpath -m "$W/faceid_encoder")" ]; then  # e.g. the last call's export
        rm -rf "$W/faceid_encoder" && cp -r "$ENCODER" "$W/faceid_encoder"
      fi
      EVAL+=(--id-scale "${ID_SCALE:-1}")
    else
      # the run's snapshots (pretrain --export_every), chosen between by sampling: id_gain can misrank them
      mods=()
      for d in /tmp/wi/runs/v_*/exports/step_*; do
        [ -d "$d" ] || continue
        v=${d#/tmp/wi/runs/v_}; v=${v%%/*}
        mods+=(--encoder "$v-s$((10#${d##*_}))=$d")
      done
      [ ${#mods[@]} -gt 0 ] || mods=(--encoder /tmp/wi/runs/v_face4/faceid_encoder)
      for e in ${IG_EXTRA:-}; do mods+=(--encoder "$e"); done
      python3 -m eval.identity_grid --seed "$VAL_SEED" --identities 8 --prompts 3 --n 3 --steps 20 \
        --settings "${IG_SETTINGS:-1:none:0,0.6:none:0}" --device cuda --world "$W" "${mods[@]}" \
        --out /tmp/ig --json "$OUTD/identity_grid.json" --export "$W/faceid_encoder" --no-progress \
        > "$L/identity_grid.log" 2>&1 || { tail -20 "$L/identity_grid.log"; exit 1; }
      tar czf "$OUTD/faceid_encoder.tgz" -C "$W" faceid_encoder
    fi
    timeout -s INT $(( $(left) - 25 )) "${EVAL[@]}" --finetune-grid "$(grid_json)" \
      --json "$OUTD/synthworld.json" > "$L/eval.log" 2>&1
    tail -5 "$L/eval.log"
    # the work folder without its images, photos and face caches (rendered and scored again on a resume):
    # enough to aggregate, or to resume, elsewhere; small enough to commit or carry (about 1 MB as xz)
    tar cJf "$OUTD/ew.txz" -C /tmp --exclude=ew/images --exclude=ew/command_timing --exclude=ew/records \
      --exclude=ew/data --exclude=ew/faces ew
    ;;
  *) echo "phase must be 1, 2, 3 or grid" >&2; exit 2 ;;
esac
for f in "$L"/*.log; do echo "== $f"; tail -4 "$f"; done
tar czf "$OUTD/adopt_logs.tgz" -C "$OUTD" adopt_logs && rm -rf "$L"
ls -la "$OUTD"; echo "[phase $PHASE: $(( CALL - $(left) )) s]"
