"""The identity diagnostic (pretrain.diagnostic): held-out samples, pairs, the derangement, exact zeros
for closed gates, the same draws at every validation and after resume, and a short run that learns
identity on a corpus built so that the tiny random backbone can use it."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.cluster import cluster_folder
from data_prep.format import ARRAY_MEMBERS, decode_arrays, decode_meta, encode_sample
from data_prep.shards import SHARD_STATS, SHARD_TAR, write_json, write_manifest, write_shard
from data_prep.synthetic import shapes_for, write_synthetic
from models.uvit import UViTConfig
from pretrain.config import PretrainConfig
from pretrain.data import DataError, list_shards, load_clusters, readable_samples
from pretrain.diagnostic import IdentityDiagnostic, derangement, read_held_out, verdict
from pretrain.model import build_backbone, build_identity
from pretrain.train import train
from pretrain.validation import split_shards

ROOT = Path(__file__).resolve().parent.parent
TINY = PretrainConfig.from_file(ROOT / "pretrain" / "configs" / "tiny.json")
UVIT = UViTConfig.from_dict(TINY.uvit)
LOG = logging.getLogger("test")



@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """2 shards x 16 samples, 8 people with 4 consecutive photos each."""
    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic(out, samples=32, shard_size=16, identities=8, shapes=shapes_for(UVIT), progress=False)
    return out


def coupled_corpus(out: Path, *, people: int = 8, shards: int = 4, per_shard: int = 32, amplitude: float = 80.0,
                   seed: int = 0) -> Path:
    """Shards whose latents depend on the face in a way a random tiny backbone can use.

    Person p has a random face direction and a sign per latent channel; a photo's latent mean is
    amplitude x that sign everywhere (plus a little noise), its ArcFace embedding the direction plus
    noise. The latents of different people differ so much that the frozen random backbone's
    prediction is pulled differently for each; cancelling that pull needs to know who it is. Photo i
    is of person i % people, so every shard (the held-out one too) holds every person.
    """
    out.mkdir(parents=True, exist_ok=True)
    shapes = shapes_for(UVIT)
    c, h, w = shapes["moments"][0] // 2, *shapes["moments"][1:]
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal((people, 512))
    signs = rng.choice([-1.0, 1.0], size=(people, c, 1, 1))
    unit = lambda v: (v / np.linalg.norm(v)).astype(np.float32)  # noqa: E731
    for s in range(shards):
        def samples(s=s):
            for i in range(s * per_shard, (s + 1) * per_shard):
                p, r = i % people, np.random.default_rng([seed, 1, i])
                emb = unit(direction[p] + 0.3 * r.standard_normal(512))
                mean = amplitude * signs[p] + 0.5 * r.standard_normal((c, h, w))
                arrays = {"moments": np.concatenate([mean, np.full((c, h, w), -8.0)]).astype(np.float16),
                          "text": r.standard_normal(shapes["text"]).astype(np.float16),
                          "clip": r.standard_normal(shapes["clip"]).astype(np.float32),
                          "arcface": emb, "arcface_flip": unit(emb + 0.05 * r.standard_normal(512)),
                          "arcface_aug": unit(emb + 0.05 * r.standard_normal(512)),
                          "box": np.array([1.0, 1.0, 6.0, 6.0], np.float32)}
                yield encode_sample(f"{i:09d}", arrays, "a photo", {"identity": f"person{p}"})

        written = write_shard(out / SHARD_TAR.format(s), samples())
        write_json(out / SHARD_STATS.format(s), {"shard": SHARD_TAR.format(s), "input": per_shard, "written": written,
                                                 "items": [s * per_shard, (s + 1) * per_shard], "rejected": {},
                                                 "seconds": 0.0})
    settings = {"source": {"kind": "test"}, "items": shards * per_shard, "shard_size": per_shard, "prep": {},
                "models": {}}
    write_manifest(out, settings, {k: {"shape": list(v), "dtype": ARRAY_MEMBERS[k].__name__}
                                   for k, v in shapes.items()}, 0.0)
    return out


# ------------------------------------------------------------------------------- held-out samples
def test_derangement_never_keeps_a_person():
    rng = np.random.default_rng(0)
    ids = ["a", "a", "b", "b", "b", "c", None, None]
    sigma = derangement(ids, rng)
    assert sorted(sigma.tolist()) == list(range(len(ids)))  # a permutation
    assert all(sigma[i] != i for i in range(len(ids)))
    assert all(ids[sigma[i]] != ids[i] or ids[i] is None for i in range(len(ids)))
    assert derangement(["a", "a", "a", "b"], rng) is None  # one person holds more than half
    assert derangement([None], rng) is None
    assert derangement([None, None], rng).tolist() == [1, 0]  # unknown people are people of their own


def test_held_out_pairs_and_other_people(synthetic):
    held = read_held_out(list_shards(str(synthetic)), 16, UVIT, seed=0)
    assert len(held) == 16 and held.how == ["paired"] * 16  # 8 people x 2: each the other's pair
    own = {}
    for raw in readable_samples(list_shards(str(synthetic))):
        own[raw["__key__"]] = (decode_meta(raw)["identity"], decode_arrays(raw, ("arcface",))["arcface"])
    person = {k: v[0] for k, v in own.items()}
    by_face = {tuple(np.round(v[1], 5)): v[0] for v in own.values()}
    for i, key in enumerate(held.keys):
        right = tuple(np.round(held.right[i].numpy(), 5))
        other = tuple(np.round(held.other[i].numpy(), 5))
        assert by_face[right] == person[key] and not np.allclose(held.right[i].numpy(), own[key][1])  # another photo
        assert by_face[other] != person[key]  # another person
    # unlabelled shards: the augmented view of the sample's own face
    unlabelled = synthetic.parent / "unlabelled"
    write_synthetic(unlabelled, samples=8, shard_size=8, identities=4, shapes=shapes_for(UVIT), labelled=False,
                    progress=False)
    held = read_held_out(list_shards(str(unlabelled)), 8, UVIT)
    assert held.how == ["augmented"] * 8
    # ... and, once clustered, another face of the sample's cluster
    cluster_folder(unlabelled)
    held = read_held_out(list_shards(str(unlabelled)), 8, UVIT, clusters=load_clusters(list_shards(str(unlabelled))))
    assert held.how == ["paired"] * 8 and held.keys == [f"{i:09d}" for i in range(8)]
    faces = [decode_arrays(raw, ("arcface",))["arcface"] for raw in readable_samples(list_shards(str(unlabelled)))]
    for i in range(8):  # 4 people, photos (0, 1), (2, 3), ...: the right face is the other photo of the pair
        np.testing.assert_array_equal(held.right[i].numpy(), faces[i ^ 1])
        assert not any(np.array_equal(held.other[i].numpy(), faces[j]) for j in (i, i ^ 1))
    assert read_held_out(list_shards(str(synthetic)), 16, dataclasses.replace(UVIT, text_dim=4)) \
        == "the validation shards hold fewer than two people among 0 usable sample(s)"


def test_validation_split(synthetic, tmp_path):
    shards = list_shards(str(synthetic))
    c = dataclasses.replace(TINY, shards=str(synthetic), val_holdout_shards=1)
    assert split_shards(shards, c) == (shards[:1], shards[1:], True)
    assert split_shards(shards, dataclasses.replace(c, val_holdout_shards=0)) == (shards, shards, False)
    assert split_shards(shards, dataclasses.replace(c, val_shards=str(shards[0]))) == (shards[1:], shards[:1], True)
    with pytest.raises(DataError, match="holding out 2 for validation leaves none"):
        split_shards(shards, dataclasses.replace(c, val_holdout_shards=2))


# ---------------------------------------------------------------------------------- measurements
@pytest.mark.parametrize("injection", ["extra_tokens", "text_slots"])
def test_closed_gates_give_exactly_zero_and_draws_are_fixed(synthetic, injection, one_thread):
    c = dataclasses.replace(TINY, injection=injection)
    uvit = build_backbone(c, torch.device("cpu"))
    identity = build_identity(c, uvit.config)  # zero gates: the backbone never sees the face
    diagnostic = IdentityDiagnostic.create(c, uvit.config, list_shards(str(synthetic)), torch.device("cpu"), LOG)
    r = diagnostic(uvit, identity)
    assert (r["id_gain"], r["id_gain_se"], r["generic_gain"], r["generic_gain_se"]) == (0.0, 0.0, 0.0, 0.0)
    assert r["loss_right"] == r["loss_other"] == r["loss_none"] > 0 and r["samples"] == 16
    assert verdict(r).startswith("within 2 standard errors of zero")
    with torch.no_grad():
        identity.gate.fill_(0.3)
    opened = diagnostic(uvit, identity)
    assert opened["loss_right"] != opened["loss_none"]  # the face now reaches the backbone
    # the same draws at every call, and for a diagnostic made afresh (a resumed run)
    again = IdentityDiagnostic.create(c, uvit.config, list_shards(str(synthetic)), torch.device("cpu"), LOG)
    assert diagnostic(uvit, identity) == opened == again(uvit, identity)


def test_resumed_run_logs_the_same_diagnostic(synthetic, tmp_path, one_thread):
    kw = dict(shards=str(synthetic), weights=str(tmp_path / "no_weights"), max_steps=4, val_every=2,
              checkpoint_every=2, log_every=2, lr=1e-2)
    train(dataclasses.replace(TINY, output_dir=str(tmp_path / "a"), **kw))
    train(dataclasses.replace(TINY, output_dir=str(tmp_path / "b"), stop_at_step=3, **kw))
    train(dataclasses.replace(TINY, output_dir=str(tmp_path / "b"), **kw))  # resumes from step 3's checkpoint
    records = [json.loads((tmp_path / run / "log.json").read_text())["records"] for run in ("a", "b")]
    identity = [[r for r in rs if r["kind"] == "identity"] for rs in records]
    assert [r["step"] for r in identity[0]] == [2, 4] and [r["step"] for r in identity[1]] == [2, 3, 4]
    assert identity[1][0] == identity[0][0] and identity[1][2] == identity[0][1]
    assert [r["step"] for r in records[1] if r["kind"] == "train"] == [2, 3, 4]
    meta = json.loads((tmp_path / "b" / "faceid_encoder" / "config.json").read_text())
    assert meta["identity_diagnostic"] == {k: v for k, v in identity[0][1].items() if k != "kind"}


def test_a_short_run_learns_identity_and_reports_it(tmp_path, one_thread):
    """On the coupled corpus, 100 steps: id_gain clearly above its standard error, reported to the
    text log, TensorBoard, the JSON log and the exported module."""
    data = coupled_corpus(tmp_path / "shards")
    c = dataclasses.replace(TINY, shards=str(data), output_dir=str(tmp_path / "run"), weights=str(tmp_path / "nw"),
                            batch_size=8, max_steps=100, warmup_steps=5, lr=1e-2, lr_schedule="constant",
                            shuffle_buffer=32, checkpoint_every=1000, log_every=50, val_every=50, val_samples=32,
                            val_holdout_shards=1, ema_decay=0.9, p_drop_id=0.1, p_drop_text=0.0, p_drop_both=0.0)
    train(c)
    run = tmp_path / "run"
    last = json.loads((run / "faceid_encoder" / "config.json").read_text())["identity_diagnostic"]
    assert last["step"] == 100 and last["samples"] == last["real_pairs"] == 32
    assert last["id_gain"] > 3 * last["id_gain_se"] > 0, last
    log = (run / "train.log").read_text()
    assert "validation: 1 shard(s) held out of training" in log
    assert "identity diagnostic at step 100" in log and "identity used" in log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("identity/id_gain")] == [50, 100]
    assert events.Scalars("identity/id_gain")[-1].value == pytest.approx(last["id_gain"])
    assert {"identity/generic_gain", "identity/id_gain_se", "identity/loss_none"} <= set(events.Tags()["scalars"])
