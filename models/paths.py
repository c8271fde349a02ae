"""Where weight files are looked for, the error raised when they are missing or wrong, and the
checks of the paths a command writes to.

Resolution order for the weights folder: an explicit path (command-line option), then the
environment variable ``UNIDIFFUSER_WEIGHTS``, then ``checkpoints/`` at the repository root.
Inside it the competition's layout is accepted as is (``models/uvit_v1.pth`` ...) as well as
the files directly in the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from .errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_VAR = "UNIDIFFUSER_WEIGHTS"
FACE_PACKS = ("antelopev2", "buffalo_l")  # insightface packs looked for, in this order, when none is named
MODEL_CONFIGS = "model_configs.json"  # optional: configs replacing v1 (tiny test stacks)
# a world's backbone files, relative to its folder: the backbone, its image space (a pixel-space world has
# pixel_space.safetensors, a latent one autoencoder_kl.safetensors) and model_configs.json, which holds their
# configs and the sampler policy. What a world evaluation's images depend on before any identity module.
WORLD_BACKBONE_FILES = ("models/uvit_v1.safetensors", "models/pixel_space.safetensors",
                        "models/autoencoder_kl.safetensors", MODEL_CONFIGS)

# name -> (file or folder, what it is, where users get it)
KNOWN_WEIGHTS = {
    "uvit": ("uvit_v1.pth", "UniDiffuser v1 UViT", "the UniDiffuser v1 release (thu-ml/unidiffuser-v1)"),
    "autoencoder": ("autoencoder_kl.pth", "UniDiffuser AutoencoderKL", "the UniDiffuser v1 release"),
    "caption_decoder": ("caption_decoder.pth", "UniDiffuser caption decoder (encode_prefix)",
                        "the UniDiffuser v1 release"),
    "gpt2": ("gpt2", "GPT-2 tokenizer folder", "the UniDiffuser v1 release (models/gpt2/)"),
    "clip_text": ("clip-vit-large-patch14", "CLIP ViT-L/14 text encoder (Hugging Face folder)",
                  "openai/clip-vit-large-patch14 on the Hugging Face hub"),
    "clip_image": ("ViT-B-32.pt", "OpenAI CLIP ViT-B/32 weights (open_clip 'openai' file)",
                   "open_clip's ViT-B-32 'openai' pretrained file"),
    "face_pack": ("antelopev2", "insightface face pack (antelopev2 or buffalo_l folder of .onnx files)",
                  "insightface's model packs (antelopev2.zip or buffalo_l.zip)"),
    "identity": ("faceid_encoder", "pretrained identity module (safetensors + config.json)",
                 "this project's pretraining run (scripts/pretrain.sh)"),
}

# Other names a part may have: insightface's other pack, and the identity world's folder (checkpoints/world:
# pixel space instead of the autoencoder, the world-CLIP folder for the text encoder, its prefix and the
# image CLIP, the world's face pack). A .pth / .pt file may also be a .safetensors file of the same stem.
ALTERNATIVES = {
    "autoencoder": ("pixel_space.safetensors",),
    "caption_decoder": ("world_clip/model.safetensors",),
    "clip_text": ("world_clip",),
    "clip_image": ("world_clip",),
    "face_pack": ("faces",),
}


class WeightsError(UserError, RuntimeError):
    """A weight file or folder is missing, unreadable or does not match the module."""


def weights_dir(override: str | os.PathLike | None = None) -> Path:
    """The folder holding weight files (see module docstring for the resolution order)."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return REPO_ROOT / "checkpoints"


def find_weights(name: str, path: str | os.PathLike | None = None,
                 root: str | os.PathLike | None = None) -> Path:
    """Path of a known weight file/folder; `path` wins when given. Raises WeightsError if absent.

    Looks in `<root>/<file>` and `<root>/models/<file>` (the competition's layout), for each name
    the part may have: its file, the same stem as .safetensors where the file is .pth / .pt, then
    ALTERNATIVES (the identity world's files); for the face pack every name of FACE_PACKS, in order,
    then the world's `faces` (`find_face_pack` looks for a named one).
    """
    filename, what, source = KNOWN_WEIGHTS[name]
    if path:
        p = Path(path).expanduser()
        if not p.exists():
            raise WeightsError(f"{what}: {p} does not exist. Get it from {source} and pass its path "
                               "(checkpoints/README.md lists every expected file).")
        return p
    base = weights_dir(root)
    names = list(FACE_PACKS) if name == "face_pack" else [filename]
    if Path(filename).suffix in (".pth", ".pt"):
        names.append(str(Path(filename).with_suffix(".safetensors")))
    names += ALTERNATIVES.get(name, ())
    candidates = [base / sub / n for n in names for sub in ("", "models")]
    for c in candidates:
        if c.exists():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise WeightsError(
        f"{what} not found (looked for {tried}). Get it from {source} and put it there, "
        f"or set {ENV_VAR} to the folder that holds it, or pass its path explicitly. "
        f"checkpoints/README.md lists every expected file.")


def find_face_pack(pack: str | None = None, path: str | os.PathLike | None = None,
                   root: str | os.PathLike | None = None) -> Path:
    """The insightface pack folder: `path` when given; else the pack named `pack` (the one an identity
    module was pretrained with) in `<root>/<pack>` or `<root>/models/<pack>`; else the first of
    FACE_PACKS found (see find_weights). Raises WeightsError naming the pack to install."""
    if path or not pack:
        return find_weights("face_pack", path, root)
    base = weights_dir(root)
    candidates = [base / pack, base / "models" / pack]
    for c in candidates:
        if c.is_dir():
            return c
    raise WeightsError(
        f"the insightface face pack {pack!r} is not installed (looked for {', '.join(map(str, candidates))}). "
        f"Get {pack}.zip from insightface's model packs, unzip it to {candidates[0]}/, or pass its folder "
        f"with --face-pack. checkpoints/README.md lists every expected file.")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def files_sha256(root: str | os.PathLike, files) -> dict[str, str]:
    """{path relative to root (POSIX): SHA-256} of the given files under root, in the order given: what a
    results JSON records to name the exact weights behind its numbers."""
    root = Path(root)
    return {Path(f).relative_to(root).as_posix(): file_sha256(f) for f in files}


def world_backbone_sha256(world: str | os.PathLike) -> dict[str, str]:
    """{file: SHA-256} of the WORLD_BACKBONE_FILES present in a world folder."""
    world = Path(world)
    return files_sha256(world, [world / name for name in WORLD_BACKBONE_FILES if (world / name).is_file()])


def missing_weights(names, root: str | os.PathLike | None = None) -> list[str]:
    """The WeightsError message of every name in `names` that cannot be found (empty: all present)."""
    missing = []
    for name in names:
        try:
            find_weights(name, None, root)
        except WeightsError as e:
            missing.append(str(e))
    return missing


def read_model_configs(root: str | os.PathLike | None = None) -> dict[str, dict]:
    """{module name: config dict} from `<weights folder>/model_configs.json` (or `models/` inside it);
    {} when there is none (the v1 configs apply)."""
    base = weights_dir(root)
    for path in (base / MODEL_CONFIGS, base / "models" / MODEL_CONFIGS):
        if path.is_file():
            try:
                configs = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise WeightsError(f"{path} is not valid JSON ({e}); fix or delete it (without it the "
                                   f"v1 configs are used)") from e
            if not isinstance(configs, dict):
                raise WeightsError(f"{path} must hold a JSON object {{module name: config}}")
            return configs
    return {}


def output_dir(path: str | os.PathLike, what: str = "output folder", create: bool = True) -> Path:
    """The folder a command writes into, created with its parents unless `create` is False.

    Checked before any work: a UserError names the path when it cannot be a writable folder (a file
    of that name or among its parents, no write permission).
    """
    path = Path(path).expanduser()
    existing = next(p for p in (path, *path.parents) if p.exists())  # "." or "/" at the latest
    if not existing.is_dir():
        raise UserError(f"{what} {path}: {existing} is a file, not a folder",
                        hint="choose another path, or move that file away")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: {existing} is not writable", hint="choose a folder you can write to")
    try:  # permissions do not tell all (root, read-only or virtual file systems): write a probe file
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{what} {path}: cannot write in {existing} ({e.strerror or e})",
                        hint="choose a folder you can write to") from e
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create {what} {path} ({e.strerror or e})") from e
    return path


def output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """A file a command will write (atomically, creating its folder), checked before any work."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder", hint="give a file name, e.g. results.json")
    output_dir(path.parent, f"{what}'s folder", create=False)
    return path
