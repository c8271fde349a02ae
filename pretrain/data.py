"""Streaming the shards: shuffled, split per rank and worker, paired by identity, exactly resumable.

Each (rank, DataLoader worker) owns a disjoint share of the shards and loops over them forever:

    epoch e: all shards in a seeded permutation -> [rank::world] -> [worker::workers]
             -> groups of `shards_per_group` shards, one after the other; within a group:
                the shards read round-robin -> shuffle buffer -> identity pairing -> decode -> batches

Conditioning. The face that conditions a sample is, in this order of preference:
  paired     another photo of the same person. With an identity label in the sample's metadata: one
             seen earlier in the group (a per-identity reservoir of `reservoir_size` faces), so
             corpora sorted by person (a folder source with --identity-from-folder) pair best.
             Without one, when the shard folder was clustered (`python -m data_prep cluster`,
             data_prep.cluster.IdentityClusters): another face of the sample's cluster, from the
             whole corpus.
  augmented  the embedding of an augmented view of its own face (member arcface_aug, see
             data_prep.augment): a person's first photo in a group, faces in no cluster.
  self       its own embedding, only for shards written before arcface_aug existed.
Each worker counts the three (`conditioning_fractions` turns the counts into fractions).

Exact resume. Everything random inside a group comes from a generator seeded by (seed, epoch, rank,
worker, group), and the shuffle buffer and reservoir start empty at every group. So a worker's
position is just (epoch, group, items of the group already emitted): on resume it replays the group
up to that item (reading headers and the small ArcFace members only) and goes on; cluster mates are
drawn from the same generator, so they replay too. Each batch carries
its worker's position; the training loop keeps the positions of the batches it consumed and the
worker whose batch comes next (`ordered`) restores the interleaving of the workers.

Corrupt members (a member that is missing or does not decode, a damaged tar) skip their sample,
are counted per worker (`corrupt`) and never stop training. A damaged shard (cut off, or ending
before the sample count data_prep recorded for it) is also named, with the samples lost, in the
`damaged` list of the worker's next batch, which the training loop logs.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import signal
import tarfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_prep.cluster import IdentityClusters
from data_prep.format import FORMAT_NAME, CorruptSample, decode_arrays, decode_meta
from data_prep.sources import tar_samples
from encoder.face_analysis import describe_face_model, face_model_mismatch
from models.errors import UserError

logger = logging.getLogger(__name__)

CONDITIONING = ("paired", "augmented", "self")  # what a sample can be conditioned on (module docstring)


class DataError(UserError, ValueError):
    """The shards cannot be used with this configuration; the message says what to do."""


# ------------------------------------------------------------------------------------ shard lists
def list_shards(spec: str) -> list[Path]:
    """Shard paths from: a shard folder (its manifest.json's non-empty shards, else its *.tar), a glob,
    a brace pattern, or several of these separated by commas."""
    paths: list[Path] = []
    for part in [s.strip() for s in str(spec).split(",") if s.strip()]:
        p = Path(part).expanduser()
        if p.is_dir():
            manifest = p / "manifest.json"
            if manifest.is_file():
                m = json.loads(manifest.read_text())
                if m.get("format") != FORMAT_NAME:
                    raise DataError(f"{manifest} is not a data_prep manifest (format {m.get('format')!r})")
                if not m.get("complete", True):
                    logger.warning("%s: data_prep did not finish (%d shards missing); using the finished ones",
                                   p, len(m.get("missing", [])))
                paths += [p / s["name"] for s in m["shards"] if s["samples"] > 0]
            else:
                paths += sorted(p.glob("*.tar"))
        elif "{" in part:
            from braceexpand import braceexpand

            paths += [Path(s).expanduser() for s in braceexpand(part)]
        else:
            paths += sorted(Path(s) for s in glob.glob(os.path.expanduser(part)))
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} shard(s) of {spec!r} do not exist, e.g. {missing[0]}")
    if not paths:
        raise DataError(f"no shards found for {spec!r}: give a data_prep output folder, a glob or a brace "
                        "pattern of .tar files (write shards with `python -m data_prep`)")
    return paths


def shards_face_model(shards: list[Path]) -> dict | None:
    """The face model the shards' embeddings come from: the `face_model` block of their folders'
    manifests (encoder.face_analysis), None when no folder records one (synthetic shards, or shards
    written before the block existed: a warning). DataError when two folders record different ones."""
    blocks: list[tuple[str, dict]] = []
    unrecorded: list[str] = []
    for folder in sorted({p.parent for p in shards}):
        manifest = folder / "manifest.json"
        block = json.loads(manifest.read_text()).get("face_model") if manifest.is_file() else None
        if block is None:
            unrecorded.append(str(folder))
        else:
            blocks.append((str(folder), block))
    for folder, block in blocks[1:]:
        if diff := face_model_mismatch(blocks[0][1], block):
            raise DataError(f"the shards mix face models: {blocks[0][0]} holds embeddings of "
                            f"{describe_face_model(blocks[0][1])}, {folder} of {describe_face_model(block)} "
                            f"({'; '.join(diff)}); embeddings of different recognisers live in unrelated spaces",
                            hint="pretrain on shards of one face pack (rerun data_prep with the same --face-pack)")
    if unrecorded:
        logger.warning("%s: no face_model in the manifest (synthetic shards, or written before data_prep recorded "
                       "it): the exported module cannot say which face model it was trained for",
                       ", ".join(unrecorded))
    return blocks[0][1] if blocks else None


def recorded_counts(shards: list[Path]) -> dict[Path, int]:
    """Samples per shard as data_prep recorded them: its folder's manifest.json, else the shard's own
    counts file (shard-<i>.json beside the tar). Shards with no record are left out."""
    counts: dict[Path, int] = {}
    for folder in sorted({p.parent for p in shards}):
        manifest = _json_or_none(folder / "manifest.json")
        if isinstance(manifest, dict) and manifest.get("format") == FORMAT_NAME:
            counts.update({folder / s["name"]: int(s["samples"]) for s in manifest.get("shards", [])})
    for p in shards:
        stats = _json_or_none(p.with_suffix(".json")) if p not in counts else None
        if isinstance(stats, dict) and stats.get("shard") == p.name and "written" in stats:
            counts[p] = int(stats["written"])
    return counts


def _json_or_none(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Damaged:
    """Where a shard breaks off, in the raw stream: `read` samples came out whole before it, `lost`
    of the samples recorded for the shard did not (None when no count was recorded)."""

    path: Path
    read: int
    lost: int | None
    reason: str

    @property
    def message(self) -> str:
        lost = (f"{self.lost} sample(s) lost" if self.lost is not None
                else "the rest of it lost (no data_prep count beside it says how many)")
        stats = self.path.with_suffix(".json")
        redo = (f"delete {stats.name} beside it and rerun data_prep with the same --out to rewrite it"
                if stats.is_file() else "rewrite it with data_prep, or remove it")
        return (f"damaged shard {self.path.name} ({self.path}): {self.reason} after {self.read} whole "
                f"sample(s), {lost}; training goes on without them. To fix: {redo}")


def read_shard(path: Path, recorded: int | None = None) -> Iterator[dict | Damaged]:
    """Raw samples {"__key__", "__url__" (the tar's path), "<ext>": bytes, ...} of one tar, in order; a
    Damaged item where it breaks off, or at its end when it holds fewer samples than the `recorded`
    count (a tar cut off at a member boundary reads as a shorter tar)."""
    read = 0
    try:
        for key, members in tar_samples(path):
            yield {"__key__": key, "__url__": str(path), **members}
            read += 1
    except (tarfile.TarError, OSError, EOFError) as e:
        lost = None if recorded is None else max(recorded - read, 0)
        yield Damaged(Path(path), read, lost, f"unreadable ({type(e).__name__}: {e})")
        return
    if recorded is not None and read < recorded:
        yield Damaged(Path(path), read, recorded - read, f"it ends early ({recorded} samples recorded)")


# --------------------------------------------------------------------------------------- the stream
def _interleave(streams: list[Iterator]) -> Iterator:
    """Round-robin over several iterators until all are exhausted."""
    active = deque(streams)
    while active:
        it = active.popleft()
        try:
            item = next(it)
        except StopIteration:
            continue
        yield item
        active.append(it)


def _shuffled(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """A shuffle buffer of `size` (1 = no shuffling)."""
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        yield buf[j]
        buf[j] = item
    while buf:
        yield buf.pop(int(rng.integers(len(buf))))


class ShardStream(IterableDataset):
    """Infinite stream of collated batches (see the module docstring).

    Batch: moments float16 [B, 2C, h, w], text float16 [B, L, Dt], clip float32 [B, Dc],
    face / face_flip float32 [B, 512] (the conditioning photo's ArcFace embeddings), box float32
    [B, 4] (latent pixels), paired / augmented bool [B] (how the face was chosen; neither = self),
    keys list[str], state dict (worker position and counters), damaged list[str] (a message per damaged
    shard met since the worker's previous batch; each shard is named once per worker).
    shapes: expected array shapes {"moments": (2C, h, w), "text": (L, Dt), "clip": (Dc,)}; a sample
    that differs counts as corrupt. clusters: {shard folder as str: IdentityClusters} (load_clusters).
    """

    def __init__(self, shards: list[Path], *, batch_size: int, shapes: dict[str, tuple], rank: int = 0,
                 world: int = 1, seed: int = 0, shuffle_buffer: int = 1000, shards_per_group: int = 4,
                 pair_identities: bool = True, reservoir_size: int = 8, start: dict[int, dict] | None = None,
                 clusters: dict[str, IdentityClusters] | None = None):
        super().__init__()
        self.shards = [Path(s) for s in shards]
        self.batch_size, self.shapes = batch_size, {k: tuple(v) for k, v in shapes.items()}
        self.rank, self.world, self.seed = rank, world, seed
        self.shuffle_buffer, self.shards_per_group = max(1, shuffle_buffer), max(1, shards_per_group)
        self.pair_identities, self.reservoir_size = pair_identities, max(1, reservoir_size)
        self.start = {int(k): dict(v) for k, v in (start or {}).items()}
        self.clusters = clusters or {}
        self.recorded = recorded_counts(self.shards)

    def groups(self, epoch: int, worker: int, workers: int) -> list[list[Path]]:
        """This worker's shard groups in `epoch`."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        mine = [self.shards[i] for i in order[self.rank::self.world][worker::workers]]
        if not mine:
            raise DataError(too_few_shards(len(self.shards), self.world, workers))
        g = self.shards_per_group
        return [mine[i:i + g] for i in range(0, len(mine), g)]

    def _paired(self, raws: Iterator, rng: np.random.Generator) -> Iterator:
        """raw -> (raw, face, face_flip, how), None (corrupt) or Damaged (passed on); how in
        CONDITIONING. The identity reservoir, cluster mates, augmented views."""
        bank: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        seen: dict[str, int] = {}
        for raw in raws:
            if isinstance(raw, Damaged):
                yield raw
                continue
            try:
                meta = decode_meta(raw)
                own = tuple(decode_arrays(raw, ("arcface", "arcface_flip")).values())
            except CorruptSample:
                yield None
                continue
            ident = meta.get("identity") if self.pair_identities else None
            face, how = own, "self"
            if ident is not None:
                ident = str(ident)
                refs = bank.setdefault(ident, [])
                if refs:
                    face, how = refs[int(rng.integers(len(refs)))], "paired"
                seen[ident] = n = seen.get(ident, 0) + 1
                if len(refs) < self.reservoir_size:
                    refs.append(own)
                else:
                    j = int(rng.integers(n))
                    if j < self.reservoir_size:
                        refs[j] = own
            elif self.pair_identities and (clusters := self.clusters.get(str(Path(raw["__url__"]).parent))):
                if (mate := clusters.mate(raw["__key__"], rng)) is not None:
                    face, how = mate, "paired"
            if how == "self" and "arcface_aug.npy" in raw:
                try:
                    aug = decode_arrays(raw, ("arcface_aug",))["arcface_aug"]
                except CorruptSample:
                    yield None
                    continue
                face, how = (aug, aug), "augmented"  # one view: it stands for the mirrored one too
            yield raw, face[0], face[1], how

    def group_items(self, shards: list[Path], rng: np.random.Generator) -> Iterator:
        raws = _interleave([read_shard(p, self.recorded.get(p)) for p in shards])
        return self._paired(_shuffled(raws, self.shuffle_buffer, rng), rng)

    def _decode(self, item) -> dict | None:
        if item is None or isinstance(item, Damaged):
            return None
        raw, face, face_flip, how = item
        try:
            arrays = decode_arrays(raw, ("moments", "text", "clip", "box"))
        except CorruptSample:
            return None
        if any(arrays[k].shape != shape for k, shape in self.shapes.items()) or arrays["box"].shape != (4,):
            return None
        return {**arrays, "face": face, "face_flip": face_flip, "how": how, "key": raw["__key__"]}

    def _collate(self, samples: list[dict], state: dict, damaged: list[str] | None = None) -> dict:
        batch = {k: torch.from_numpy(np.stack([s[k] for s in samples]))
                 for k in ("moments", "text", "clip", "face", "face_flip", "box")}
        batch["paired"] = torch.tensor([s["how"] == "paired" for s in samples])
        batch["augmented"] = torch.tensor([s["how"] == "augmented" for s in samples])
        batch["keys"] = [s["key"] for s in samples]
        batch["state"] = dict(state)
        batch["damaged"] = list(damaged or [])
        return batch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        st = {"worker": worker, "epoch": 0, "group": 0, "offset": 0, "samples": 0, "corrupt": 0,
              **dict.fromkeys(CONDITIONING, 0)}
        st.update(self.start.get(worker, {}))
        st["worker"] = worker
        resumed_epoch = self.start.get(worker, {}).get("epoch")  # may legitimately end without a sample
        batch: list[dict] = []
        damaged: list[str] = []  # messages not sent with a batch yet
        told: set[str] = set()  # each damaged shard is named once per worker
        while True:
            groups = self.groups(st["epoch"], worker, workers)
            samples_before = st["samples"]
            while st["group"] < len(groups):
                rng = np.random.default_rng([self.seed, st["epoch"], self.rank, worker, st["group"]])
                for k, item in enumerate(self.group_items(groups[st["group"]], rng)):
                    if k < st["offset"]:
                        continue  # replaying up to the resume position
                    st["offset"] = k + 1
                    sample = self._decode(item)
                    if sample is None:
                        st["corrupt"] += 1
                        if isinstance(item, Damaged) and item.message not in told:
                            told.add(item.message)
                            damaged.append(item.message)
                        continue
                    st["samples"] += 1
                    st[sample["how"]] += 1
                    batch.append(sample)
                    if len(batch) == self.batch_size:
                        yield self._collate(batch, st, damaged)
                        batch, damaged = [], []
                st["group"] += 1
                st["offset"] = 0
            if st["samples"] == samples_before and st["epoch"] != resumed_epoch:
                raise DataError(f"worker {worker} of rank {self.rank} read no usable sample in a whole pass over "
                                f"{sum(len(g) for g in groups)} shards (all corrupt, or made for another "
                                f"backbone); check them with webdataset or rerun data_prep")
            st["epoch"] += 1
            st["group"] = 0


def conditioning_fractions(states) -> dict[str, float]:
    """Workers' states (batch["state"]) -> {"paired", "augmented", "self"}: fraction of their samples
    conditioned on a real pair, on an augmented view, on their own embedding (0 before any sample)."""
    states = list(states)
    seen = max(sum(s["samples"] for s in states), 1)
    return {how: sum(s.get(how, 0) for s in states) / seen for how in CONDITIONING}


def load_clusters(shards: list[Path]) -> dict[str, IdentityClusters]:
    """{shard folder: IdentityClusters} for every folder of `shards` that `python -m data_prep cluster`
    labelled; DataError when a folder's clusters were made for other shards."""
    out = {}
    for folder in sorted({str(p.parent) for p in shards}):
        try:
            clusters = IdentityClusters.of_folder(folder)
        except ValueError as e:
            raise DataError(str(e)) from e
        if clusters is not None:
            out[folder] = clusters
    return out


def too_few_shards(shards: int, world: int, workers: int) -> str | None:
    """The error message when some (rank, worker) would get no shard, else None."""
    if shards >= world * workers:
        return None
    return (f"{shards} shards cannot feed {world} ranks x {workers} workers: write more, smaller shards "
            "(data_prep --shard-size) or use fewer --num_workers")


def ordered(batches: Iterator[dict], workers: int, first: int = 0) -> Iterator[dict]:
    """Re-interleave a DataLoader's batches so that worker `first` comes first, then first + 1, ...

    A DataLoader always starts its round-robin at worker 0; a resumed run must continue with the
    worker whose batch was next. At most workers - 1 batches are held back.
    """
    pending: dict[int, deque] = {w: deque() for w in range(workers)}
    want = first % workers
    for b in batches:
        pending[b["state"]["worker"]].append(b)
        while pending[want]:
            yield pending[want].popleft()
            want = (want + 1) % workers


def _ignore_ctrl_c(worker: int) -> None:
    """DataLoader worker init: Ctrl-C is the training loop's (it stops after the step, with a
    checkpoint); a worker that died of it would fail the batches the loop still takes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(stream: ShardStream, num_workers: int, *, pin_memory: bool = False,
                first_worker: int = 0) -> Iterator[dict]:
    """The stream through a DataLoader (batches are built in the workers), in resume order."""
    loader = DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                        persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None,
                        worker_init_fn=_ignore_ctrl_c if num_workers > 0 else None)
    return ordered(iter(loader), max(num_workers, 1), first_worker)


def expected_shapes(uvit_config) -> dict[str, tuple]:
    """The array shapes a shard must hold for this backbone."""
    c = uvit_config
    return {"moments": (2 * c.in_chans, c.img_size, c.img_size), "text": (c.num_text_tokens, c.text_dim),
            "clip": (c.clip_img_dim,)}


def check_shards(shards: list[Path], uvit_config) -> None:
    """Compare the first readable sample's shapes with the backbone; DataError naming both if they differ."""
    want = expected_shapes(uvit_config)
    for path in shards[:8]:
        for raw in read_shard(path):
            if isinstance(raw, Damaged):
                break
            try:
                arrays = decode_arrays(raw, tuple(want))
            except CorruptSample:
                continue
            got = {k: tuple(a.shape) for k, a in arrays.items()}
            bad = [f"{k}: shards {got[k]}, backbone needs {want[k]}" for k in want if got[k] != want[k]]
            if bad:
                raise DataError(f"shards like {path} do not fit this backbone ({'; '.join(bad)}): they were "
                                "made for another model or resolution. Re-run data_prep with the backbone's "
                                "weights, or pick the matching backbone config.")
            return
    raise DataError(f"no readable sample in the first {min(len(shards), 8)} shards (e.g. {shards[0]})")


def readable_samples(shards: list[Path], max_shards: int = 64) -> Iterator[dict]:
    """Raw samples of the first `max_shards` shards, in order; a damaged tar is read up to where it
    breaks off (the validation readers)."""
    for path in shards[:max_shards]:
        for raw in read_shard(path):
            if isinstance(raw, Damaged):
                break
            yield raw


def read_validation(shards: list[Path], n: int, uvit_config) -> dict | None:
    """The first n readable samples (distinct identities first when labelled), collated; None if none."""
    stream = ShardStream(shards, batch_size=n, shapes=expected_shapes(uvit_config), shuffle_buffer=1,
                         pair_identities=False)
    picked, spare, idents = [], [], set()
    for raw in readable_samples(shards):
        try:
            meta = decode_meta(raw)
            arcface = decode_arrays(raw, ("arcface", "arcface_flip"))
        except CorruptSample:
            continue
        sample = stream._decode((raw, arcface["arcface"], arcface["arcface_flip"], "self"))
        if sample is None:
            continue
        sample["caption"] = raw.get("txt", b"").decode("utf-8", errors="replace")
        ident = meta.get("identity")
        (spare if ident is not None and ident in idents else picked).append(sample)
        idents.add(ident)
        if len(picked) >= n:
            break
    picked = (picked + spare)[:n]
    if not picked:
        return None
    batch = stream._collate(picked, {})
    batch["captions"] = [s["caption"] for s in picked]
    return batch

