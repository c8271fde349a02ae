"""Which face model an identity's embeddings come from, and the checks that keep them in one space.

Embeddings of different recognisers live in unrelated spaces (encoder.face_analysis, "The face
model"), so the identity module, the identity record and the face pack each carry a `face_model`
block and the commands compare them before any heavy work:

    train.py   pick_face_pack: the pack the identity module was pretrained with (unless --face-pack),
               then check_pack: the module's block against the loaded pack's
    sample.py  check_record: the module's block against the record's

A mismatch raises FaceModelMismatch naming both models and the pack to install; `allow` (the
commands' --allow-face-model-mismatch, for experiments) turns it into a warning. A module or record
written before the blocks existed still works, with a warning. The checks return their warnings;
the commands print them.
"""

from __future__ import annotations

from pathlib import Path

from encoder.face_analysis import FaceModelMismatch, describe_face_model, face_model_mismatch
from encoder.identity import read_metadata
from models.paths import FACE_PACKS, WeightsError, find_face_pack

ALLOW_FLAG = "--allow-face-model-mismatch"
UNRELATED = "embeddings of different recognisers live in unrelated spaces, so the identity would be lost"


def module_face_model(encoder: Path | None) -> dict | None:
    """The face_model block of a saved identity module (None: no module, or one exported before the block)."""
    return None if encoder is None else read_metadata(encoder).get("face_model")


def pick_face_pack(explicit: str | None, module_block: dict | None, encoder: Path | None,
                   root: str | None = None) -> tuple[Path, str]:
    """(pack folder, why this one): --face-pack when given; else the pack the identity module was
    pretrained with, from the weights folder; else the first of FACE_PACKS found there."""
    if explicit:
        return find_face_pack(path=explicit), "given with --face-pack"
    if module_block and module_block.get("pack"):
        name = module_block["pack"]
        try:
            return find_face_pack(name, root=root), f"the pack the identity module {encoder} was pretrained with"
        except WeightsError as e:
            raise WeightsError(f"the identity module {encoder} was pretrained on embeddings of "
                               f"{describe_face_model(module_block)}; {e}",
                               hint=f"install the {name} pack, or pass another with --face-pack and "
                                    f"{ALLOW_FLAG} (experiments only)") from e
    why = "no identity module" if encoder is None else f"the identity module {encoder} records no face model"
    return find_face_pack(root=root), f"the first of {', '.join(FACE_PACKS)} found ({why})"


def _compare(expected: dict | None, found: dict | None, message: str, hint: str, allow: bool) -> list[str]:
    diff = face_model_mismatch(expected, found) if expected and found else []
    if not diff:
        return []
    message = f"{message} ({'; '.join(diff)}): {UNRELATED}"
    if not allow:
        raise FaceModelMismatch(message, hint=f"{hint}; {ALLOW_FLAG} runs anyway (experiments only)")
    return [f"{message}. Going on because of {ALLOW_FLAG}."]


def check_pack(module_block: dict | None, pack_block: dict, *, encoder: Path | None, pack_dir: Path,
               allow: bool = False) -> list[str]:
    """train.py: the identity module's face model against the loaded pack's; the warnings to print."""
    if encoder is None:
        return []
    if module_block is None:
        return [f"the identity module {encoder} records no face model (exported before modules carried one): "
                f"cannot check that the face pack {pack_dir} is the one it was pretrained with"]
    pack = module_block.get("pack") or "its"
    return _compare(module_block, pack_block,
                    f"the identity module {encoder} was pretrained on embeddings of {describe_face_model(module_block)}"
                    f", but the face pack {pack_dir} is {describe_face_model(pack_block)}",
                    f"install the {pack} pack (checkpoints/{pack}/, see checkpoints/README.md) and leave --face-pack "
                    "out, or pass its folder with --face-pack", allow)


def check_record(module_block: dict | None, record_block: dict | None, *, encoder: Path | None,
                 record_dir: str | Path, allow: bool = False) -> list[str]:
    """sample.py: the identity module's face model against the record's; the warnings to print."""
    if encoder is None:  # an untrained module (testing): its zero gates ignore the embeddings
        return []
    warnings = []
    if record_block is None:
        warnings.append(f"the identity record {record_dir} records no face model (written before records carried "
                        "one): rerun train.py to have it checked against the identity module")
    if module_block is None:
        warnings.append(f"the identity module {encoder} records no face model (exported before modules carried one)"
                        ": the record's embeddings cannot be checked against it")
    pack = (module_block or {}).get("pack") or "the module's"
    return warnings + _compare(
        module_block, record_block,
        f"the identity record {record_dir} holds embeddings of {describe_face_model(record_block)}, but the identity "
        f"module {encoder} was pretrained on embeddings of {describe_face_model(module_block)}",
        f"rerun train.py with the {pack} pack (checkpoints/{pack}/, see checkpoints/README.md) so that the record "
        "matches the module, or pass the module the record was made for with --encoder", allow)
