# Sourced on the GPU machine (see scripts/device_wheels.sh): installs the carried wheels into a fresh
# /tmp/site and puts it and the checkout on PYTHONPATH. insightface imports albumentations at import
# time for a face-mask augmenter this project never uses; a stub stands in for it (the image has none).
rm -rf /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site ${WHEELS:-.whl}/*.whl \
  >/dev/null 2>&1 || echo "warning: installing the carried wheels failed (is .whl carried?)" >&2
mkdir -p /tmp/site/albumentations/core
touch /tmp/site/albumentations/__init__.py /tmp/site/albumentations/core/__init__.py
echo "class ImageOnlyTransform: pass" > /tmp/site/albumentations/core/transforms_interface.py
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
