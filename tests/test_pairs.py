"""Pairs without identity labels: face clustering (precision / recall), the augmented view, and how
pretraining's stream chooses the conditioning face (real pair, augmented view, own embedding).

Shards are synthetic (data_prep.synthetic: people with a fixed ArcFace direction, noisy photos);
the augmented view runs on a real photo through MTCNN and the stand-in recogniser
(eval/bench/standin_faces.py).
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import skimage.data
from PIL import Image

from data_prep.__main__ import main as data_prep_main
from data_prep.augment import FaceAugment, augment_face, key_generator
from data_prep.cluster import (
    CLUSTERS_DIR,
    ClusterConfig,
    IdentityClusters,
    cluster_embeddings,
    cluster_folder,
    pairwise_scores,
    read_faces,
)
from data_prep.format import decode_arrays, safe_key
from data_prep.process import PrepConfig, SampleProcessor
from data_prep.sources import RawSample
from data_prep.synthetic import shapes_for, write_synthetic
from encoder.face_analysis import FaceAnalyzer
from eval.bench.standin_faces import MTCNNDetector, make_pack, reference_embedding
from models.errors import run_cli
from models.uvit import UViTConfig
from pretrain.config import PretrainConfig
from pretrain.data import (
    DataError,
    ShardStream,
    conditioning_fractions,
    expected_shapes,
    list_shards,
    load_clusters,
    read_shard,
)

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "pretrain" / "configs" / "tiny.json"
UVIT = UViTConfig.from_dict(PretrainConfig.from_file(TINY).uvit)
PER_PERSON = 8  # write_synthetic: 48 samples, 6 identities -> 8 consecutive photos each


def _synthetic(out: Path, labelled: bool) -> Path:
    write_synthetic(out, samples=48, shard_size=12, identities=6, shapes=shapes_for(UVIT), labelled=labelled,
                    progress=False)
    return out


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    return _synthetic(tmp_path_factory.mktemp("labelled"), True)


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory) -> Path:
    return _synthetic(tmp_path_factory.mktemp("unlabelled"), False)


def _person(key: str) -> int:
    return int(key) // PER_PERSON


def _samples(folder: Path) -> dict[str, dict]:
    return {s["__key__"]: s for p in list_shards(str(folder)) for s in read_shard(p)}


def _stream(folder: Path, **kw) -> ShardStream:
    kw = {"batch_size": 8, "shuffle_buffer": 8, "shards_per_group": 2, **kw}
    return ShardStream(list_shards(str(folder)), shapes=expected_shapes(UVIT), **kw)


def _flat(batches) -> list[tuple[str, np.ndarray, np.ndarray, bool, bool]]:
    """(key, face, face_flip, paired, augmented) of every sample of the batches."""
    return [(k, b["face"][i].numpy(), b["face_flip"][i].numpy(), bool(b["paired"][i]), bool(b["augmented"][i]))
            for b in batches for i, k in enumerate(b["keys"])]


# ------------------------------------------------------------------------------ precision / recall
def test_pairwise_scores_by_hand():
    # truth: A A A B B ; clusters: {0 1} {2 3} {4 alone}
    scores = pairwise_scores(np.array([0, 0, 1, 1, -1]), ["A", "A", "A", "B", "B"])
    # predicted pairs (0,1) (2,3): one correct; true pairs (0,1) (0,2) (1,2) (3,4): 4
    assert (scores.predicted_pairs, scores.true_pairs, scores.correct_pairs) == (2, 4, 1)
    assert scores.precision == 0.5 and scores.recall == 0.25
    perfect = pairwise_scores(np.array([3, 3, 3, 7, 7]), [1, 1, 1, 2, 2])
    assert perfect.precision == perfect.recall == 1.0
    # faces without a known identity are left out; nothing predicted is vacuously precise
    s = pairwise_scores(np.array([-1, -1, 0, 0]), ["A", "A", None, None])
    assert (s.predicted_pairs, s.true_pairs, s.precision, s.recall) == (0, 1, 1.0, 0.0)


def _noisy_people(people: int, photos: np.ndarray, noise: float, seed: int = 0):
    """Clusters of noisy embeddings: person p's photos are unit(direction_p + noise * N(0, I)), with
    direction_p ~ N(0, I) and photos[p] photos of person p, shuffled; returns (embeddings [N, 512], truth [N])."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal((people, 512))
    truth = np.repeat(np.arange(people), photos)
    emb = direction[truth] + noise * rng.standard_normal((len(truth), 512))
    order = rng.permutation(len(truth))  # photos of one person scattered, as in a web corpus
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)[order], truth[order]


def test_clustering_precision_and_recall_on_labelled_embeddings():
    photos = np.random.default_rng(1).integers(1, 12, size=60)  # 60 people, 1 to 11 photos each
    emb, truth = _noisy_people(60, photos, noise=0.8)  # same person: cosine about 0.6; others about 0
    labels = cluster_embeddings(emb, ClusterConfig(threshold=0.4))
    scores = pairwise_scores(labels, truth.tolist())
    assert scores.true_pairs == int((photos * (photos - 1) // 2).sum())
    assert scores.precision > 0.99 and scores.recall > 0.95, scores
    assert np.all(labels[np.isin(truth, np.flatnonzero(photos == 1))] == -1)  # one photo: no cluster
    # small chunks (many matrix products) find the same clusters
    chunked = cluster_embeddings(emb, ClusterConfig(threshold=0.4, chunk_elements=3 * len(emb)))
    assert np.array_equal(chunked, labels)
    # a threshold below the impostor similarities merges people: precision collapses, and the measure says so
    loose = pairwise_scores(cluster_embeddings(emb, ClusterConfig(threshold=-0.5)), truth.tolist())
    assert loose.recall == 1.0 and loose.precision < 0.1
    # a threshold above the genuine similarities finds nothing
    strict = pairwise_scores(cluster_embeddings(emb, ClusterConfig(threshold=0.95)), truth.tolist())
    assert strict.predicted_pairs == 0 and strict.recall == 0.0


def test_cluster_command_reports_precision_recall_and_writes_the_side_folder(labelled, tmp_path, capsys):
    assert data_prep_main(["cluster", "--shards", str(labelled), "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "6 clusters holding 48 of 48 faces" in out and "pairwise precision 1.000, recall 1.000" in out
    report = json.loads((labelled / CLUSTERS_DIR / "report.json").read_text())
    assert report["scores"]["true_pairs"] == 6 * 28 and report["config"]["threshold"] == 0.5
    clusters = IdentityClusters.of_folder(labelled)
    assert len(clusters) == 48 and list(clusters.keys) == sorted(clusters.keys)
    faces = read_faces(labelled)
    for key, label in zip(clusters.keys, clusters.label, strict=True):  # one cluster per person
        same = [k for k, lab in zip(clusters.keys, clusters.label, strict=True) if lab == label]
        assert {_person(k.decode()) for k in same} == {_person(key.decode())}
    i = faces.keys.index("000000005")
    j = list(clusters.keys).index(b"000000005")
    np.testing.assert_array_equal(clusters.arcface[j], faces.arcface[i])
    assert run_cli(data_prep_main, ["cluster", "--shards", str(tmp_path), "--no-progress"]) == 2  # no shards there


def test_cluster_mates(unlabelled, tmp_path):
    cluster_folder(unlabelled)
    clusters = load_clusters(list_shards(str(unlabelled)))[str(unlabelled)]
    samples = _samples(unlabelled)
    own = {k: decode_arrays(s, ("arcface",))["arcface"] for k, s in samples.items()}
    rng = np.random.default_rng(0)
    drawn = []
    for _ in range(200):
        face, flip = clusters.mate("000000003", rng)
        (mate,) = [k for k, e in own.items() if np.allclose(e, face, atol=1e-3)]
        drawn.append(mate)
        assert flip.shape == (512,) and face.dtype == np.float32
    assert set(drawn) == {f"{i:09d}" for i in range(8)} - {"000000003"}  # every other photo, never itself
    assert clusters.mate("not_a_key", rng) is None
    # shards rewritten after clustering: the labels no longer belong to them
    manifest = json.loads((unlabelled / "manifest.json").read_text())
    stale = tmp_path / "stale"
    stale.mkdir()
    for p in unlabelled.iterdir():
        if p.is_file():
            (stale / p.name).write_bytes(p.read_bytes())
    shutil.copytree(unlabelled / CLUSTERS_DIR, stale / CLUSTERS_DIR)
    (stale / "manifest.json").write_text(json.dumps(dict(manifest, written_at="later")))
    with pytest.raises(DataError, match="rerun python -m data_prep cluster"):
        load_clusters(list_shards(str(stale)))


# ---------------------------------------------------------------------------------- augmented view
def test_augment_face_is_deterministic_per_key_and_alters_the_crop():
    crop = np.asarray(Image.fromarray(skimage.data.astronaut()[20:220, 150:350]).resize((112, 112)))
    a = augment_face(crop, key_generator("000000001_photo"))
    assert a.shape == crop.shape and a.dtype == np.uint8
    assert np.array_equal(a, augment_face(crop, key_generator("000000001_photo")))
    assert not np.array_equal(a, augment_face(crop, key_generator("000000002_photo")))
    assert np.abs(a.astype(int) - crop).mean() > 3
    none = FaceAugment(max_shift=0, max_zoom=0, max_rotation=0, p_flip=0, brightness=0, contrast=0, saturation=0,
                       p_blur=0, p_downscale=0)
    assert np.abs(augment_face(crop, key_generator("x"), none).astype(int) - crop).max() <= 1  # rounding only
    with pytest.raises(ValueError, match="square"):
        augment_face(crop[:100], key_generator("x"))


def test_prepared_face_has_a_deterministic_augmented_embedding(tmp_path):
    faces = FaceAnalyzer.from_pack(make_pack(tmp_path / "pack"))
    models = SimpleNamespace(faces=FaceAnalyzer(MTCNNDetector(), faces.recogniser), downsample=2)
    processor = SampleProcessor(models, PrepConfig(resolution=16, min_image_side=64, min_face_size=32))
    buf = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buf, format="PNG")
    raw = RawSample("eileen/astronaut.png", buf.getvalue(), "an astronaut")
    first, again, other = processor.prepare(raw, 7), processor.prepare(raw, 7), processor.prepare(raw, 8)
    aug, own = first.aug_embedding, first.face.embedding
    assert aug.shape == (512,) and abs(np.linalg.norm(aug) - 1) < 1e-5
    np.testing.assert_array_equal(aug, again.aug_embedding)  # the same key: the same view
    assert not np.allclose(aug, other.aug_embedding)  # another key: another view
    assert float(aug @ own) < 0.9999 and float(aug @ first.face.embedding_flip) < 0.9999  # never the own one
    # it is the recogniser's embedding of augment_face's view of the aligned crop
    view = augment_face(first.face.aligned, key_generator(safe_key(raw.key, 7)))
    np.testing.assert_allclose(aug, reference_embedding(view), atol=1e-4)


# ------------------------------------------------------------------------------ pretraining stream
def test_labelled_stream_pairs_and_conditions_first_photos_on_augmented_views(labelled):
    samples = _samples(labelled)
    it = iter(_stream(labelled))
    batches = [next(it) for _ in range(6)]  # one pass over the 48 samples
    flat = _flat(batches)
    assert sorted(k for k, *_ in flat) == sorted(samples)
    for key, face, flip, paired, augmented in flat:
        a = decode_arrays(samples[key], ("arcface", "arcface_aug"))
        assert not np.allclose(face, a["arcface"])  # never the target's own embedding
        if augmented:
            np.testing.assert_array_equal(face, a["arcface_aug"])
            np.testing.assert_array_equal(flip, a["arcface_aug"])
        else:
            assert paired
            mates = [decode_arrays(s, ("arcface",))["arcface"] for k, s in samples.items()
                     if k != key and _person(k) == _person(key)]
            assert any(np.array_equal(face, m) for m in mates)
    state = batches[-1]["state"]
    n_aug = sum(a for *_, a in flat)
    # each person's first photo in each of the two groups (2 shards each) is an augmented view
    assert 6 <= n_aug <= 12 and state["augmented"] == n_aug and state["self"] == 0
    assert state["paired"] + state["augmented"] == state["samples"] == 48
    assert conditioning_fractions([state]) == {"paired": (48 - n_aug) / 48, "augmented": n_aug / 48, "self": 0.0}


def test_unlabelled_stream_uses_cluster_mates_else_augmented_views(unlabelled):
    samples = _samples(unlabelled)
    it = iter(_stream(unlabelled))  # no clusters: every sample on its augmented view
    flat = _flat([next(it) for _ in range(6)])
    assert all(a and not p for *_, p, a in flat)
    for key, face, *_ in flat:
        np.testing.assert_array_equal(face, decode_arrays(samples[key], ("arcface_aug",))["arcface_aug"])

    cluster_folder(unlabelled)
    shards = list_shards(str(unlabelled))
    stream = _stream(unlabelled, clusters=load_clusters(shards))
    it = iter(stream)
    batches = [next(it) for _ in range(6)]
    own = {k: decode_arrays(s, ("arcface",))["arcface"] for k, s in samples.items()}
    for key, face, _, paired, augmented in _flat(batches):
        assert paired and not augmented
        (mate,) = [k for k, e in own.items() if np.allclose(e, face, atol=1e-3)]  # float16 in the side folder
        assert mate != key and _person(mate) == _person(key)
    assert conditioning_fractions([batches[-1]["state"]])["paired"] == 1.0
    # pair_identities off: no mates, augmented views only
    it = iter(_stream(unlabelled, clusters=load_clusters(shards), pair_identities=False))
    assert next(it)["augmented"].all()
    # exact resume: restarting from a mid-group position replays the same mates
    resumed = iter(_stream(unlabelled, clusters=load_clusters(shards), start={0: batches[2]["state"]}))
    for b in batches[3:]:
        r = next(resumed)
        assert r["keys"] == b["keys"] and np.array_equal(r["face"].numpy(), b["face"].numpy())


def _strip_aug(src: Path, dst: Path) -> None:
    """Copy a shard without its arcface_aug members (as data_prep wrote them before they existed)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for info in tin:
            if not info.name.endswith(".arcface_aug.npy"):
                tout.addfile(info, io.BytesIO(tin.extractfile(info).read()))


def test_old_shards_fall_back_to_the_own_embedding_and_count_it(unlabelled, tmp_path):
    for p in list_shards(str(unlabelled))[:2]:
        _strip_aug(p, tmp_path / p.name)
    paths = sorted(tmp_path.glob("*.tar"))
    samples = {s["__key__"]: s for p in paths for s in read_shard(p)}
    it = iter(ShardStream(paths, batch_size=8, shapes=expected_shapes(UVIT), shuffle_buffer=1))
    batches = [next(it) for _ in range(3)]
    for key, face, flip, paired, augmented in _flat(batches):
        a = decode_arrays(samples[key], ("arcface", "arcface_flip"))
        assert not paired and not augmented
        np.testing.assert_array_equal(face, a["arcface"])
        np.testing.assert_array_equal(flip, a["arcface_flip"])
    state = batches[-1]["state"]
    assert (state["self"], state["augmented"], state["paired"]) == (24, 0, 0)
    assert conditioning_fractions([state])["self"] == 1.0
    # a checkpoint written before these counters existed still resumes (missing counters start at 0)
    old = {k: v for k, v in state.items() if k not in ("augmented", "self")}
    assert conditioning_fractions([old]) == {"paired": 0.0, "augmented": 0.0, "self": 0.0}
    assert next(iter(ShardStream(paths, batch_size=8, shapes=expected_shapes(UVIT), shuffle_buffer=1,
                                 start={0: old})))["state"]["self"] == 8


def test_training_logs_the_conditioning_fractions(unlabelled, tmp_path):
    from pretrain.train import train

    cluster_folder(unlabelled)
    c = dataclasses.replace(PretrainConfig.from_file(TINY), shards=str(unlabelled), output_dir=str(tmp_path / "run"),
                            weights=str(tmp_path / "no_weights"), max_steps=2, log_every=1, checkpoint_every=100)
    train(c)
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"identity clusters of {unlabelled}: 48 faces in 6 clusters (threshold 0.5)" in log
    assert "conditioning (rank 0): 100.0 % real pairs, 0.0 % augmented views, 0.0 % own embedding" in log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert {"data/paired_fraction", "data/augmented_fraction", "data/self_fraction"} <= set(events.Tags()["scalars"])
    assert events.Scalars("data/paired_fraction")[-1].value == 1.0


def test_cluster_cli_warns_when_one_cluster_swallows_the_corpus(monkeypatch, capsys, tmp_path):
    import data_prep.cluster as cluster

    report = {"clusters": 3, "clustered_faces": 1000, "faces": 1000, "clustered_fraction": 1.0,
              "largest_clusters": [980, 15, 5], "labelled_faces": 0, "scores": None}
    monkeypatch.setattr(cluster, "cluster_folder", lambda *a, **k: report)
    assert cluster.main(["--shards", str(tmp_path), "--no-progress", "--device", "cpu"]) == 0
    assert "largest cluster holds 980 of 1000 faces" in capsys.readouterr().err
    report["largest_clusters"] = [40, 30, 30]  # a large person, not chaining: no warning
    assert cluster.main(["--shards", str(tmp_path), "--no-progress", "--device", "cpu"]) == 0
    assert "warning" not in capsys.readouterr().err
