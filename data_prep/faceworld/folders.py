"""Competition-style test data from the face world: photo folders and prompt files.

    DIR/<name>/000.jpg ...                 K portraits of one person (images only, as a user's folder)
    DIR/eval_prompts/<name>.json           every prompt (reproduction, then editing): a JSON list of strings
    DIR/eval_prompts/<name>_sim.json       reproduction prompts ("a photo of a boy")
    DIR/eval_prompts/<name>_edit.json      editing prompts ("a boy wearing sunglasses, under the sea")
    DIR/faceworld.json                     for scoring only: seed, identity indices, class words, each
                                           photo's render index and attributes, each prompt's attributes

Names are the class word and a running number per class word (boy1, girl1, man1, man2, ...).
Photos are renders 0..K-1 of the person in "portrait" mode (mostly photos, some hats, glasses,
places and expressions). Edit prompts are drawn per person from (seed, identity); the first two of
each person are HELD_OUT pairs (cycling through all of them over the people), the others change one
to three attributes.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.faceworld.attributes import (
    ATTRIBUTES,
    CLASS_WORDS,
    HELD_OUT,
    caption,
    held_out_pairs_in,
    parse_caption,
    split_range,
)
from data_prep.faceworld.hashing import STREAM_PROMPTS, hash_bits
from data_prep.faceworld.identity import identity_params
from data_prep.faceworld.render import FaceWorld
from models.atomic import write_json_atomic
from models.errors import UserError

SIM_PROMPTS = ("a photo of a {w}", "a {w}", "a close-up photo of a {w}")
EDITABLE = ("scene", "hat", "glasses", "clothing", "expression", "style")
SIDE_FILE = "faceworld.json"
PROMPTS_DIR = "eval_prompts"


class FolderError(UserError, ValueError):
    """The render folders cannot be written as asked (the message says why)."""


@dataclass(frozen=True)
class Person:
    name: str
    identity: int
    class_word: str


def name_people(seed: int, identities: np.ndarray) -> list[Person]:
    """Class word + running number per class word, in the order given."""
    words = identity_params(seed, identities).class_words
    counts = dict.fromkeys(CLASS_WORDS, 0)
    people = []
    for i, w in zip(identities, words):
        counts[w] += 1
        people.append(Person(f"{w}{counts[w]}", int(i), w))
    return people


def _prompt_rng(seed: int, identity: int) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(key=int(hash_bits(seed, STREAM_PROMPTS, identity, 0, 1)[0, 0])))


def edit_prompts(seed: int, person: Person, n: int, position: int) -> list[tuple[str, dict]]:
    """n (prompt, stated attributes) pairs for `person`; position (the person's number in the run)
    chooses which HELD_OUT pairs come first."""
    rng = _prompt_rng(seed, person.identity)
    out = []
    for k in range(n):
        if k < 2:
            pair = HELD_OUT[(2 * position + k) % len(HELD_OUT)]
            attrs: dict = dict(pair)
            if "hat_color" in attrs and "hat" not in attrs:
                attrs["hat"] = ATTRIBUTES["hat"][1 + int(rng.integers(len(ATTRIBUTES["hat"]) - 1))]
        else:
            names = rng.choice(EDITABLE, size=int(rng.integers(1, 4)), replace=False)
            attrs = {}
            for name in names:
                values = [v for v in ATTRIBUTES[name] if v not in ("none", "photo")]
                attrs[name] = values[int(rng.integers(len(values)))]
            if "hat" in attrs and rng.random() < 0.6:
                attrs["hat_color"] = ATTRIBUTES["hat_color"][int(rng.integers(len(ATTRIBUTES["hat_color"])))]
        text = caption(attrs, person.class_word, rng, mention=set(attrs), generic_hat_p=0.0)
        out.append((text, parse_caption(text)))
    return out


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        Image.fromarray(image).save(buf, format="JPEG", quality=95)
    else:
        Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_folders(out: str | Path, *, seed: int, identities: int, photos: int, split: str = "test", first: int = 0,
                  size: int = 64, edits: int = 6, fmt: str = "jpg", device: str = "cpu",
                  progress: bool = True, version: str | None = None) -> dict:
    """Render the photo folders, prompt files and side file into `out` (which must be empty or absent), in the
    renderer `version` (default: the version in force, render.renderer_version).

    Returns the side file's content.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FolderError(f"{out} exists and is not an empty folder", hint="choose a new --out")
    if identities < 1 or photos < 1 or edits < 0:
        raise FolderError("--identities and --photos must be at least 1, --edits at least 0")
    if fmt not in ("jpg", "png"):
        raise FolderError(f"--format must be jpg or png, got {fmt!r}")
    lo, hi = split_range(split)
    if first < 0 or lo + first + identities > hi:
        raise FolderError(f"identities {first}..{first + identities - 1} do not fit the {split} split "
                         f"({hi - lo} identities)")
    world = FaceWorld(seed, size=size, device=device, version=version)
    index = np.arange(lo + first, lo + first + identities, dtype=np.int64)
    people = name_people(seed, index)
    (out / PROMPTS_DIR).mkdir(parents=True, exist_ok=True)
    side = {"format": "faceworld-folders", "renderer": world.version, "seed": int(seed), "split": split,
            "size": size, "photos": photos, "command": " ".join(sys.argv), "people": []}
    for pos, person in enumerate(tqdm(people, desc="faceworld people", unit="person", disable=not progress)):
        batch = world.render(np.full(photos, person.identity), np.arange(photos), mode="portrait", mention="all")
        tmp = out / f".{person.name}.tmp"  # the folder appears complete or not at all
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        images = batch.images.cpu().numpy()
        record = {"name": person.name, "identity": person.identity, "class_word": person.class_word, "photos": []}
        for k in range(photos):
            name = f"{k:03d}.{fmt}"
            (tmp / name).write_bytes(_encode(images[k], fmt))
            record["photos"].append({"file": f"{person.name}/{name}", "render": k, "attributes": batch.attributes[k]})
        os.replace(tmp, out / person.name)
        sim = [(t.format(w=person.class_word), parse_caption(t.format(w=person.class_word))) for t in SIM_PROMPTS]
        edit = edit_prompts(seed, person, edits, pos)
        record["prompts"] = {
            "sim": [{"text": t, "attributes": a} for t, a in sim],
            "edit": [{"text": t, "attributes": a, "held_out": [list(x) for p in held_out_pairs_in(a) for x in p]}
                     for t, a in edit],
        }
        _write_prompts(out / PROMPTS_DIR / f"{person.name}_sim.json", [t for t, _ in sim])
        _write_prompts(out / PROMPTS_DIR / f"{person.name}_edit.json", [t for t, _ in edit])
        _write_prompts(out / PROMPTS_DIR / f"{person.name}.json", [t for t, _ in sim + edit])
        side["people"].append(record)
    write_json_atomic(out / SIDE_FILE, side, indent=1, sort_keys=True)
    return side


def _write_prompts(path: Path, prompts: list[str]) -> None:
    """A temporary file renamed over `path`: readers never see half a file (the side file, written
    last with fsync, marks the whole output as complete)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(prompts, indent=1))
    os.replace(tmp, path)
