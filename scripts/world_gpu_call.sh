#!/usr/bin/env bash
# One time-limited call of the world's training on a GPU host (how checkpoints/world/ was made; see its
# README): restore the state of earlier calls, probe each new stage's rate and size its step budget to
# the time left, train the stages in parallel as separate processes on the one GPU (the backbone once
# the world-CLIP is exported), then pack the state back in <= 15 MiB pieces for the next call.
#   bash scripts/world_gpu_call.sh CALL_SECONDS "clip faces eval_faces attributes face_detector" [yes|no]
# Environment: OUT (where the pieces go), BB_EXTRA (seconds of later calls the backbone's budget
# counts), CLIP_END, TOT_<stage> (a stage's total steps on resume). State pieces of the previous call
# are read from .gpu_ops/state/state.tgz.* .
set -u
CALL=${1:-560}; STAGES=${2:-"clip faces eval_faces attributes"}; BACKBONE=${3:-yes}
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ${WHEELS:-.whl}/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUTD=${OUT:-/tmp/out}; L=$OUTD/logs; mkdir -p $L
R=/tmp/runs; W=/tmp/world
if ls ${STATE:-.gpu_ops/state}/state.tgz.* >/dev/null 2>&1; then cat ${STATE:-.gpu_ops/state}/state.tgz.* | tar xz -C /tmp; echo "state restored at $(el) s"; fi
mkdir -p $R $W
nvidia-smi --query-gpu=name,memory.used --format=csv
rate() { grep -o '[0-9.]* samples/s' "$1" | tail -1 | cut -d' ' -f1; }
batch() { python3 - "$1" <<'PY'
import json,sys; s=json.load(open(f"/tmp/probe/{sys.argv[1]}/checkpoint/state.json")); c=s.get("config",{})
print(c.get("batch_size") or c.get("batch") or c.get("train",{}).get("batch_size") or 512)
PY
}
launch() {  # stage deadline (seconds since the call started)
  local s=$1 deadline=$2 st budget
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
    python3 -m pretrain.world train $s $tot --out $R --world $W --minutes $(python3 -c "print($budget/60)") --log-every 100 >> $L/$s.log 2>&1
  else
    python3 -m pretrain.world train $s --out /tmp/probe --world /tmp/probe_world --steps 40 --log-every 10 > $L/$s.probe.log 2>&1
    local r=$(rate $L/$s.probe.log); local b=$(batch $s); budget=$(( deadline - $(el) ))
    local extra=0 margin=0.85; [ $s = backbone ] && extra=${BB_EXTRA:-0} && margin=0.75
    st=$(python3 -c "print(max(200, int($margin*float('${r:-0}' or 0)/$b*($budget+$extra))))")
    echo "[$(el) s] $s: probe $r samples/s, batch $b -> total steps $st for ${budget} s"
    python3 -m pretrain.world train $s --out $R --world $W --total-steps $st --minutes $(python3 -c "print($budget/60)") --log-every 100 >> $L/$s.log 2>&1
  fi
}
for s in $STAGES; do
  case $s in clip) b=${CLIP_END:-200};; *) b=$(( CALL - 45 ));; esac
  launch $s $b &
done
if [ "$BACKBONE" = yes ]; then
  ( while [ ! -f $W/world_clip/config.json ] && [ $(el) -lt $(( CALL - 120 )) ]; do sleep 5; done
    mkdir -p /tmp/probe_world && cp -r $W/world_clip /tmp/probe_world/ 2>/dev/null
    launch backbone $(( CALL - 45 )) ) &
fi
sleep 20; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
wait
echo "all stages returned at $(el) s"
for f in $L/*.log; do echo "== $f"; grep -v Warning $f | tail -4; done
ls -la $W $W/* 2>/dev/null | head -40
for d in $R/*/; do python3 -c "import json,sys; sys.exit(0 if json.load(open('$d/checkpoint/state.json')).get('done') else 1)" 2>/dev/null && rm -rf $d && echo "finished: $d (checkpoint dropped)"; done
du -sh $W/* $R/* 2>/dev/null
tar czf /tmp/state.tgz -C /tmp runs world && split -b 15M -d /tmp/state.tgz $OUTD/state.tgz.
tar czf $OUTD/logs.tgz -C $OUTD logs; rm -rf $L
ls -la $OUTD
