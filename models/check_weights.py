"""Check, before any work, that every weight file a workflow needs is present and looks whole.

    python -m models.check_weights [--weights DIR] [NAME ...]      (names: models.paths.KNOWN_WEIGHTS)

Only what costs no tensor data is read, so a broken multi-gigabyte download is caught in seconds:
every file must be non-empty, not a Git LFS pointer and not a text file (a saved error page); the
backbone's modules (UViT, autoencoder, the caption decoder's encode_prefix, the CLIP text encoder)
are checked by their own loaders on the meta device: the archive or safetensors header is read
(a truncated download fails here) and every tensor name and shape is compared with the module, so a
pickled object or another module's file is named as such. The image CLIP file must be a readable
archive (a TorchScript archive, or a state dict that looks like CLIP), the face pack a folder of
ONNX files, the identity module a folder with a readable config.json and safetensors header.

Prints one line per name (ok, missing or bad, with what is wrong and what to do); exits 2 if any
file is missing or bad, 0 when all look usable.

    python -m models.check_weights --presence [--weights DIR] [NAME ...]

prints one word and reads nothing: `all` when every name is found, `none` when none is, `some`
otherwise (`presence`). scripts/run.sh runs the embedded demo world (python -m eval.demo) only on
`none`; on `some` it stops with the listing above.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from .errors import run_cli
from .paths import (
    ENV_VAR,
    KNOWN_WEIGHTS,
    WeightsError,
    find_weights,
    missing_weights,
    read_model_configs,
    weights_dir,
)
from .weights import README_HINT, check_weight_file, identify, read_state_dict

# what the main job (scripts/run.sh: train.py and sample.py) needs, and so the web page
MAIN_JOB = ("uvit", "autoencoder", "caption_decoder", "clip_text", "face_pack", "identity")
DEMO_WORLD_ENV = "UNIDIFFUSER_DEMO_WORLD"  # another world folder for the demo (tests, a stand-in world)


def demo_world(world=None, checkpoints=None) -> Path:
    """The identity world the demo and the web page run on when no real weight is found: `world` when
    given, else $UNIDIFFUSER_DEMO_WORLD, else <checkpoints>/world (default: the repository's checkpoints/)."""
    import os

    from .paths import REPO_ROOT

    if world:
        return Path(world).expanduser()
    if os.environ.get(DEMO_WORLD_ENV):
        return Path(os.environ[DEMO_WORLD_ENV]).expanduser()
    return Path(checkpoints or REPO_ROOT / "checkpoints") / "world"


def presence(names=MAIN_JOB, root=None) -> str:
    """"all" when every weight in `names` is found (find_weights' lookup, as the check below: root, then
    $UNIDIFFUSER_WEIGHTS, then checkpoints/), "none" when none of them is, else "some". Nothing is read:
    whether the files found are usable is the check's business."""
    found = sum(1 for name in names if not missing_weights([name], root))
    return "all" if found == len(names) else "none" if found == 0 else "some"


def _module_check(name: str, path: Path, root) -> str:
    """The backbone module `name` loaded on the meta device from `path` (names and shapes checked)."""
    from . import load_autoencoder, load_encode_prefix, load_uvit
    from .text_encoder import load_clip_text
    from .world_clip import is_world_clip_dir, load_world_clip

    world_clip = path if path.is_dir() else path.parent
    if name in ("clip_text", "caption_decoder") and is_world_clip_dir(world_clip):  # the identity world's
        _, module = load_world_clip(world_clip, device="meta")
        return f"world-CLIP: {len(module.state_dict())} tensors, names and shapes match"
    configs = read_model_configs(root)
    if name == "clip_text":
        _, module = load_clip_text(path, device="meta")
    else:
        load = {"uvit": load_uvit, "autoencoder": load_autoencoder, "caption_decoder": load_encode_prefix}[name]
        module = load(path, configs.get(name), device="meta")
    part = "encode_prefix: " if name == "caption_decoder" else ""  # the only part of it that is read
    return f"{part}{len(module.state_dict())} tensors, names and shapes match"


def _check_clip_image(path: Path, what: str) -> str:
    head = check_weight_file(path, what)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise WeightsError(f"{what}: {path} is a damaged zip archive ({e}); it is probably truncated (an "
                               f"interrupted download or copy): download it again. {README_HINT}") from e
        if any(n.endswith("constants.pkl") for n in names):
            return f"TorchScript archive readable ({len(names)} entries)"
    state_dict = read_state_dict(path, what, meta=True)
    looks = identify(state_dict)
    if looks is None or "CLIP model (ViT-B-32.pt)" not in looks:
        raise WeightsError(f"{what}: {path} does not look like a CLIP ViT-B/32 state dict (it looks like "
                           f"{looks or 'nothing known'}; {len(state_dict)} entries). {README_HINT}")
    return f"CLIP state dict, {len(state_dict)} tensors readable"


def _check_folder(name: str, path: Path, what: str) -> str:
    if not path.is_dir():
        raise WeightsError(f"{what}: {path} is a file, but a folder is expected here (unpack it if it is an "
                           f"archive). {README_HINT}")
    files = sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise WeightsError(f"{what}: {path} is an empty folder. {README_HINT}")
    if name == "face_pack":
        models = [p for p in files if p.suffix == ".onnx"]
        if not models:
            raise WeightsError(f"{what}: {path} holds no .onnx model files. {README_HINT}")
        for p in models:
            check_weight_file(p, what)
        return f"{len(models)} ONNX files"
    if name == "identity":
        config = path / "config.json"
        try:
            if not isinstance(json.loads(config.read_text()), dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise WeightsError(f"{what}: {config} is missing or unreadable ({e}). {README_HINT}") from e
        tensors = [p for p in files if p.suffix == ".safetensors"]
        if not tensors:
            raise WeightsError(f"{what}: {path} holds no .safetensors file. {README_HINT}")
        n = sum(len(read_state_dict(p, what, meta=True)) for p in tensors)
        return f"config.json and {n} tensors readable"
    return f"{len(files)} files"


def check(name: str, root=None) -> tuple[Path, str]:
    """(path, what was verified) of weight `name`; WeightsError when it is missing, damaged or wrong."""
    path = find_weights(name, None, root)
    what = KNOWN_WEIGHTS[name][1]
    if name in ("uvit", "autoencoder", "caption_decoder", "clip_text"):
        return path, _module_check(name, path, root)
    if name == "clip_image":
        from .world_clip import is_world_clip_dir

        if path.is_dir() and is_world_clip_dir(path):  # the identity world's image tower
            return path, _module_check("clip_text", path, root)
        return path, _check_clip_image(path, what)
    return path, _check_folder(name, path, what)


def _summary(e: WeightsError) -> str:
    """The first line of a (possibly long) error, with its 'looks like' verdict when it has one."""
    lines = str(e).splitlines()
    looks = [line.strip() for line in lines[1:] if "looks like" in line]
    return " ".join([lines[0], *looks[:1]])


def main(argv=None) -> int:
    """Print what is missing or damaged; exit 2 if anything is."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m models.check_weights", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", default=list(KNOWN_WEIGHTS), help=f"any of {sorted(KNOWN_WEIGHTS)}")
    p.add_argument("--weights", default=None, help=f"weights folder (default ${ENV_VAR} or checkpoints/)")
    p.add_argument("--presence", action="store_true",
                   help="only print all, some or none: how many of the names are found (nothing is read)")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in KNOWN_WEIGHTS]
    if unknown:
        p.error(f"unknown weight name(s) {unknown}; choose from {sorted(KNOWN_WEIGHTS)}")
    if args.presence:
        print(presence(args.names, args.weights))
        return 0
    missing = bad = 0
    for name in args.names:
        try:
            find_weights(name, None, args.weights)
        except WeightsError as e:
            missing += 1
            print(f"missing  {name}: {e}")
            continue
        try:
            path, verified = check(name, args.weights)
        except WeightsError as e:
            bad += 1
            print(f"bad      {name}: {_summary(e)}")
            continue
        print(f"ok       {name}: {path} ({verified})")
    n = len(args.names)
    if missing or bad:
        print(f"{missing + bad} of {n} weight files are missing or unusable ({missing} missing, {bad} bad); "
              "see checkpoints/README.md")
        return 2
    print(f"all {n} weight files found and readable under {weights_dir(args.weights)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
