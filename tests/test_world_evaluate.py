"""pretrain.world.evaluate: the world's quality JSON on a tiny world with random weights (CPU, seconds)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.world.evaluate import CLASSIFY_TIMESTEPS, GUIDANCE_GRID, STEPS_GRID, frechet_distance, held_out_prompts


def test_frechet_distance_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = rng.normal(size=6)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    # b = 2 (a - mean): covariance 4 S, so tr(S + 4 S - 2 (4 S^2)^(1/2)) = tr(S); plus |mean|^2
    b = 2 * (a - a.mean(0))
    s = np.cov(a, rowvar=False)
    expected = float(a.mean(0) @ a.mean(0) + np.trace(s))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        frechet_distance(a, a[:, :3])


def test_held_out_prompts_state_exactly_their_pair():
    from data_prep.faceworld.attributes import ATTRIBUTES, CLASS_WORDS, HELD_OUT, class_word_of, parse_caption

    items = held_out_prompts(7)
    pairs = {tuple(map(tuple, it["pair"])) for it in items}
    assert len(pairs) == len(HELD_OUT) >= 8
    assert {n for pair in pairs for n, _ in pair} == set(ATTRIBUTES)  # every attribute is covered
    for it in items:
        assert parse_caption(it["prompt"]) == it["wanted"] == dict(map(tuple, it["pair"]))
        assert class_word_of(it["prompt"]) == it["class_word"]
    assert {it["class_word"] for it in items} == set(CLASS_WORDS)
    assert held_out_prompts(7) == items  # deterministic


def test_single_attribute_prompts_state_one_detail_or_only_the_class_word():
    from data_prep.faceworld.attributes import ATTRIBUTES, CLASS_WORDS, class_word_of, parse_caption
    from pretrain.world.evaluate import DETAILS, single_attribute_prompts

    items = single_attribute_prompts(7)
    asked = {(n, v) for it in items for n, v in it["wanted"].items()}
    assert asked == {(n, v) for n in DETAILS for v in ATTRIBUTES[n] if v not in ("none", "neutral")}
    for it in items:
        assert parse_caption(it["prompt"]) == it["wanted"] and len(it["wanted"]) <= 1
        assert class_word_of(it["prompt"]) == it["class_word"]
    assert sorted(it["class_word"] for it in items if not it["wanted"]) == sorted(CLASS_WORDS)
    assert single_attribute_prompts(7) == items


def _tiny_world(root: Path) -> Path:
    """A world folder with random tiny weights of every part (backbone, pixel space, world-CLIP, face packs,
    attribute classifier), in the layout the stages export."""
    from tiny_world import make_tiny_world

    from pretrain.world import faces as F
    from pretrain.world.attributes import EXPORT_DIR, AttributeClassifier, AttributeNet, AttributeNetConfig

    make_tiny_world(root)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AttributeClassifier(AttributeNet(AttributeNetConfig.tiny())).save(root / EXPORT_DIR)
        F.export_recogniser(F.Recogniser(F.TINY_CONDITIONING.net).eval(), root / F.PACK_DIR / F.RECOGNISER_FILE)
        F.export_detector(F.Detector(F.TINY_DETECTOR.net).eval(), root / F.PACK_DIR / F.DETECTOR_FILE)
        F.write_pack_json(root / F.PACK_DIR, "faceworld")
        F.export_recogniser(F.Recogniser(F.TINY_EVALUATION.net).eval(), root / F.EVAL_PACK_DIR / F.RECOGNISER_FILE)
        F.write_pack_json(root / F.EVAL_PACK_DIR, "faceworld-eval")
    return root


def test_evaluate_writes_every_key(tmp_path: Path, one_thread, capsys, monkeypatch):
    from test_world_faces import TruthDetector

    from data_prep.faceworld.attributes import ATTRIBUTES
    from encoder.face_analysis import FaceAnalyzer
    from pretrain.world import faces as F
    from pretrain.world.__main__ import main
    from pretrain.world.attributes import CLASS_WORD, vocabularies
    from pretrain.world.evaluate import EvalConfig

    world = _tiny_world(tmp_path / "world")
    # the random detector finds no faces: the renderer's true landmarks stand in for it (real recognisers)
    tiny = EvalConfig.tiny()
    photos, _, landmarks = F.render_test_photos(3, tiny.identities, tiny.renders)
    real = F.load_world_analyzer

    def analyzer(world_dir, recogniser="conditioning", providers=None):
        pack = real(world_dir, recogniser, providers)
        return FaceAnalyzer(TruthDetector(photos, landmarks), pack.recogniser, policy=pack.policy)

    monkeypatch.setattr(F, "load_world_analyzer", analyzer)
    out = tmp_path / "results" / "world_foundation.json"
    argv = ["evaluate", "--world", str(world), "--seed", "3", "--out", str(out), "--tiny"]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert set(data["tar_at_far_1e-3"]) == {"conditioning", "evaluation"}
    assert all(0.0 <= v <= 1.0 for v in data["tar_at_far_1e-3"].values())
    assert 0.0 <= data["colour_histogram_tar_at_far_1e-3"] <= 1.0
    pairs = tiny.identities * tiny.renders * (tiny.renders - 1) // 2
    for report in data["verification"].values():
        assert report["detected"] == 1.0 and report["identities"] == tiny.identities
        assert report["recogniser"]["same"]["pairs"] == pairs and report["recogniser"]["different"]["pairs"] > 0
    assert data["renderer_seed"] == 3 and data["test_identities"]["split"] == "test"
    assert "pretrain.world evaluate" in data["commands"]["evaluate"] and "--seed 3" in data["commands"]["evaluate"]
    assert data["git_commit"]
    assert set(data["attribute_accuracy"]) == set(vocabularies())
    # the pixel space keeps every render: the classifier reads its reconstructions as it reads the renders
    assert data["reconstruction_attribute_accuracy"] == data["reconstruction"]["attribute_accuracy_of_renders"]
    # (one gain of 1: decode(latent(x)) is x itself, no error, so no PSNR)
    assert data["reconstruction"]["mean_abs_error"] == 0.0 and data["reconstruction"]["psnr_db"] is None
    assert data["reconstruction"]["autoencoder"] == "PixelSpace"
    kept = data["reconstruction"]["identity"]
    assert kept["renders"] == tiny.identities and kept["render_and_reconstruction"] > 0.999
    assert kept["reconstruction_and_other_render"] == pytest.approx(kept["two_renders_of_a_person"], abs=1e-3)
    assert all(v is None or 0.0 <= v <= 1.0 for v in data["attribute_accuracy"].values())
    success = data["text_to_image_attribute_success"]
    assert set(ATTRIBUTES) | {CLASS_WORD, "overall", "overall_with_class_word"} == set(success)
    assert data["text_to_image"]["combinations"] >= 8
    by_pair = data["text_to_image"]["success_by_pair"]  # each held-out pair's prompts, scored on their own
    assert set(by_pair) == set(data["text_to_image"]["prompts"])
    for key, rates in by_pair.items():
        assert set(rates) == {n.split("=")[0] for n in key.split(" + ")} | {CLASS_WORD, "overall",
                                                                           "overall_with_class_word"}
    assert success["overall"] == pytest.approx(np.mean([r["overall"] for r in by_pair.values()]))
    ceiling = data["text_to_image_ceiling"]  # the same pairs, rendered
    assert set(ceiling["by_pair"]) == set(by_pair) and ceiling["renders_per_pair"] == tiny.ceiling_renders
    assert set(data["single_attribute_success"]) == set(data["single_attribute_unasked"])
    assert {k.split("=")[0] for k in data["single_attribute_success"]} == {"hat", "glasses", "expression"}
    assert all(0.0 <= v <= 1.0 for part in ("single_attribute_success", "single_attribute_unasked")
               for v in data[part].values())
    assert set(data["clip_attribute_accuracy"]) == set(ATTRIBUTES)
    assert all(0.0 <= v <= 1.0 for v in data["clip_attribute_accuracy"].values())
    assert data["clip_attributes"]["renders"] == tiny.clip_renders
    assert set(data["clip_text_cosine"]) == set(ATTRIBUTES) == set(data["clip_image_probe"])
    assert data["backbone_attributes"]["renders"] == tiny.classify_renders
    assert set(data["backbone_attribute_accuracy"]) <= set(ATTRIBUTES) and "expression" in data[
        "backbone_attribute_accuracy"]
    assert set(data["backbone_attribute_accuracy_by_timestep"]) == {str(t) for t in CLASSIFY_TIMESTEPS}
    assert set(data["backbone_attribute_accuracy_face_box"]) == set(data["backbone_attribute_accuracy"])
    assert all(v >= 0 for v in data["backbone_text_distance"].values())
    assert all(0.0 <= v <= 1.0 for v in data["backbone_attribute_accuracy"].values())
    energy = data["attribute_energy"]
    assert set(ATTRIBUTES) - {"hat_color"} <= set(energy) <= set(ATTRIBUTES)  # a hat colour needs a hat
    assert all(v["latent_share"] > 0 and v["pixel_share"] > 0 and 0 < v["pixels_changed"] <= 1
               for v in energy.values())
    grid = data["frechet_world_clip"]
    assert set(grid) == {str(s) for s in STEPS_GRID}
    assert all(set(row) == {f"{g:g}" for g in GUIDANCE_GRID} for row in grid.values())
    assert all(np.isfinite(v) and v >= 0 for row in grid.values() for v in row.values())
    assert data["frechet_world_clip_real_vs_real"] >= 0
    dependence = data["text_dependence"]["r2_mean_colour"]
    assert set(dependence) == {"800", "900", "950", "1000"}
    assert all(set(row) == {"own_caption", "shuffled_caption", "noise_image"} and all(np.isfinite(v) and v <= 1.0
               for v in row.values()) for row in dependence.values())
    captions = data["captions"]  # the tiny world's context (24 tokens) as the committed one's
    assert captions["count"] == tiny.captions and captions["context_words"] == 22
    assert 0.0 <= captions["longer_than_context"] < 0.2 and captions["words_max"] >= captions["words_mean"] > 5
    assert set(captions["stated"]) == set(captions["lost_when_stated"]) <= set(ATTRIBUTES)
    assert all(0.0 <= v <= 1.0 for part in ("stated", "lost_when_stated") for v in captions[part].values())
    sizes = data["demo_parts_mb"]
    files = [p for p in world.rglob("*") if p.is_file()]
    assert len(sizes["files"]) == len(files)
    unique = {p.read_bytes(): p.stat().st_size for p in files}
    assert sizes["total"] == pytest.approx(sum(unique.values()) / 1e6, abs=1e-3)
    assert len(sizes["copies"]) == len(files) - len(unique)
    assert "frechet_world_clip" in capsys.readouterr().out

    # --include: the GPU's sections of an earlier run join a later run's JSON, checked before anything runs
    from models.errors import UserError

    gpu = tmp_path / "results" / "t2i.json"
    assert main(["evaluate", "--world", str(world), "--seed", "3", "--out", str(gpu), "--tiny",
                 "--only", "text_to_image,frechet", "--headline-only", "--steps", "2", "--guidance", "3",
                 "--frechet-images", "4"]) == 0
    made = json.loads(gpu.read_text())
    assert list(made["frechet_world_clip"]) == ["2"] and list(made["frechet_world_clip"]["2"]) == ["3"]
    assert made["frechet"]["images"] == 4  # --headline-only: frechet at --steps and --guidance alone
    gpu.write_text(json.dumps({**made, "git_commit": "abc"}))  # as if made elsewhere
    both = tmp_path / "results" / "both.json"
    assert main(["evaluate", "--world", str(world), "--seed", "3", "--out", str(both), "--tiny", "--only", "sizes",
                 "--include", str(gpu)]) == 0
    merged = json.loads(both.read_text())
    assert merged["sections"] == ["sizes", "text_to_image", "frechet"]
    for key in ("frechet_world_clip", "frechet_world_clip_real_vs_real", "text_to_image_attribute_success"):
        assert merged[key] == made[key]
    assert merged["demo_parts_mb"]["total"] == sizes["total"] and "attribute_accuracy" not in merged
    assert merged["included"][0]["git_commit"] == "abc" and merged["git_commit"] == data["git_commit"]
    assert merged["included"][0]["commands"] == made["commands"]
    for flag in ("--t2i-images", "--classify-renders"):  # refused while the command line is parsed
        with pytest.raises(SystemExit) as e:
            main(["evaluate", "--world", str(world), "--seed", "3", "--out", str(both), "--tiny", "--only", "sizes",
                  flag, "0"])
        assert e.value.code == 2 and f"argument {flag}: must be at least 1" in capsys.readouterr().err
    # a section both measure is this run's (its keys, SECTION_KEYS); the earlier JSON gives the others
    assert main(["evaluate", "--world", str(world), "--seed", "3", "--out", str(both), "--tiny", "--only", "frechet",
                 "--include", str(gpu)]) == 0
    merged = json.loads(both.read_text())
    assert merged["sections"] == ["frechet", "text_to_image"] and merged["included"][0]["sections"] == ["text_to_image"]
    assert list(merged["frechet_world_clip"]) == [str(s) for s in STEPS_GRID]  # this run's grid, not the headline
    assert merged["text_to_image"] == made["text_to_image"]
    with pytest.raises(UserError, match="measured by this run too: it would add nothing"):
        main(["evaluate", "--world", str(world), "--seed", "3", "--out", str(both), "--tiny", "--only",
              "text_to_image,frechet,sizes", "--include", str(gpu)])
    with pytest.raises(UserError, match="renderer seed"):
        main(["evaluate", "--world", str(world), "--seed", "4", "--out", str(both), "--tiny", "--only", "sizes",
              "--include", str(gpu)])
    gpu.write_text(json.dumps({**made, "world_sha256": {"models/uvit_v1.safetensors": "0"}}))
    with pytest.raises(UserError, match="other backbone files"):
        main(["evaluate", "--world", str(world), "--seed", "3", "--out", str(both), "--tiny", "--only", "sizes",
              "--include", str(gpu)])
    # the configs (and the sampler policy they hold) are part of what was measured
    assert "model_configs.json" in made["world_sha256"] and made["sampler"] == {"final_denoise": False}
    weights_only = {k: v for k, v in made["world_sha256"].items() if k != "model_configs.json"}
    gpu.write_text(json.dumps({**made, "world_sha256": weights_only}))  # as a JSON made before it was hashed
    with pytest.raises(UserError, match="does not record the model_configs.json"):
        main(["evaluate", "--world", str(world), "--seed", "3", "--out", str(both), "--tiny", "--only", "sizes",
              "--include", str(gpu)])
    gpu.write_text(json.dumps(made))
    configs = world / "model_configs.json"
    configs.write_text(json.dumps({**json.loads(configs.read_text()), "sampler": {"final_denoise": True}}))
    with pytest.raises(UserError, match="other backbone files"):
        main(["evaluate", "--world", str(world), "--seed", "3", "--out", str(both), "--tiny", "--only", "sizes",
              "--include", str(gpu)])


def test_folder_sizes_count_each_content_once(tmp_path: Path):
    from pretrain.world.evaluate import folder_sizes

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "weights.bin").write_bytes(b"x" * 3_000_000)
    (tmp_path / "b" / "same.bin").write_bytes(b"x" * 3_000_000)  # the same bytes: counted once
    (tmp_path / "b" / "other.bin").write_bytes(b"y" * 1_000_000)
    sizes = folder_sizes([tmp_path / "a", tmp_path / "b"])
    assert sizes["files"] == {str(tmp_path / "a" / "weights.bin"): 3.0, str(tmp_path / "b" / "other.bin"): 1.0,
                              str(tmp_path / "b" / "same.bin"): 3.0}
    assert sizes["copies"] == {str(tmp_path / "b" / "same.bin"): str(tmp_path / "a" / "weights.bin")}
    assert sizes["total"] == 4.0


def test_attribute_variants_keep_the_hat_colour_rule():
    from data_prep.faceworld.attributes import ATTRIBUTES
    from pretrain.world.evaluate import attribute_variants

    bare = {"scene": "beach", "hat": "none", "hat_color": None, "glasses": "none", "clothing": "red",
            "expression": "neutral", "style": "photo"}
    hats = attribute_variants(bare, "hat")
    assert [v["hat"] for v in hats] == list(ATTRIBUTES["hat"])
    assert hats[0]["hat_color"] is None and all(v["hat_color"] == ATTRIBUTES["hat_color"][0] for v in hats[1:])
    capped = {**bare, "hat": "cap", "hat_color": "blue"}
    assert [v["hat_color"] for v in attribute_variants(capped, "hat")] == [None] + ["blue"] * 5
    smiles = attribute_variants(capped, "expression")
    assert [v["expression"] for v in smiles] == list(ATTRIBUTES["expression"])
    assert all({**v, "expression": "neutral"} == {**capped, "expression": "neutral"} for v in smiles)


def test_clip_attributes_scores_what_the_image_text_model_tells_apart():
    """A stand-in model that sees only the expression: expression accuracy 1; every other attribute's captions
    tie, so the first value wins, and the accuracy is the share of renders that have it."""
    import dataclasses

    from data_prep.faceworld.attributes import ATTRIBUTES, parse_caption, split_range
    from data_prep.faceworld.render import FaceWorld
    from pretrain.world.evaluate import EvalConfig, evaluate_clip_attributes

    cfg = dataclasses.replace(EvalConfig.tiny(), clip_renders=40)  # enough for the probe to see every expression
    lo, _ = split_range("test")
    truth = FaceWorld(5, 64, "cpu").render(lo + np.arange(cfg.clip_renders), 1).attributes
    values = ATTRIBUTES["expression"]

    class SeesExpressions:
        def embed_images(self, images, batch_size=64):
            assert len(images) == len(truth)
            return torch.eye(3)[[values.index(a["expression"]) for a in truth]]

        def embed_texts(self, texts):
            return torch.eye(3)[[values.index(parse_caption(t)["expression"]) for t in texts]]

    out = evaluate_clip_attributes(SeesExpressions(), 5, cfg, torch.device("cpu"))
    acc = out["clip_attribute_accuracy"]
    assert acc["expression"] == 1.0
    for name in ("scene", "glasses", "clothing", "style", "hat"):
        assert acc[name] == pytest.approx(np.mean([a[name] == ATTRIBUTES[name][0] for a in truth]))
    assert out["clip_attributes"]["chance"]["expression"] == pytest.approx(1 / 3)
    probe = out["clip_image_probe"]
    assert probe["expression"]["accuracy"] == 1.0  # the stand-in's image embedding is the expression
    assert set(probe) == set(ATTRIBUTES) and all(0.0 <= v["majority"] <= 1.0 for v in probe.values())
    cos = out["clip_text_cosine"]
    assert cos["expression"] == pytest.approx(0.0) and cos["scene"] == pytest.approx(1.0)  # one-hot texts


def test_backbone_attributes_scores_what_the_backbone_ties_to_its_words(tmp_path: Path, one_thread, monkeypatch):
    """A stand-in UViT that predicts the noise exactly when the caption states the render's own expression and
    misses by far otherwise: expression accuracy 1 at every timestep; every other attribute's captions state
    the true expression, tie, and the first value wins (accuracy: the share of renders that have it)."""
    import dataclasses

    import models.world_clip
    from data_prep.faceworld.attributes import ATTRIBUTES, parse_caption, split_range
    from data_prep.faceworld.render import FaceWorld
    from models.pipeline import UniDiffuserT2I
    from models.pixels import to_signed
    from pretrain.world.evaluate import EvalConfig, evaluate_backbone_attributes

    world = _tiny_world(tmp_path / "world")
    pipe = UniDiffuserT2I.from_pretrained(world, device="cpu", dtype=torch.float32)
    cfg = dataclasses.replace(EvalConfig.tiny(), classify_renders=12)
    lo, _ = split_range("test")
    truth = FaceWorld(5, pipe.image_size, "cpu").render(lo + np.arange(cfg.classify_renders), 1)
    z0 = pipe.autoencoder.encode(to_signed(truth.images)).float()
    values = ATTRIBUTES["expression"]

    class Tokenizer:  # a caption's "token": its expression's index
        def __call__(self, texts):
            return torch.tensor([values.index(parse_caption(t)["expression"]) for t in texts])

    class Clip:
        def text_features(self, ids):
            return ids.float()[:, None, None]

        def encode_image(self, pixels):
            return torch.zeros(len(pixels), 4)

    monkeypatch.setattr(models.world_clip, "load_world_clip", lambda folder, device, dtype: (Tokenizer(), Clip()))
    calls = []

    class StandIn(torch.nn.Module):
        config = pipe.uvit.config

        def forward(self, z, clip_n, text, t_img, t_text, data_type):
            i = len(calls) // len(CLASSIFY_TIMESTEPS)  # one call per (render, timestep), renders in order
            calls.append(int(t_img[0]))
            ab = float(pipe.schedule.alphas_cumprod[int(t_img[0])])
            eps = (z - ab ** 0.5 * z0[i]) / (1 - ab) ** 0.5
            wrong = text[:, 0, 0] != values.index(truth.attributes[i]["expression"])
            return eps + 10.0 * wrong[:, None, None, None], clip_n, text

    pipe.uvit = StandIn()
    out = evaluate_backbone_attributes(world, pipe, 5, cfg, torch.device("cpu"))
    assert calls == list(CLASSIFY_TIMESTEPS) * cfg.classify_renders
    assert out["backbone_attribute_accuracy"]["expression"] == 1.0
    assert all(row["expression"] == 1.0 for row in out["backbone_attribute_accuracy_by_timestep"].values())
    for name in ("scene", "glasses", "clothing", "style", "hat"):
        first = np.mean([a[name] == ATTRIBUTES[name][0] for a in truth.attributes])
        assert out["backbone_attribute_accuracy"][name] == pytest.approx(first)
    assert out["backbone_attribute_accuracy_face_box"]["expression"] == 1.0
    # the text features are the expression's index: 0, 1, 2 -> mean pairwise distance 4/3 over mean norm 1
    assert out["backbone_text_distance"]["expression"] == pytest.approx(4 / 3)
    assert all(out["backbone_text_distance"][n] == 0.0 for n in ("scene", "glasses", "clothing", "style"))
    assert out["backbone_attributes"]["renders_per_attribute"]["expression"] == cfg.classify_renders
    assert out["backbone_attributes"]["chance"]["expression"] == pytest.approx(1 / 3)


def test_attribute_energy_measures_each_attribute_s_change_through_the_autoencoder(tmp_path: Path):
    """Through the tiny world's pixel space (one gain, 1: the latent is the image) the latent and pixel shares
    agree; the scene, which repaints most of the picture, outweighs the glasses, a few pixels of the face."""
    import dataclasses

    from tiny_world import make_tiny_world

    from models.pipeline import UniDiffuserT2I
    from pretrain.world.evaluate import EvalConfig, evaluate_attribute_energy

    pipe = UniDiffuserT2I.from_pretrained(make_tiny_world(tmp_path / "world"), device="cpu", dtype=torch.float32)
    cfg = dataclasses.replace(EvalConfig.tiny(), energy_renders=24, energy_level_gains=((1.0,), (1.0, 1.0, 0.3)))
    out = evaluate_attribute_energy(pipe, 5, cfg, torch.device("cpu"))
    energy = out["attribute_energy"]
    for name, row in energy.items():
        assert row["latent_share"] == pytest.approx(row["pixel_share"], rel=1e-4), name
        assert row["latent_share_level_gains"]["1"] == pytest.approx(row["latent_share"], rel=1e-4), name
    # coarse bands turned down: the glasses' fine lines are more of what is left
    assert energy["glasses"]["latent_share_level_gains"]["1,1,0.3"] > energy["glasses"]["latent_share"]
    assert energy["scene"]["latent_share"] > 5 * energy["glasses"]["latent_share"] > 0
    assert energy["scene"]["pixels_changed"] > energy["glasses"]["pixels_changed"] > 0
    assert energy["expression"]["pairs"] == 2 * cfg.energy_renders  # every other value of three, in turn
    for w in ("4", "16"):  # weighing the face box raises what the glasses' pixels are worth, not the scene's
        assert energy["glasses"]["latent_share_face_weight"][w] > energy["glasses"]["latent_share"]
        assert energy["scene"]["latent_share_face_weight"][w] < energy["scene"]["latent_share"]
    assert energy["glasses"]["latent_share_face_weight"]["16"] > energy["glasses"]["latent_share_face_weight"]["4"]
    assert out["attribute_energy_setup"]["renders"] == cfg.energy_renders


def test_linear_probe_reads_a_feature_that_carries_the_label_and_not_one_that_does_not():
    from pretrain.world.evaluate import linear_probe

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (400,), generator=g)
    noise = torch.randn(400, 8, generator=g)
    carried = torch.cat([torch.nn.functional.one_hot(labels, 3).float() * 3, noise], dim=1)
    assert linear_probe(carried, labels, 3)["accuracy"] > 0.95
    blind = linear_probe(noise, labels, 3)
    assert blind["accuracy"] < blind["majority"] + 0.1


def test_reconstruction_scores_what_an_autoencoder_keeps():
    """A stand-in autoencoder that keeps only each image's mean colour: its reconstructions lose the
    expression a stand-in classifier reads from the face's pixels (mouth, eyes), and their error is large."""
    from types import SimpleNamespace

    from torch import nn

    from data_prep.faceworld.attributes import ATTRIBUTES, split_range
    from data_prep.faceworld.render import FaceWorld
    from pretrain.world.evaluate import EvalConfig, evaluate_reconstruction

    class MeanColour(nn.Module):
        config = SimpleNamespace(scale_factor=2.0)

        def encode_moments(self, x):
            mean = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
            return torch.cat([mean, torch.zeros_like(mean)], dim=1)

        def latent(self, x):  # as AutoencoderKL.latent: the scaled posterior mean
            return self.config.scale_factor * self.encode_moments(x).chunk(2, dim=1)[0]

        def decode(self, z):
            return z / self.config.scale_factor

    class ReadsDetail:  # "smiling" when the image has sharp detail, else "neutral"; other heads fixed
        config = SimpleNamespace(head_names=["expression", "scene"])

        def predict(self, images, batch_size=512, raw=False):
            detail = images.float().std(dim=(1, 2)).mean(dim=-1)  # within each channel
            return [{"expression": "smiling" if d > 5 else "neutral", "scene": ATTRIBUTES["scene"][0]}
                    for d in detail]

    cfg = dataclasses.replace(EvalConfig.tiny(), attribute_renders=24)
    out = evaluate_reconstruction(MeanColour(), "here", ReadsDetail(), 5, cfg, torch.device("cpu"))
    setup = out["reconstruction"]
    assert setup["renders"] == 24 and setup["autoencoder"] == "MeanColour" and setup["from"] == "here"
    lo, _ = split_range("test")
    truth = FaceWorld(5, 64).render(lo + np.arange(24) // 2, np.arange(24) % 2).attributes
    share = {v: np.mean([t["expression"] == v for t in truth]) for v in ("smiling", "neutral")}
    assert setup["attribute_accuracy_of_renders"]["expression"] == pytest.approx(share["smiling"])
    assert out["reconstruction_attribute_accuracy"]["expression"] == pytest.approx(share["neutral"])
    assert setup["mean_abs_error"] > 0.05 and setup["psnr_db"] < 25


def test_t2i_ceiling_scores_renders_of_each_held_out_pair():
    """A stand-in classifier that reads every render's true attributes, except glasses in a sketch (as one
    trained without the held-out pairs): the ceiling is 1 for every pair but glasses + sketch, both as rendered
    and through an autoencoder that keeps everything."""
    from types import SimpleNamespace

    from torch import nn

    from data_prep.faceworld.attributes import HELD_OUT, split_range
    from data_prep.faceworld.render import FaceWorld
    from pretrain.world.evaluate import EvalConfig, evaluate_t2i_ceiling

    cfg = dataclasses.replace(EvalConfig.tiny(), ceiling_renders=5, batch=3)  # two batches a pair
    lo, _ = split_range("test")
    world = FaceWorld(9, 64)
    truth = {}
    for p, pair in enumerate(HELD_OUT):
        b = world.render(lo + p * 5 + np.arange(5), 0, dict(pair))
        for image, attrs, word in zip(b.images, b.attributes, b.class_words):
            truth[image.numpy().tobytes()] = {**attrs, "class_word": word}

    class Blind:
        config = SimpleNamespace(head_names=["glasses", "style"])

        def predict(self, images, batch_size=512, raw=False):
            out = []
            for image in images:
                t = dict(truth[image.numpy().tobytes()])
                if t["style"] == "sketch":
                    t["glasses"] = "none"
                out.append(t)
            return out

    class Keeps(nn.Module):  # the identity as an autoencoder
        def latent(self, x):
            return x

        def decode(self, z):
            return z

    out = evaluate_t2i_ceiling(Keeps(), "here", Blind(), 9, cfg, torch.device("cpu"))["text_to_image_ceiling"]
    assert out["renders_per_pair"] == 5 and out["latent_space"] == "here"
    sketch = "glasses=glasses + style=sketch"
    assert set(out["by_pair"]) == {" + ".join(f"{n}={v}" for n, v in pair) for pair in HELD_OUT}
    for key, rates in out["by_pair"].items():
        assert rates == ({"renders": 0.0, "reconstructions": 0.0} if key == sketch
                         else {"renders": 1.0, "reconstructions": 1.0})
    for kind in ("renders", "reconstructions"):
        assert out[kind]["overall"] == pytest.approx(1 - 1 / len(HELD_OUT))
        assert out[kind]["style"] == 1.0 and out[kind]["class_word"] == 1.0
