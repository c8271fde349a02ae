#!/usr/bin/env bash
# The packages this project needs that the GPU machine's image lacks, as wheels for its Python (3.12),
# written to .whl/ (git-ignored; carry it: the device tool's `carry: [".whl"]`, about 5 MB).
#   bash scripts/device_wheels.sh            # here, once per checkout (needs a python3.12: PY312=...)
# On the GPU machine, first thing in a command:
#   source scripts/device_env.sh             # installs them into /tmp/site and sets PYTHONPATH
# insightface has no wheel on the registry: it is built here (a C extension, so for 3.12 exactly).
# .whl-world/ gets the subset the identity world needs (no open_clip, no facenet-pytorch: those serve the
# real weights only), 2 MB, for calls whose tree is close to the 64 MiB a call may send:
#   carry [".whl-world"], and WHEELS=.whl-world before sourcing scripts/device_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY312=${PY312:-$(ls ~/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | head -1)}
PY312=${PY312:-$(command -v python3.12 || true)}  # a pyenv shim answers only where 3.12 is selected, so the version folder first
if [ -z "$PY312" ] || ! "$PY312" --version >/dev/null 2>&1; then
  echo "error: no python3.12 here (the GPU machine's Python); set PY312=/path/to/python3.12" >&2
  exit 2
fi
mkdir -p .whl
"$PY312" -m pip wheel -q --no-deps "insightface==0.7.3" -w .whl
"$PY312" -m pip download -q --no-deps -d .whl open_clip_torch ftfy wcwidth webdataset braceexpand "facenet-pytorch==2.6.0"
rm -rf .whl-world && mkdir .whl-world
for w in .whl/*.whl; do
  case $(basename "$w") in open_clip_torch-*|facenet_pytorch-*) ;; *) cp "$w" .whl-world/ ;; esac
done
ls .whl .whl-world
