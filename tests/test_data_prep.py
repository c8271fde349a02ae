"""data_prep: sources, per-image processing, shards + manifest, resume, and reading shards back.

Real face photos (skimage's astronaut, insightface's Tom Hanks and group photo) go through
facenet-pytorch's MTCNN with the stand-in ArcFace (eval/bench/standin_faces.py); the frozen feature models
are the tiny UniDiffuser stack (tests/tiny_stack.py: 16 x 16 crops -> 8 x 8 latents). The CLI test
loads everything from files (tiny weights folder + stand-in pack, marker photos).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import insightface
import numpy as np
import pytest
import skimage.data
from PIL import Image
from tiny_stack import make_tiny_weights_dir, tiny_configs

from data_prep.__main__ import build_parser, main, run
from data_prep.format import ARRAY_MEMBERS, decode_arrays, decode_meta, npy_bytes
from data_prep.process import FrozenModels, PrepConfig, SampleProcessor, square_crop
from data_prep.shards import (
    MANIFEST,
    PrepError,
    ShardPlan,
    batches,
    read_ahead,
    run_shards,
    shard_done,
    write_manifest,
)
from data_prep.sources import FolderSource, HFDiskSource, RawSample, SourceError, TarSource
from encoder.face_analysis import FaceAnalyzer
from eval.bench.standin_faces import MTCNNDetector, make_pack, paint_marker
from models.errors import run_cli
from models.uvit import UViTConfig
from pretrain.data import Damaged, DataError, ShardStream, expected_shapes, list_shards, read_shard

IMAGES = Path(insightface.__file__).parent / "data" / "images"
UVIT = UViTConfig.from_dict(tiny_configs()["uvit"])  # 8 x 8 latents, text [77, 8], clip [16]
PREP = ["--resolution", "16", "--min-image-side", "64", "--min-face-size", "32"]
EXPECTED = {"several_faces": 1, "no_face": 2, "undecodable": 3, "missing_caption": 1, "image_too_small": 1}

pytestmark = pytest.mark.filterwarnings("ignore:.*estimate.*:FutureWarning")  # insightface's norm_crop


def _save(img: np.ndarray, path: Path, caption: str | None = "a photo", **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, **kw)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)


def _canvas(img: np.ndarray, side: int, at: tuple[int, int]) -> np.ndarray:
    out = np.full((side, side, 3), 120, np.uint8)
    out[at[0]:at[0] + img.shape[0], at[1]:at[1] + img.shape[1]] = img
    return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_tiny_weights_dir(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def models(weights, tmp_path_factory) -> FrozenModels:
    pack = make_pack(tmp_path_factory.mktemp("pack"))
    m = FrozenModels.from_weights(weights, face_pack=pack)
    m.faces = FaceAnalyzer(MTCNNDetector(), m.faces.recogniser)  # real photos need a real detector
    return m


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """12 items: 4 usable (2 people, 2 photos each), 8 rejected for 5 different reasons."""
    root = tmp_path_factory.mktemp("photos")
    astronaut = skimage.data.astronaut()
    hanks = np.asarray(Image.open(IMAGES / "Tom_Hanks_54745.png").convert("RGB"))
    _save(astronaut, root / "eileen" / "astronaut.png", "an astronaut in front of a flag")
    small = np.asarray(Image.fromarray(astronaut).resize((300, 300), Image.BICUBIC))
    _save(small, root / "eileen" / "astronaut_small.jpg", "a woman in a spacesuit", quality=95)
    _save(_canvas(hanks, 224, (50, 60)), root / "hanks" / "hanks_a.png", "a man smiling")
    _save(_canvas(np.ascontiguousarray(hanks[:, ::-1]), 240, (70, 40)), root / "hanks" / "hanks_b.jpg",
          "portrait of a man", quality=95)
    shutil.copy(IMAGES / "t1.jpg", root / "group.jpg")
    (root / "group.txt").write_text("a group of people")
    _save(np.random.default_rng(0).integers(0, 255, (200, 260, 3), dtype=np.uint8), root / "noise.png")
    grad = np.repeat(np.linspace(0, 255, 256, dtype=np.uint8)[None, :, None], 3, axis=2).repeat(200, axis=0)
    _save(np.ascontiguousarray(grad), root / "gradient.jpg")
    (root / "empty.jpg").write_bytes(b"")
    (root / "empty.txt").write_text("nothing")
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, format="JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (root / "truncated.txt").write_text("half a photo")
    (root / "notes.png").write_text("this is not an image")
    (root / "notes.txt").write_text("notes")
    _save(astronaut, root / "nocaption.png", caption=None)
    _save(astronaut[:40, :40], root / "tiny.png")
    return root


@pytest.fixture(scope="module")
def shards(photos, models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    args = build_parser().parse_args(["--source", "folder", "--input", str(photos), "--identity-from-folder",
                                      "--out", str(out), "--shard-size", "5", "--batch-size", "3",
                                      "--no-progress", *PREP])
    run(args, models=models)
    return out


def _args(photos, out, *extra):
    return build_parser().parse_args(["--source", "folder", "--input", str(photos), "--identity-from-folder",
                                      "--out", str(out), "--shard-size", "5", "--no-progress", *PREP, *extra])


# ------------------------------------------------------------------------------------- processing
def test_square_crop_keeps_face_in_frame():
    assert square_crop(400, 300, np.array([350, 100, 390, 150])) == (100, 0, 300)  # clamped right
    assert square_crop(300, 600, np.array([100, 20, 200, 120])) == (0, 0, 300)  # clamped top
    assert square_crop(300, 900, np.array([100, 400, 200, 500])) == (0, 300, 300)  # centred


def test_shards_and_manifest_counts_add_up(shards):
    m = json.loads((shards / MANIFEST).read_text())
    assert m["complete"] and m["missing"] == []
    t = m["totals"]
    assert t["input"] == 12 and t["written"] == 4
    assert t["input"] == t["written"] + sum(t["rejected"].values())
    assert t["rejected"] == EXPECTED
    assert [s["name"] for s in m["shards"]] == [f"shard-{i:06d}.tar" for i in range(3)]
    assert sum(s["samples"] for s in m["shards"]) == 4 and [s["input"] for s in m["shards"]] == [5, 5, 2]
    for i in range(3):  # each shard's own counts add up too
        s = json.loads((shards / f"shard-{i:06d}.json").read_text())
        assert s["input"] == s["written"] + sum(s["rejected"].values())
    assert m["shapes"]["moments"] == {"shape": [8, 8, 8], "dtype": "float16"}
    assert m["shapes"]["text"]["shape"] == [77, 8] and m["shapes"]["clip"]["shape"] == [16]
    assert set(m["settings"]["models"]) == {"autoencoder", "text_encoder", "image_clip", "face_detector",
                                            "face_recogniser"}
    assert m["settings"]["prep"]["resolution"] == 16 and m["settings"]["shard_size"] == 5


def test_shard_contents(shards):
    samples = [s for p in sorted(shards.glob("shard-*.tar")) for s in read_shard(p)]
    assert len(samples) == 4
    metas = [decode_meta(s) for s in samples]
    assert [m["identity"] for m in metas] == ["eileen", "eileen", "hanks", "hanks"]
    assert [m["source_key"] for m in metas][:2] == ["eileen/astronaut.png", "eileen/astronaut_small.jpg"]
    assert len({s["__key__"] for s in samples}) == 4 and all("." not in s["__key__"] for s in samples)
    for s, meta in zip(samples, metas, strict=True):
        a = decode_arrays(s)
        assert {k: v.dtype for k, v in a.items()} == {k: np.dtype(v) for k, v in ARRAY_MEMBERS.items()}
        assert a["moments"].shape == (8, 8, 8) and a["text"].shape == (77, 8) and a["clip"].shape == (16,)
        assert abs(np.linalg.norm(a["arcface"]) - 1) < 1e-4 and abs(np.linalg.norm(a["arcface_flip"]) - 1) < 1e-4
        x1, y1, x2, y2 = a["box"]
        assert 0 <= x1 < x2 <= 8 and 0 <= y1 < y2 <= 8  # latent pixels
        np.testing.assert_allclose(a["box"] * 2, meta["face_box_px"], atol=0.02)  # VAE factor 2 at tiny size
        assert s["txt"].decode()
    # the astronaut's face is in her upper middle part (512 px photo, crop = whole photo)
    x1, y1, x2, y2 = decode_arrays(samples[0])["box"]
    assert 1.5 < x1 < 4 and 0 < y1 < 2.5 and 3.5 < x2 < 6 and 2 < y2 < 4.5


def test_webdataset_reads_the_shards(shards):
    import webdataset as wds

    ds = wds.WebDataset([str(p) for p in sorted(shards.glob("shard-*.tar"))], shardshuffle=False)
    samples = list(ds)
    assert len(samples) == 4
    assert np.load(io.BytesIO(samples[0]["moments.npy"])).shape == (8, 8, 8)


def test_rerun_skips_finished_shards_and_redoes_a_crashed_one(shards, photos, models):
    tars = sorted(shards.glob("shard-*.tar"))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tars}
    manifest = json.loads((shards / MANIFEST).read_text())
    run(_args(photos, shards, "--batch-size", "3"), models=models)
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tars} == before  # nothing rewritten

    # a crash after shard 1's tar was renamed but before its counts were written, with a stale temp file
    (shards / "shard-000001.json").unlink()
    (shards / ".shard-000001.tar.999.tmp").write_bytes(b"half a shard")
    summary = run_shards(FolderSource(photos, identity_from_folder=True), SampleProcessor(models, _prep()),
                         shards, shard_size=5, batch_size=4, progress=False)
    assert summary.done == [1] and summary.skipped == [0, 2] and summary.input == 5
    assert not list(shards.glob(".*.tmp"))
    assert (shards / "shard-000001.tar").read_bytes() == before["shard-000001.tar"][1]  # same content again
    again = write_manifest(shards, manifest["settings"], manifest["shapes"], 0.0)
    assert again["totals"] == manifest["totals"]


def _prep() -> PrepConfig:
    return PrepConfig(resolution=16, min_image_side=64, min_face_size=32)


def test_other_settings_refuse_the_folder(shards, photos, models):
    with pytest.raises(PrepError, match="other settings.*shard_size"):
        run(build_parser().parse_args(["--source", "folder", "--input", str(photos), "--identity-from-folder",
                                       "--out", str(shards), "--shard-size", "4", "--no-progress", *PREP]),
            models=models)


def test_ranks_split_the_work(photos, models, tmp_path):
    source = FolderSource(photos, identity_from_folder=True)
    processor = SampleProcessor(models, _prep())
    r0 = run_shards(source, processor, tmp_path, shard_size=5, rank=0, world=2, progress=False, limit=10)
    r1 = run_shards(source, processor, tmp_path, shard_size=5, rank=1, world=2, progress=False, limit=10)
    assert (r0.done, r1.done) == ([0], [1]) and r0.input == r1.input == 5
    assert ShardPlan(12, 5).for_rank(1, 2) == [1] and ShardPlan(12, 5).for_rank(0, 2) == [0, 2]
    assert shard_done(tmp_path, 0)["written"] + shard_done(tmp_path, 1)["written"] == 4


def test_processor_never_raises(models):
    class Exploding:
        def detect(self, *a, **k):
            raise RuntimeError("boom")

    proc = SampleProcessor(models, _prep())
    proc.faces = FaceAnalyzer(Exploding(), models.faces.recogniser, policy=proc.policy)
    img = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(img, format="PNG")
    samples, reasons = proc.process([RawSample("a", img.getvalue(), "x"), RawSample("b", None, "y", error="gone")])
    assert samples == [] and reasons == {"error": 1, "unreadable": 1}


def test_kept_photos_are_embedded_in_one_recogniser_call_as_one_at_a_time_would(models, photos):
    from data_prep.format import safe_key
    from data_prep.process import EMBED_BATCH
    from encoder.face_analysis import FaceRejected

    names = ["eileen/astronaut.png", "noise.png", "hanks/hanks_a.png", "hanks/hanks_b.jpg"]
    raws = [RawSample(n.replace("/", "_").replace(".", "_"), (photos / n).read_bytes(), "a photo") for n in names]
    proc = SampleProcessor(models, _prep(), threads=2)
    single = {safe_key(r.key, i): proc.prepare(r, i) for i, r in enumerate(raws)}
    keys = list(single)
    assert single[keys[1]] == "no_face"
    calls = []
    embed = proc.faces.embed_aligned

    def counting(crops):
        calls.append(len(crops))
        return embed(crops)

    proc.faces.embed_aligned = counting
    samples, reasons = proc.process(raws)
    assert calls == [9] and 3 <= EMBED_BATCH  # the 3 kept photos' faces, mirrors and augmented views at once
    assert [s["__key__"] for s in samples] == [keys[0], keys[2], keys[3]] and reasons == {"no_face": 1}
    for s in samples:
        one = single[s["__key__"]]
        a = decode_arrays(s, ("arcface", "arcface_flip", "arcface_aug"))
        np.testing.assert_allclose(a["arcface"], one.face.embedding, atol=2e-3)  # float16 in the shard
        np.testing.assert_allclose(a["arcface_flip"], one.face.embedding_flip, atol=2e-3)
        np.testing.assert_allclose(a["arcface_aug"], one.aug_embedding, atol=2e-3)

    # a recogniser failure on one photo's face costs that photo alone (the batch is redone one photo at a
    # time): an invalid embedding is its "no_face", an unexpected error its "error" (never fatal)
    bad = single[keys[2]].face.aligned

    def failing_on_bad(error):
        def embed_aligned(crops):
            if any(c.shape == bad.shape and np.array_equal(c, bad) for c in crops):
                raise error
            return embed(crops)
        return embed_aligned

    for error, expected in ((FaceRejected("recogniser returned an invalid embedding"), {"no_face": 2}),
                            (RuntimeError("boom"), {"no_face": 1, "error": 1})):
        proc.faces.embed_aligned = failing_on_bad(error)
        samples, reasons = proc.process(raws)
        assert [s["__key__"] for s in samples] == [keys[0], keys[3]] and reasons == expected, error


# ------------------------------------------------------------------------------------- the loader
def test_recogniser_calls_spread_a_batch_over_the_threads():
    from data_prep.process import EMBED_BATCH, EMBED_MIN, embed_chunk

    assert embed_chunk(256, 12) == 22  # 12 calls, one a thread (a fixed 64 made 4 and left 8 threads idle)
    assert embed_chunk(256, 1) == EMBED_BATCH and embed_chunk(10_000, 16) == EMBED_BATCH
    assert embed_chunk(3, 2) == EMBED_MIN and embed_chunk(0, 4) == EMBED_MIN  # small batches: one call


def test_read_ahead_keeps_order_raises_the_producers_error_and_stops_it_early():
    import threading
    import time

    assert list(read_ahead(batches(range(7), 3))) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(read_ahead([])) == []

    def failing():
        yield 1
        raise ValueError("render failed")

    got = []
    with pytest.raises(ValueError, match="render failed"):
        for x in read_ahead(failing()):
            got.append(x)
    assert got == [1]

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    before = threading.active_count()
    it = read_ahead(endless(), depth=2)
    assert [next(it), next(it)] == [0, 1]
    it.close()  # the consumer stops: the producer thread ends instead of filling memory
    time.sleep(0.3)
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n <= 5 and threading.active_count() == before


def test_loader_reads_back_shapes_and_dtypes_and_pairs(shards):
    paths = list_shards(str(shards))
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar"]  # shard 2 is empty
    stream = ShardStream(paths, batch_size=2, shapes=expected_shapes(UVIT), shuffle_buffer=1, shards_per_group=2)
    it = iter(stream)
    batches = [next(it) for _ in range(4)]  # two passes over the 4 samples
    b = batches[0]
    assert b["moments"].shape == (2, 8, 8, 8) and b["moments"].dtype.is_floating_point
    assert str(b["moments"].dtype) == "torch.float16" and str(b["text"].dtype) == "torch.float16"
    assert b["text"].shape == (2, 77, 8) and b["clip"].shape == (2, 16) and b["box"].shape == (2, 4)
    assert b["face"].shape == (2, 512) and str(b["face"].dtype) == "torch.float32"
    seen = [k for batch in batches[:2] for k in batch["keys"]]
    assert sorted(seen) == sorted(s["__key__"] for p in paths for s in read_shard(p))
    # each person's second photo (in stream order) is conditioned on their first
    samples = {s["__key__"]: s for p in paths for s in read_shard(p)}
    flat = [(k, f, p) for batch in batches[:2] for k, f, p in
            zip(batch["keys"], batch["face"], batch["paired"], strict=True)]
    paired = [x for x in flat if x[2]]
    assert len(paired) == 2
    for key, face, _ in paired:
        own = decode_arrays(samples[key], ("arcface",))["arcface"]
        assert not np.allclose(face.numpy(), own)
        ident = decode_meta(samples[key])["identity"]
        others = [decode_arrays(s, ("arcface",))["arcface"] for k, s in samples.items()
                  if k != key and decode_meta(s)["identity"] == ident]
        assert any(np.allclose(face.numpy(), o) for o in others)
    assert batches[1]["state"]["samples"] == 4 and batches[1]["state"]["paired"] == 2


def _rewrite(src: Path, dst: Path, edit) -> None:
    """Copy a shard, passing each (member name, bytes) through edit (None drops the member)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for info in tin:
            data = edit(info.name, tin.extractfile(info).read())
            if data is None:
                continue
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))


def test_corrupt_members_are_skipped_and_counted(shards, tmp_path):
    k0, k1 = [s["__key__"] for s in read_shard(shards / "shard-000000.tar")]
    k2, k3 = [s["__key__"] for s in read_shard(shards / "shard-000001.tar")]
    _rewrite(shards / "shard-000000.tar", tmp_path / "a.tar",  # undecodable member
             lambda name, data: b"garbage" * 10 if name == f"{k0}.moments.npy" else data)
    _rewrite(shards / "shard-000001.tar", tmp_path / "b.tar",  # missing member
             lambda name, data: None if name == f"{k2}.text.npy" else data)
    whole = (shards / "shard-000000.tar").read_bytes()
    (tmp_path / "c.tar").write_bytes(whole[: len(whole) * 3 // 4])  # truncated inside the second sample
    paths = [tmp_path / "a.tar", tmp_path / "b.tar", tmp_path / "c.tar"]
    stream = ShardStream(paths, batch_size=1, shapes=expected_shapes(UVIT), shuffle_buffer=1, shards_per_group=3)
    decoded = [stream._decode(item) for item in stream.group_items(paths, np.random.default_rng(0))]
    good = sorted(d["key"] for d in decoded if d is not None)
    assert good == sorted([k1, k3, k0])  # k0 once more: c.tar's first sample is intact
    assert decoded.count(None) == 3  # garbage member, missing member, damaged tail of c.tar
    it = iter(stream)
    states = [next(it)["state"] for _ in range(3)]  # one pass; the stream goes on (no exception)
    assert states[-1]["samples"] == 3 and states[-1]["corrupt"] >= 2
    assert next(it)["state"]["corrupt"] == 3


def test_shard_cut_between_members_reads_as_damaged_with_the_samples_lost(tmp_path):
    """A tar cut off at a member boundary reads as a shorter, valid tar: only the recorded count tells."""
    from data_prep.synthetic import shapes_for, write_synthetic

    write_synthetic(tmp_path, samples=6, shard_size=6, identities=2, shapes=shapes_for(UVIT), progress=False)
    tar = tmp_path / "shard-000000.tar"
    with tarfile.open(tar) as t:
        members = t.getmembers()
    tar.write_bytes(tar.read_bytes()[: members[len(members) // 2].offset])  # before sample 3's first header
    stream = ShardStream([tar], batch_size=1, shapes=expected_shapes(UVIT), shuffle_buffer=1)
    assert stream.recorded == {tar: 6}  # from the manifest
    *samples, damaged = read_shard(tar, stream.recorded[tar])
    assert len(samples) == 3 and isinstance(damaged, Damaged) and (damaged.read, damaged.lost) == (3, 3)
    assert "shard-000000.tar" in damaged.message and "3 sample(s) lost" in damaged.message
    assert list(read_shard(tar))[-1] == samples[-1]  # without a count nothing can tell
    it = iter(stream)
    batches = [next(it) for _ in range(6)]  # two passes: named once
    assert [b["damaged"] for b in batches].count([damaged.message]) == 1
    assert sum(len(b["damaged"]) for b in batches) == 1


def test_samples_of_other_shapes_count_as_corrupt(shards):
    paths = list_shards(str(shards))
    wrong = ShardStream(paths, batch_size=1, shapes=dict(expected_shapes(UVIT), text=(77, 64)), shuffle_buffer=1)
    items = list(wrong.group_items(paths, np.random.default_rng(0)))
    assert len(items) == 4 and all(wrong._decode(i) is None for i in items)
    with pytest.raises(DataError, match="no usable sample in a whole pass"):
        next(iter(wrong))  # a stream that can never yield says so instead of hanging


# ------------------------------------------------------------------------------------------ sources
def test_folder_source_jsonl_and_errors(photos, tmp_path):
    lines = [{"file": "eileen/astronaut.png", "caption": "c1", "identity": 7}, {"file": "missing.png"}, "x"]
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else "{not json" for x in lines))
    src = FolderSource(photos, captions_jsonl=jsonl, identity_from_folder=True)
    raws = list(src.read(0, 3))
    assert len(src) == 3 and [r.identity for r in raws] == ["7", None, None]
    assert raws[0].caption == "c1" and raws[0].image and raws[1].error and raws[2].error
    with pytest.raises(SourceError, match="does not exist"):
        FolderSource(tmp_path / "nope")
    secret = tmp_path / "secret.png"  # beside the image folder, not in it
    shutil.copy(photos / "eileen" / "astronaut.png", secret)
    for bad in (str(secret), "../secret.png", "eileen/../../secret.png", "C:\\images\\a.png"):
        jsonl.write_text(json.dumps({"file": "eileen/astronaut.png"}) + "\n" + json.dumps({"file": bad}) + "\n")
        with pytest.raises(SourceError, match=r"1 \"file\" entry outside the image folder .*line 2: ") as e:
            FolderSource(photos, captions_jsonl=jsonl)
        assert "relative to the image folder" in e.value.hint
    jsonl.write_text(json.dumps({"file": "eileen/./astronaut.png"}) + "\n" + json.dumps({"file": 5}) + "\n")
    raws = list(FolderSource(photos, captions_jsonl=jsonl).read(0, 2))
    assert raws[0].image and raws[1].error  # a non-string path is a bad line, not a crash
    txt = FolderSource(photos)
    assert len(txt) == 12 and list(txt.read(0, 1))[0].identity is None


def test_hf_disk_source(tmp_path):
    import datasets

    img = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()[:100, :100]).save(img, format="PNG")
    ds = datasets.Dataset.from_dict({"image": [{"bytes": img.getvalue(), "path": None}] * 3,
                                     "caption": ["a", "b", None], "person": ["p1", "p2", "p1"]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "caption": datasets.Value("string"),
                                                                "person": datasets.Value("string")}))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hf"))
    src = HFDiskSource(tmp_path / "hf", caption_column="caption", identity_column="person")
    raws = list(src.read(1, 10))
    assert len(src) == 3 and [r.key for r in raws] == ["row1", "row2"]
    assert raws[0].image == img.getvalue() and raws[0].caption == "b" and raws[1].caption is None
    assert [r.identity for r in raws] == ["p2", "p1"]
    with pytest.raises(SourceError, match="no column"):
        HFDiskSource(tmp_path / "hf", caption_column="text")


def _img2dataset_tar(path: Path, keys: list[str], with_txt=True) -> None:
    with tarfile.open(path, "w") as tar:
        for k in keys:
            img = io.BytesIO()
            Image.fromarray(np.full((20, 20, 3), 100, np.uint8)).save(img, format="JPEG")
            members = {"jpg": img.getvalue(), "json": json.dumps({"caption": f"json {k}", "person": k[-1]}).encode()}
            if with_txt:
                members["txt"] = f"caption {k}".encode()
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{k}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_tar_source_ranges_and_damage(tmp_path):
    _img2dataset_tar(tmp_path / "00000.tar", ["000000000", "000000001", "000000002"])
    _img2dataset_tar(tmp_path / "00001.tar", ["000010000", "000010001"], with_txt=False)
    _img2dataset_tar(tmp_path / "00002.tar", [f"00002000{i}" for i in range(4)])
    whole = (tmp_path / "00002.tar").read_bytes()
    (tmp_path / "00002.tar").write_bytes(whole[: int(len(whole) * 0.6)])
    src = TarSource(str(tmp_path / "{00000..00002}.tar"), identity_key="person", index_cache=tmp_path / "idx.json")
    assert src.counts[:2] == [3, 2] and src.damaged and (tmp_path / "idx.json").is_file()
    raws = list(src.read(2, len(src)))
    assert len(raws) == len(src) - 2
    assert raws[0].key == "00000.tar/000000002" and raws[0].caption == "caption 000000002"
    assert raws[1].caption == "json 000010000" and raws[1].identity == "0" and raws[1].image
    assert all(r.image is not None or r.error for r in raws)
    assert len(TarSource(tmp_path, index_cache=tmp_path / "idx.json")) == len(src)  # cached index
    with pytest.raises(SourceError, match="no .tar"):
        TarSource(str(tmp_path / "nothing*.tar"))


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--source" in out and "--shard-size" in out and "--identity-from-folder" in out


def test_cli_loads_models_from_files(weights, tmp_path, capsys):
    """The stand-in pack's marker detector: one marker = one face, two equal markers = several faces."""
    pack = make_pack(tmp_path / "pack")
    photos = tmp_path / "photos"
    grey = lambda: np.full((640, 640, 3), 128, np.uint8)  # noqa: E731 - the detector's input size
    _save(paint_marker(grey(), 30, 40), photos / "p" / "one.png")
    _save(paint_marker(paint_marker(grey(), 20, 20), 50, 50), photos / "two.png")
    _save(grey(), photos / "none.png")
    code = main(["--source", "folder", "--input", str(photos), "--identity-from-folder", "--out",
                 str(tmp_path / "out"), "--weights", str(weights), "--face-pack", str(pack), "--no-progress",
                 *PREP])
    assert code == 0
    m = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert m["totals"]["written"] == 1 and m["totals"]["rejected"] == {"several_faces": 1, "no_face": 1}
    assert "1 of 3 items kept" in capsys.readouterr().out
    missing = ["--source", "folder", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]
    assert run_cli(main, missing) == 2 and "does not exist" in capsys.readouterr().err


def test_npy_roundtrip():
    a = np.arange(6, dtype=np.float16).reshape(2, 3)
    np.testing.assert_array_equal(np.load(io.BytesIO(npy_bytes(a))), a)
