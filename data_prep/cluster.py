"""Identity labels for corpora without them: cluster the faces' ArcFace embeddings.

    python -m data_prep cluster --shards shards/ [--threshold 0.5] [--neighbours 10] [--device auto]

Method. Each face is represented by the mean of its ArcFace and mirrored-ArcFace embeddings,
L2-normalised (what the projector sees). Cosine similarities against all faces are computed a
chunk of rows at a time (one matrix product per chunk, [rows, N], on the GPU when there is one);
each face keeps its `neighbours` most similar other faces, and an edge joins two faces when that
similarity is at least `threshold`. The connected components of this graph are the identities:
single linkage, restricted to each face's k nearest neighbours, which bounds memory at N x k
edges and limits the chaining that plain single linkage suffers on large corpora. Faces alone in
their component stay unlabelled.

Threshold. `DEFAULT_THRESHOLD` favours precision: a wrong pair (two people under one label)
teaches the module that identity does not matter, a missed pair only falls back to the augmented
view (data_prep.augment). Lower it for more recall when the report shows precision to spare.

Precision and recall are pairwise: of the pairs of faces put in one cluster, the fraction that
are truly one person (precision); of the pairs that are truly one person, the fraction put in one
cluster (recall). `pairwise_scores` computes them; the command reports them whenever the shards
carry identity labels (cluster a labelled corpus to calibrate the threshold for an unlabelled one).

Output. Shards are immutable tars, so the labels go into a side folder beside them,
`<shards>/identity_clusters/` (written atomically: assembled in a temporary folder, renamed):

    keys.npy                  bytes [M]        sample keys of every face in a cluster of 2 or more, sorted
    label.npy                 int64 [M]        cluster of each key (0 .. clusters - 1)
    arcface.npy               float16 [M, 512] their ArcFace embeddings
    arcface_flip.npy          float16 [M, 512] and mirrored ones
    report.json               settings, counts, cluster sizes, precision / recall, the manifest it belongs to

`pretrain.data` reads it (`IdentityClusters`, memory-mapped): a sample in a cluster that has no
identity label of its own is conditioned on another face of its cluster, drawn from the whole
corpus (the mates need not be in the shards being read).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from data_prep.format import CorruptSample, decode_arrays, decode_meta
from data_prep.shards import MANIFEST
from data_prep.sources import tar_samples
from models.atomic import replace_folder
from models.errors import UserError, number

logger = logging.getLogger(__name__)

CLUSTERS_DIR = "identity_clusters"
REPORT = "report.json"
DEFAULT_THRESHOLD = 0.5
_MEMBERS = ("json", "arcface.npy", "arcface_flip.npy")


@dataclass(frozen=True)
class ClusterConfig:
    threshold: float = DEFAULT_THRESHOLD  # cosine similarity joining two faces
    neighbours: int = 10  # most similar faces kept per face
    chunk_elements: int = 1 << 26  # similarities per matrix product (rows x N)

    def to_dict(self) -> dict:
        return asdict(self)


class ClusterError(UserError, ValueError):
    """The shards or their clusters cannot be used as asked; the message says what to do."""


# a cluster holding more than this fraction of the faces (and more than CHAINING_MIN_FACES of them) is
# reported as probable chaining: people joined through look-alikes (docs/pretraining.md)
CHAINING_FRACTION = 0.05
CHAINING_MIN_FACES = 50


# ------------------------------------------------------------------------------------ clustering
def cluster_embeddings(emb: np.ndarray | torch.Tensor, config: ClusterConfig = ClusterConfig(),
                       device: torch.device | str = "cpu") -> np.ndarray:
    """emb [N, D] (any norm) -> labels int64 [N]: 0 .. C - 1 for faces in a cluster of two or more
    (numbered by first face), -1 for faces alone."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    x = torch.nn.functional.normalize(torch.as_tensor(emb).to(device, torch.float32), dim=-1)
    n = x.shape[0]
    k = min(config.neighbours, n - 1)
    if k < 1:
        return np.full(n, -1, np.int64)
    rows = max(1, config.chunk_elements // n)
    src, dst = [], []
    for a in range(0, n, rows):
        b = min(a + rows, n)
        sims = x[a:b] @ x.T  # [rows, N]
        idx = torch.arange(a, b, device=x.device)
        sims[idx - a, idx] = -2.0  # never the face itself
        val, nn = sims.topk(k, dim=1)
        keep = val >= config.threshold
        src.append((idx[:, None].expand(-1, k))[keep].cpu())
        dst.append(nn[keep].cpu())
    src, dst = torch.cat(src).numpy(), torch.cat(dst).numpy()
    graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    sizes = np.bincount(comp)
    labels = np.full(n, -1, np.int64)
    together = sizes[comp] > 1
    _, first, inverse = np.unique(comp[together], return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # number clusters by their first face
    labels[together] = order[inverse]
    return labels


@dataclass(frozen=True)
class PairScores:
    precision: float  # correct / predicted (1 when nothing was predicted)
    recall: float  # correct / true (1 when there is nothing to find)
    predicted_pairs: int  # pairs of faces sharing a cluster
    true_pairs: int  # pairs of faces of one person
    correct_pairs: int  # both

    def to_dict(self) -> dict:
        return asdict(self)


def _pairs(ids: np.ndarray) -> int:
    counts = np.unique(ids, return_counts=True)[1].astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def pairwise_scores(pred: np.ndarray, truth: Sequence) -> PairScores:
    """Pairwise precision and recall of cluster labels against the true identities.

    pred [N] int (-1 = alone); truth [N] identity labels of any type, None = unknown (such faces
    are left out of both counts).
    """
    known = np.array([t is not None for t in truth], bool)
    pred = np.asarray(pred, np.int64)[known]
    truth_ids = np.unique(np.array([str(t) for t, k in zip(truth, known, strict=True) if k]),
                          return_inverse=True)[1].astype(np.int64).reshape(-1)
    alone = pred < 0
    pred = pred.copy()
    pred[alone] = pred.max(initial=-1) + 1 + np.arange(int(alone.sum()))  # each its own cluster
    predicted, true = _pairs(pred), _pairs(truth_ids)
    correct = _pairs(pred * (int(truth_ids.max(initial=0)) + 1) + truth_ids)
    return PairScores(correct / predicted if predicted else 1.0, correct / true if true else 1.0,
                      predicted, true, correct)


# ---------------------------------------------------------------------------------------- shards
@dataclass
class CorpusFaces:
    """The faces of a shard folder: keys [N], identity labels [N] (None where unknown),
    arcface / arcface_flip float16 [N, 512]."""

    keys: list[str]
    identities: list
    arcface: np.ndarray
    arcface_flip: np.ndarray
    unreadable: int  # samples skipped (corrupt member, damaged tar)

    def pooled(self) -> np.ndarray:
        """[N, 512] float32: the mean of each face's two embeddings (normalised by the clustering)."""
        return self.arcface.astype(np.float32) + self.arcface_flip.astype(np.float32)


def shard_paths(folder: Path) -> list[Path]:
    """The folder's non-empty shards from its manifest, else its *.tar."""
    manifest = folder / MANIFEST
    if manifest.is_file():
        return [folder / s["name"] for s in json.loads(manifest.read_text())["shards"] if s["samples"] > 0]
    return sorted(folder.glob("*.tar"))


def read_faces(folder: str | os.PathLike, progress: bool = False) -> CorpusFaces:
    """Every readable face of a shard folder, in shard order."""
    from tqdm.auto import tqdm

    folder = Path(folder)
    paths = shard_paths(folder)
    if not paths:
        raise ClusterError(f"no shards in {folder}", hint="write them with python -m data_prep")
    keys, idents, emb, flip, bad = [], [], [], [], 0
    for path in tqdm(paths, desc="reading faces", unit="shard", disable=not progress):
        try:
            for key, members in tar_samples(path, members=_MEMBERS):  # the json and ArcFace members only
                try:
                    meta = decode_meta(members)
                    arrays = decode_arrays(members, ("arcface", "arcface_flip"))
                except CorruptSample:
                    bad += 1
                    continue
                keys.append(key)
                idents.append(meta.get("identity"))
                emb.append(arrays["arcface"].astype(np.float16))
                flip.append(arrays["arcface_flip"].astype(np.float16))
        except (tarfile.TarError, OSError, EOFError) as e:
            logger.warning("damaged shard %s: %s (its remaining samples are left out)", path, e)
            bad += 1
    empty = np.zeros((0, 512), np.float16)
    return CorpusFaces(keys, idents, np.stack(emb) if emb else empty, np.stack(flip) if flip else empty, bad)


# ----------------------------------------------------------------------------------- side folder
def _manifest_stamp(folder: Path) -> dict | None:
    """What identifies the shards a cluster folder belongs to (None without a manifest)."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    return {"written_at": m.get("written_at"), "written": m.get("totals", {}).get("written")}


def write_clusters(folder: str | os.PathLike, faces: CorpusFaces, labels: np.ndarray, report: dict) -> Path:
    """The side folder <folder>/identity_clusters (see the module docstring), atomically."""
    folder = Path(folder)
    final, tmp, old = folder / CLUSTERS_DIR, folder / f".{CLUSTERS_DIR}.tmp", folder / f".{CLUSTERS_DIR}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    rows = np.flatnonzero(labels >= 0)
    keys = np.array([faces.keys[i].encode("utf-8") for i in rows], dtype=bytes)
    order = np.argsort(keys, kind="stable")
    rows, keys = rows[order], keys[order]
    arrays = {"keys": keys, "label": labels[rows].astype(np.int64), "arcface": faces.arcface[rows],
              "arcface_flip": faces.arcface_flip[rows]}
    for name, a in arrays.items():
        np.save(tmp / f"{name}.npy", np.ascontiguousarray(a), allow_pickle=False)
    (tmp / REPORT).write_text(json.dumps(report, indent=1, sort_keys=True))
    return replace_folder(tmp, final, old)


class IdentityClusters:
    """A shard folder's identity_clusters/, memory-mapped (shared by every reader of the machine).

    mate(key, rng) -> (arcface [512], arcface_flip [512]) float32 of another face of the key's
    cluster, or None when the key is in no cluster; label_of(key) -> its cluster, or None.
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        load = lambda name: np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False)  # noqa: E731
        self.path, self.keys, self.label = path, load("keys"), np.asarray(load("label"))
        self.arcface, self.arcface_flip = load("arcface"), load("arcface_flip")
        self.report = json.loads((path / REPORT).read_text())
        self.members = np.argsort(self.label, kind="stable")  # rows grouped by cluster
        self.start = np.searchsorted(self.label[self.members], np.arange(int(self.label.max(initial=-1)) + 2))

    @classmethod
    def of_folder(cls, folder: str | os.PathLike) -> IdentityClusters | None:
        """The clusters of a shard folder, None when it has none; ValueError when they were made for
        other shards (the folder's manifest changed since)."""
        folder = Path(folder)
        if not (folder / CLUSTERS_DIR / REPORT).is_file():
            return None
        clusters = cls(folder / CLUSTERS_DIR)
        if clusters.report.get("manifest") != _manifest_stamp(folder):
            raise ClusterError(f"{folder / CLUSTERS_DIR} was made for other shards than those in {folder} "
                               f"now; rerun python -m data_prep cluster --shards {folder}")
        return clusters

    def __len__(self) -> int:
        return len(self.keys)

    def _row(self, key: str) -> int | None:
        k = key.encode("utf-8")
        i = int(np.searchsorted(self.keys, k))
        return i if i < len(self.keys) and self.keys[i] == k else None

    def label_of(self, key: str) -> int | None:
        """The key's cluster, None when it is in none."""
        i = self._row(key)
        return None if i is None else int(self.label[i])

    def mate(self, key: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
        i = self._row(key)
        if i is None:
            return None
        c = int(self.label[i])
        lo, hi = int(self.start[c]), int(self.start[c + 1])
        j = int(self.members[lo + int(rng.integers(hi - lo - 1))])  # uniform over the others:
        if j == i:  # the last member is never drawn directly, so it stands in for the key itself
            j = int(self.members[hi - 1])
        return self.arcface[j].astype(np.float32), self.arcface_flip[j].astype(np.float32)


# ------------------------------------------------------------------------------------------- CLI
def cluster_folder(folder: str | os.PathLike, config: ClusterConfig = ClusterConfig(), *,
                   device: torch.device | str = "cpu", progress: bool = False) -> dict:
    """Read, cluster, score against the labels the shards carry, write identity_clusters/. Returns the report."""
    folder = Path(folder)
    t0 = time.time()
    faces = read_faces(folder, progress=progress)
    labels = cluster_embeddings(faces.pooled(), config, device=device)
    sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, np.int64)
    labelled = sum(t is not None for t in faces.identities)
    report = {
        "config": config.to_dict(), "manifest": _manifest_stamp(folder), "faces": len(faces.keys),
        "unreadable": faces.unreadable, "clusters": int(len(sizes)), "clustered_faces": int(sizes.sum()),
        "clustered_fraction": float(sizes.sum() / max(len(faces.keys), 1)),
        "largest_clusters": sorted(sizes.tolist(), reverse=True)[:10],
        "labelled_faces": labelled,
        "scores": pairwise_scores(labels, faces.identities).to_dict() if labelled else None,
        "seconds": round(time.time() - t0, 1),
    }
    write_clusters(folder, faces, labels, report)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = ClusterConfig()
    p.add_argument("--shards", required=True, help="a data_prep output folder")
    p.add_argument("--threshold", type=number(float, -1.0, 1.0), default=d.threshold,
                   help=f"cosine similarity that joins two faces (default {d.threshold})")
    p.add_argument("--neighbours", type=number(int, 1), default=d.neighbours,
                   help=f"most similar faces considered per face (default {d.neighbours})")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from models.device import pick_device

    r = cluster_folder(args.shards, ClusterConfig(args.threshold, args.neighbours), device=pick_device(args.device),
                       progress=not args.no_progress)
    print(f"{Path(args.shards) / CLUSTERS_DIR}: {r['clusters']} clusters holding {r['clustered_faces']} of "
          f"{r['faces']} faces ({r['clustered_fraction']:.1%}); largest {r['largest_clusters'][:5]}")
    if r["scores"]:
        s = r["scores"]
        print(f"against the {r['labelled_faces']} identity labels of the shards: pairwise precision "
              f"{s['precision']:.3f}, recall {s['recall']:.3f} ({s['correct_pairs']} of {s['predicted_pairs']} "
              f"predicted pairs correct, {s['true_pairs']} true pairs)")
    largest = r["largest_clusters"][0] if r["largest_clusters"] else 0
    if largest > max(CHAINING_MIN_FACES, CHAINING_FRACTION * r["faces"]):
        print(f"warning: the largest cluster holds {largest} of {r['faces']} faces: probably people chained "
              f"through look-alikes, which teaches the module that the face does not matter. Raise --threshold "
              f"(it depends on the recogniser; docs/pretraining.md) and check precision on a labelled corpus.",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
