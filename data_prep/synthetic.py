"""Synthetic shards: the real format and shapes, random contents, no models or photos needed.

For benchmarks and smoke runs of pretraining (a full-size run on a random-weight backbone) and for
tests. Each of `identities` people has a fixed random ArcFace direction and a latent pattern; their
photos are noisy copies, so the identity module has something to learn. A photo's augmented view
(arcface_aug) is its embedding plus a little noise. --unlabelled leaves the identity labels out
(as a LAION-Face-style corpus; the person of sample i is still i // ceil(samples / identities)).

    python -m data_prep.synthetic --out /tmp/shards --samples 4096 --shard-size 256 --identities 64
    python -m data_prep.synthetic --out runs/tiny-shards --samples 64 --shard-size 16 --uvit pretrain/configs/tiny.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from data_prep.format import ARRAY_MEMBERS, encode_sample
from data_prep.shards import SHARD_STATS, SHARD_TAR, write_json, write_manifest, write_shard


def shapes_for(uvit_config) -> dict[str, tuple]:
    """Shard array shapes for a models.uvit.UViTConfig."""
    c = uvit_config
    return {"moments": (2 * c.in_chans, c.img_size, c.img_size), "text": (c.num_text_tokens, c.text_dim),
            "clip": (c.clip_img_dim,), "arcface": (512,), "arcface_flip": (512,), "arcface_aug": (512,),
            "box": (4,)}


class SyntheticPeople:
    """Deterministic random people: photo(i, k) -> (arrays, caption, meta) of person i's k-th photo."""

    def __init__(self, shapes: dict[str, tuple], identities: int, seed: int = 0):
        self.shapes, self.seed = shapes, seed
        rng = np.random.default_rng([seed, 0])
        self.direction = rng.standard_normal((identities, 512)).astype(np.float32)
        c, h, w = shapes["moments"][0] // 2, *shapes["moments"][1:]
        self.pattern = rng.standard_normal((identities, c, h, w)).astype(np.float32)

    def photo(self, person: int, index: int, labelled: bool = True) -> tuple[dict[str, np.ndarray], str, dict]:
        rng = np.random.default_rng([self.seed, 1, index])
        unit = lambda v: (v / np.linalg.norm(v)).astype(np.float32)  # noqa: E731
        emb = unit(self.direction[person] + 0.5 * rng.standard_normal(512))
        flip = unit(emb + 0.1 * rng.standard_normal(512))
        c, h, w = self.shapes["moments"][0] // 2, *self.shapes["moments"][1:]
        mean = 5.0 * (self.pattern[person] + 0.5 * rng.standard_normal((c, h, w)))
        logvar = np.full((c, h, w), -8.0, np.float32)
        side = rng.uniform(0.3, 0.6) * w
        x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
        arrays = {"moments": np.concatenate([mean, logvar]).astype(np.float16),
                  "text": rng.standard_normal(self.shapes["text"]).astype(np.float16),
                  "clip": rng.standard_normal(self.shapes["clip"]).astype(np.float32),
                  "arcface": emb, "arcface_flip": flip,
                  "box": np.array([x0, y0, x0 + side, y0 + side], np.float32)}
        arrays["arcface_aug"] = unit(emb + 0.03 * rng.standard_normal(512))  # drawn last: the rest is unchanged
        meta = {"identity": f"person{person:05d}" if labelled else None, "source_key": f"synthetic/{index}",
                "det_score": 1.0, "n_faces": 1}
        return arrays, f"a photo of person {person}", meta


def write_synthetic(out: str | Path, *, samples: int, shard_size: int, identities: int, shapes: dict[str, tuple],
                    seed: int = 0, labelled: bool = True, progress: bool = True) -> dict:
    """Shards + counts files + manifest.json in `out` (same layout as `python -m data_prep`).

    Photos of one person are consecutive (as a folder-per-person corpus), which identity pairing likes.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    people = SyntheticPeople(shapes, identities, seed)
    per_person = max(1, math.ceil(samples / identities))
    t0 = time.time()
    n_shards = math.ceil(samples / shard_size)
    for i in tqdm(range(n_shards), desc="synthetic shards", unit="shard", disable=not progress):
        start, stop = i * shard_size, min((i + 1) * shard_size, samples)

        def members(start=start, stop=stop):
            for index in range(start, stop):
                arrays, caption, meta = people.photo(index // per_person, index, labelled)
                yield encode_sample(f"{index:09d}", arrays, caption, meta)

        written = write_shard(out / SHARD_TAR.format(i), members())
        write_json(out / SHARD_STATS.format(i), {"shard": SHARD_TAR.format(i), "items": [start, stop],
                                                        "input": stop - start, "written": written, "rejected": {},
                                                        "seconds": 0.0})
    settings = {"source": {"kind": "synthetic", "identities": identities, "seed": seed, "labelled": labelled},
                "items": samples,
                "shard_size": shard_size, "prep": {}, "models": {}}
    shape_info = {k: {"shape": list(v), "dtype": ARRAY_MEMBERS[k].__name__} for k, v in shapes.items()}
    return write_manifest(out, settings, shape_info, time.time() - t0)


def main(argv: list[str] | None = None) -> int:
    from models.uvit import UViTConfig

    p = argparse.ArgumentParser(prog="python -m data_prep.synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--identities", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unlabelled", action="store_true", help="no identity labels in the samples' metadata")
    p.add_argument("--uvit", help="UViTConfig fields as JSON, or a pretraining config file whose \"uvit\" "
                                  "field is used (e.g. pretrain/configs/tiny.json); default v1: 512x512 images")
    args = p.parse_args(argv)
    uvit = None
    if args.uvit:
        path = Path(args.uvit)
        uvit = json.loads(path.read_text()).get("uvit") if path.is_file() else json.loads(args.uvit)
    shapes = shapes_for(UViTConfig.from_dict(uvit) if uvit else UViTConfig.v1())
    m = write_synthetic(args.out, samples=args.samples, shard_size=args.shard_size, identities=args.identities,
                        shapes=shapes, seed=args.seed, labelled=not args.unlabelled)
    shapes_text = ", ".join(f"{k} {v['shape']}" for k, v in m["shapes"].items())
    print(f"{args.out}: {len(m['shards'])} shards, {m['totals']['written']} samples, "
          f"{args.identities} identities; shapes {shapes_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
