"""The shard format: one webdataset sample per usable photo, every feature precomputed.

A shard is a plain (uncompressed) tar, readable by `webdataset.WebDataset` and by `pretrain.data`.
Members of sample `<key>` (shapes at full size; h = w = resolution / 8):

    <key>.moments.npy       float16 [8, h, w]   VAE moments (mean, log-variance) of the square crop
    <key>.text.npy          float16 [77, 64]    CLIP-L text features through encode_prefix
    <key>.clip.npy          float32 [512]       ViT-B/32 image embedding of the crop (not normalised)
    <key>.arcface.npy       float32 [512]       ArcFace embedding (L2-normalised) of the aligned face
    <key>.arcface_flip.npy  float32 [512]       same for the mirrored aligned face
    <key>.arcface_aug.npy   float32 [512]       same for an augmented view of the aligned face
                                                (data_prep.augment; format version 2 on, readers
                                                of older shards fall back to arcface)
    <key>.box.npy           float32 [4]         face box x1, y1, x2, y2 in latent pixels (0..w)
    <key>.txt               utf-8               the caption
    <key>.json              utf-8 JSON          identity (or null), source key, detection score, number
                                                of faces, face box in crop pixels, crop in the original,
                                                original size
    <key>.jpg               (optional)          the crop at `resolution`, with --save-jpg

Keys contain no dots (webdataset splits member names at the first dot).
"""

from __future__ import annotations

import io
import json
import re

import numpy as np

FORMAT_NAME = "unidiffuser-faceid-shards"
FORMAT_VERSION = 2  # 2: arcface_aug
ARRAY_MEMBERS = {  # name -> dtype
    "moments": np.float16, "text": np.float16, "clip": np.float32, "arcface": np.float32,
    "arcface_flip": np.float32, "arcface_aug": np.float32, "box": np.float32,
}
REQUIRED = [f"{name}.npy" for name in ARRAY_MEMBERS] + ["json"]


class CorruptSample(ValueError):
    """A shard member is missing or cannot be decoded. The loaders skip and count such samples: an
    internal signal, not a UserError."""


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def npy_array(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def safe_key(text: str, index: int) -> str:
    """A unique sample key: the item's index in the source plus a readable tail of its source key."""
    tail = re.sub(r"[^A-Za-z0-9_-]+", "_", text)[-48:].strip("_")
    return f"{index:09d}_{tail}" if tail else f"{index:09d}"


def encode_sample(key: str, arrays: dict[str, np.ndarray], caption: str, meta: dict,
                  jpg: bytes | None = None) -> dict[str, bytes | str]:
    """Feature arrays + caption + metadata -> the member dict `webdataset.TarWriter` writes."""
    if "." in key:
        raise ValueError(f"sample key {key!r} must not contain a dot")
    sample: dict[str, bytes | str] = {"__key__": key}
    for name, dtype in ARRAY_MEMBERS.items():
        sample[f"{name}.npy"] = npy_bytes(np.asarray(arrays[name]).astype(dtype, copy=False))
    sample["txt"] = caption.encode("utf-8")
    sample["json"] = json.dumps(meta, sort_keys=True).encode("utf-8")
    if jpg is not None:
        sample["jpg"] = jpg
    return sample


def decode_meta(members: dict[str, bytes]) -> dict:
    """The sample's JSON metadata; CorruptSample if missing or unreadable."""
    try:
        meta = json.loads(members["json"])
    except KeyError as e:
        raise CorruptSample("missing member json") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptSample(f"bad json member ({e})") from e
    if not isinstance(meta, dict):
        raise CorruptSample("json member is not an object")
    return meta


def decode_arrays(members: dict[str, bytes], names=tuple(ARRAY_MEMBERS)) -> dict[str, np.ndarray]:
    """The named arrays with their format dtypes; CorruptSample for a missing or undecodable one."""
    out = {}
    for name in names:
        data = members.get(f"{name}.npy")
        if data is None:
            raise CorruptSample(f"missing member {name}.npy")
        try:
            a = npy_array(data)
        except (ValueError, OSError, EOFError) as e:
            raise CorruptSample(f"undecodable {name}.npy ({e})") from e
        if a.dtype != ARRAY_MEMBERS[name]:
            raise CorruptSample(f"{name}.npy has dtype {a.dtype}, expected {np.dtype(ARRAY_MEMBERS[name])}")
        out[name] = a
    return out
