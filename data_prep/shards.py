"""Writing the shards: plan, per-rank loop, atomic shard files, the manifest.

Plan. The source's items are cut into consecutive ranges of `shard_size` items; range i becomes
`shard-<i:06d>.tar` (the photos of that range that pass the filters, so at most `shard_size`
samples) and `shard-<i:06d>.json` (its counts). Rank r of a world of n takes shards r, r + n, ...

Atomicity and resume. A shard's tar is written to a temporary file, fsync'ed and renamed; then its
counts file is written the same way. The counts file is the "done" mark: a rerun skips every shard
that has both files, and redoes any other from scratch (a crash mid-shard leaves only a temporary
file, which the redo removes). `prep_config.json` records the settings and model fingerprints of
the first run; a rerun with different ones stops instead of mixing shards.

The manifest (`manifest.json`, written by the main process when every rank is done): format,
complete flag and missing shards, totals (input = written + every reject reason), per-shard sample
counts, feature shapes, model fingerprints, settings, elapsed time.
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from data_prep.format import FORMAT_NAME, FORMAT_VERSION
from models.atomic import atomic_write, write_json_atomic
from models.errors import UserError

SHARD_TAR = "shard-{:06d}.tar"
SHARD_STATS = "shard-{:06d}.json"
PREP_CONFIG = "prep_config.json"
MANIFEST = "manifest.json"


class PrepError(UserError, RuntimeError):
    """The output folder does not match this run's settings, or similar: the message says what to do."""


def write_json(path: Path, obj) -> None:
    """The folder's JSON files (counts, settings, manifest), atomically, keys sorted."""
    write_json_atomic(path, obj, indent=1, sort_keys=True)


def write_shard(path: str | os.PathLike, samples) -> int:
    """Member dicts (data_prep.format.encode_sample) -> one tar at `path`, atomically. Returns the count."""
    import webdataset as wds

    count = 0

    def write_tar(tmp: Path) -> None:
        nonlocal count
        with open(tmp, "wb") as f, wds.TarWriter(f, encoder=False, mtime=0.0) as w:
            for s in samples:
                w.write(s)
                count += 1

    atomic_write(path, write_tar)
    return count


@dataclass(frozen=True)
class ShardPlan:
    """items 0..items-1 in ranges of shard_size."""

    items: int
    shard_size: int

    def __len__(self) -> int:
        return math.ceil(self.items / self.shard_size)

    def range(self, i: int) -> tuple[int, int]:
        return i * self.shard_size, min((i + 1) * self.shard_size, self.items)

    def for_rank(self, rank: int, world: int) -> list[int]:
        return list(range(rank, len(self), world))


def shard_done(out: Path, i: int) -> dict | None:
    """The counts of a finished shard, or None when it has to be (re)done."""
    stats, tar = out / SHARD_STATS.format(i), out / SHARD_TAR.format(i)
    if not (stats.is_file() and tar.is_file()):
        return None
    try:
        return json.loads(stats.read_text())
    except (json.JSONDecodeError, OSError):
        return None


def check_settings(out: Path, settings: dict, is_main: bool) -> None:
    """Record `settings` in prep_config.json (first run), or stop if they differ from the recorded ones."""
    path = out / PREP_CONFIG
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [f"{k}: recorded {old.get(k)!r}, now {v!r}" for k, v in settings.items() if old.get(k) != v]
        if diff:
            raise PrepError(f"{out} holds shards made with other settings ({'; '.join(diff)}). Use a new "
                            f"--out folder, or delete {out} to start over.")
    elif is_main:
        write_json(path, settings)


@dataclass
class RankSummary:
    done: list[int]
    skipped: list[int]
    input: int
    written: int
    rejected: Counter
    seconds: float


def run_shards(source, processor, out: str | os.PathLike, *, shard_size: int, batch_size: int = 32,
               rank: int = 0, world: int = 1, limit: int | None = None, progress: bool = True) -> RankSummary:
    """Process this rank's shards of `source` with `processor` (a data_prep.process.SampleProcessor)."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = ShardPlan(min(len(source), limit) if limit else len(source), shard_size)
    mine = plan.for_rank(rank, world)
    todo = [i for i in mine if shard_done(out, i) is None]
    skipped = [i for i in mine if i not in todo]
    t0 = time.time()
    summary = RankSummary([], skipped, 0, 0, Counter(), 0.0)
    bar = tqdm(total=sum(plan.range(i)[1] - plan.range(i)[0] for i in todo), unit="img", dynamic_ncols=True,
               desc=f"shards (rank {rank}/{world})" if world > 1 else "shards", disable=not progress)
    for i in todo:
        stats = _write_one(source, processor, out, i, plan.range(i), batch_size, bar, summary)
        summary.rejected.update(stats["rejected"])
        summary.done.append(i)
    bar.close()
    summary.seconds = time.time() - t0
    return summary


def _write_one(source, processor, out: Path, i: int, items: tuple[int, int], batch_size: int, bar,
               summary: RankSummary) -> dict:
    """Shard i from source items [start, stop): tar, then its counts file (the done mark)."""
    start, stop = items
    for stale in out.glob(f".{SHARD_TAR.format(i)}.*.tmp"):
        stale.unlink(missing_ok=True)
    reasons: Counter = Counter()
    n_read = 0

    def flush(batch: list) -> list[dict]:
        nonlocal n_read
        kept, why = processor.process(batch, first_index=start + n_read)
        n_read += len(batch)
        reasons.update(why)
        summary.input += len(batch)
        summary.written += len(kept)
        bar.update(len(batch))
        bar.set_postfix(kept=f"{summary.written / max(summary.input, 1):.0%}", shard=i, refresh=False)
        return kept

    def samples():
        # the next batch is read (for faceworld: rendered and encoded) while this one is processed and written
        for batch in read_ahead(batches(source.read(start, stop), batch_size)):
            yield from flush(batch)

    t0 = time.time()
    written = write_shard(out / SHARD_TAR.format(i), samples())
    if n_read < stop - start:  # the source yielded fewer items than planned: count them, keep totals exact
        reasons["unreadable"] += stop - start - n_read
    stats = {"shard": SHARD_TAR.format(i), "items": [start, stop], "input": stop - start, "written": written,
             "rejected": dict(sorted(reasons.items())), "seconds": round(time.time() - t0, 3)}
    write_json(out / SHARD_STATS.format(i), stats)
    return stats


def batches(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last one shorter)."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


def read_ahead(items: Iterable, depth: int = 1) -> Iterator:
    """`items` in order, produced by a background thread up to `depth` items ahead of the consumer, so that
    producing the next item overlaps the work on this one. An exception in the producer is raised here, with
    its traceback; a consumer that stops early (an error, an interrupt) stops the producer too."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            put(_Failed(e))

    thread = threading.Thread(target=produce, name="read_ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


def write_manifest(out: str | os.PathLike, settings: dict, shapes: dict, seconds: float,
                   face_model: dict | None = None) -> dict:
    """Collect every shard's counts into manifest.json (main process, after all ranks finished).

    face_model: the face pack's block (encoder.face_analysis.face_model_block), which pretraining
    checks and carries into the identity module; None for shards of no real face model (synthetic).
    """
    out = Path(out)
    plan = ShardPlan(settings["items"], settings["shard_size"])
    shards, missing = [], []
    totals = {"input": 0, "written": 0, "rejected": Counter()}
    for i in range(len(plan)):
        stats = shard_done(out, i)
        if stats is None:
            missing.append(SHARD_TAR.format(i))
            continue
        shards.append({"name": stats["shard"], "samples": stats["written"], "input": stats["input"]})
        totals["input"] += stats["input"]
        totals["written"] += stats["written"]
        totals["rejected"].update(stats["rejected"])
    totals["rejected"] = dict(sorted(totals["rejected"].items()))
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "complete": not missing, "missing": missing,
                "totals": totals, "shards": shards, "shapes": shapes, "settings": settings, "face_model": face_model,
                "seconds": round(seconds, 1), "written_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(out / MANIFEST, manifest)
    return manifest
