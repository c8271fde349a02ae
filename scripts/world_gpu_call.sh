#!/usr/bin/env bash
# One time-limited call of the world's training on a GPU host (how checkpoints/world/ was made; see its
# README): restore the state of earlier calls, probe each new stage's rate and size its step budget to
# the time left, train the stages in parallel as separate processes on the one GPU (the backbone once
# the world-CLIP is exported), then pack the state back in <= 15 MiB pieces for the next call.
#   bash scripts/world_gpu_call.sh CALL_SECONDS "clip faces eval_faces attributes face_detector" [yes|no]
# With the backbone (yes) and "identity" among the stages, the identity stage writes its shards while the
# backbone trains and pretrains once the backbone is exported.
# Environment: OUT (where the pieces go), BB_EXTRA (seconds of later calls the backbone's budget
# counts), CLIP_END, TOT_<stage> (a stage's total steps; for identity: pretraining's max_steps), BASE
# (folder of runs/ and world/, default /tmp), WORLD_FROM (a world folder copied in when BASE has none,
# e.g. checkpoints/world), BENCH_IDENTITY=yes (time the identity module's step on a random backbone
# of the world's shape: logs/identity_bench.json), EXTRA_CMD (a command run in the background once the
# backbone is exported, e.g. an evaluation), BB_END (the backbone's deadline in seconds), BB_ARGS (added to
# the backbone's command and its rate probe, e.g. --init-from a UViT to continue), PACK (what of BASE the state
# keeps, default "runs world"; files restored from it win over WORLD_FROM's), STAGE_ARGS (added to every stage command: --tiny for a
# CPU dry run). State pieces of the previous call are read from
# .gpu_ops/state/state.tgz.* ; the identity stage's shards stay out of them (regenerated when missing), and
# its pretraining run keeps only its newest checkpoint (the call returns at most 8 pieces).
set -u
CALL=${1:-560}; STAGES=${2-"clip faces eval_faces attributes"}; BACKBONE=${3:-yes}
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
cd "$(dirname "$0")/.."
source scripts/device_env.sh  # the carried wheels (scripts/device_wheels.sh)
OUTD=${OUT:-/tmp/out}; L=$OUTD/logs; mkdir -p $L
B=${BASE:-/tmp}; R=$B/runs; W=$B/world; mkdir -p $B
source scripts/gpu_state.sh; restore_state state $B
mkdir -p $R $W
if [ ! -f $W/world_clip/config.json ] && [ -n "${WORLD_FROM:-}" ]; then cp -rn $WORLD_FROM/. $W/; echo "world copied from $WORLD_FROM"; fi
ls $W $R; ls $R/identity 2>/dev/null
nvidia-smi --query-gpu=name,memory.used --format=csv
rate() { grep -o '[0-9.]* samples/s' "$1" | tail -1 | cut -d' ' -f1; }
batch() { python3 - "$1" <<'PY'
import json,sys; s=json.load(open(f"/tmp/probe/{sys.argv[1]}/checkpoint/state.json")); c=s.get("config",{})
print(c.get("batch_size") or c.get("batch") or c.get("train",{}).get("batch_size") or 512)
PY
}
launch() {  # stage deadline [extra arguments] (seconds since the call started)
  local s=$1 deadline=$2 st budget; shift 2
  if [ $s = identity ]; then  # shards (also before the backbone exists), then pretraining of TOT_identity steps
    while [ ! -f $W/models/pixel_space.safetensors ] && [ $(el) -lt 240 ]; do sleep 3; done  # the backbone stage writes it
    budget=$(( deadline - $(el) ))
    echo "[$(el) s] identity for $budget s (${TOT_identity:+max_steps $TOT_identity})"
    python3 -m pretrain.world train identity ${STAGE_ARGS:-} "$@" --out $R --world $W ${TOT_identity:+--total-steps $TOT_identity} \
      --minutes $(python3 -c "print($budget/60)") >> $L/identity.log 2>&1
    echo "[$(el) s] identity returned"
    return
  fi
  if [ -f $R/$s/checkpoint/state.json ]; then
    budget=$(( deadline - $(el) ))
    local tot=$(python3 - $R/$s/checkpoint/state.json <<'PY'
import json,sys
def find(d):
    if isinstance(d, dict):
        if isinstance(d.get("total_steps"), int): return d["total_steps"]
        for v in d.values():
            r = find(v)
            if r: return r
c = json.load(open(sys.argv[1])).get("config")
t = find(c)
print(f"--total-steps {t}" if t else "")
PY
)
    local ov; ov=$(eval "echo \${TOT_$s:-}"); [ -n "$ov" ] && tot="--total-steps $ov"
    echo "[$(el) s] $s: resume ($tot) for $budget s"
    python3 -m pretrain.world train $s ${STAGE_ARGS:-} "$@" $tot --out $R --world $W --minutes $(python3 -c "print($budget/60)") --log-every 100 >> $L/$s.log 2>&1
  else
    rm -rf /tmp/probe/$s  # a warm machine may hold an earlier call's probe, which would resume
    python3 -m pretrain.world train $s ${STAGE_ARGS:-} "$@" --out /tmp/probe --world /tmp/probe_world --steps 40 --log-every 10 > $L/$s.probe.log 2>&1
    local r=$(rate $L/$s.probe.log); local b=$(batch $s); budget=$(( deadline - $(el) ))
    local extra=0 margin=0.85; [ $s = backbone ] && extra=${BB_EXTRA:-0} && margin=0.75
    st=$(python3 -c "print(max(200, int($margin*float('${r:-0}' or 0)/$b*($budget+$extra))))")
    local ov; ov=$(eval "echo \${TOT_$s:-}"); [ -n "$ov" ] && st=$ov  # a given total wins over the probe's
    echo "[$(el) s] $s: probe $r samples/s, batch $b -> total steps $st for ${budget} s"
    python3 -m pretrain.world train $s ${STAGE_ARGS:-} "$@" --out $R --world $W --total-steps $st --minutes $(python3 -c "print($budget/60)") --log-every 100 >> $L/$s.log 2>&1
  fi
}
for s in $STAGES; do
  case $s in clip) b=${CLIP_END:-200};; *) b=$(( CALL - 45 ));; esac
  if [ $s = identity ] && [ "$BACKBONE" = yes ]; then launch identity $b --steps 0 &  # shards now, pretraining after the backbone
  else launch $s $b &
  fi
done
if [ "$BACKBONE" = yes ]; then
  ( while [ ! -f $W/world_clip/config.json ] && [ $(el) -lt $(( CALL - 120 )) ]; do sleep 5; done
    mkdir -p /tmp/probe_world && cp -r $W/world_clip /tmp/probe_world/ 2>/dev/null
    launch backbone ${BB_END:-$(( CALL - 45 ))} ${BB_ARGS:-}
    if [ -n "${EXTRA_CMD:-}" ] && [ -f $W/models/uvit_v1.safetensors ]; then
      echo "[$(el) s] extra: $EXTRA_CMD"; (cd $PWD && W=$W timeout $(( CALL - 30 - $(el) )) bash -c "$EXTRA_CMD") >> $L/extra.log 2>&1
    fi ) &
elif [ -n "${EXTRA_CMD:-}" ]; then
  ( echo "[$(el) s] extra: $EXTRA_CMD"; W=$W timeout $(( CALL - 30 )) bash -c "$EXTRA_CMD" >> $L/extra.log 2>&1 ) &
fi
if [ "${BENCH_IDENTITY:-no}" = yes ]; then
  ( while [ ! -f $W/model_configs.json ] || ! grep -q uvit $W/model_configs.json; do sleep 5; [ $(el) -gt $(( CALL - 120 )) ] && exit; done
    timeout 240 python3 -m pretrain.train --config pretrain/configs/world.json --weights $W --random_backbone \
      --benchmark 40 > $L/identity_bench.json 2> $L/identity_bench.err; echo "[$(el) s] identity benchmark: $(grep samples_per_s $L/identity_bench.json)" ) &
fi
sleep 20; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
wait
if [ "$BACKBONE" = yes ] && [[ " $STAGES " == *" identity "* ]]; then launch identity $(( CALL - 45 )); fi
echo "all stages returned at $(el) s"
for f in $L/*.log; do echo "== $f"; grep -v Warning $f | tail -4; done
ls -la $W $W/* 2>/dev/null | head -40
[ -f $R/backbone/samples.png ] && cp $R/backbone/samples.png $R/backbone/samples.txt $OUTD/
for d in $R/*/; do [ -f $d/checkpoint/state.json ] || continue; python3 -c "import json,sys; sys.exit(0 if json.load(open('$d/checkpoint/state.json')).get('done') else 1)" 2>/dev/null && rm -rf $d && echo "finished: $d (checkpoint dropped)"; done
for c in $R/*/run/checkpoints; do  # pretraining runs: resuming needs their newest checkpoint only
  [ -d $c ] && ls -d $c/step_* 2>/dev/null | sort | head -n -1 | xargs -r rm -rf
done
du -sh $W/* $R/* 2>/dev/null
pack_state state $B $OUTD --exclude=runs/identity/shards ${PACK:-runs world}
tar czf $OUTD/logs.tgz -C $OUTD logs; rm -rf $L
ls -la $OUTD
