# Sourced first by the one-call GPU scripts (scripts/world_{latent,autoencoder,backbone_arms}_call.sh): the
# call's clock (T0; `el` prints the seconds since it began), the repository root as the working folder, the
# interpreter (PY: $PYTHON when set, for a CPU dry run; else the GPU host's python3 with the carried wheels,
# scripts/device_env.sh) and the output folders (OUTD: $OUT, else /tmp/out; L: its logs/).
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; else source scripts/device_env.sh; PY=python3; fi
OUTD=${OUT:-/tmp/out}; L=$OUTD/logs; mkdir -p "$L"
