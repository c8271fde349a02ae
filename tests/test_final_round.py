"""eval.final_round and eval.prompt_fidelity: the final-round arithmetic on hand-made numbers, the
per-image face term on test images, the ImageReward fallback, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from scoring_world import build_pack, make_image, save, tiny_image_clip

from eval.final_round import (
    Bounds,
    FinalItem,
    FinalRoundConfig,
    FinalRoundScorer,
    caption_score,
    final_total,
    normalise,
)
from eval.prompt_fidelity import ClipTextFidelity, ImageRewardUnavailable, find_image_reward, load_prompt_fidelity
from models.errors import run_cli

B = Bounds(face_min=0.2, face_max=0.8, fidelity_min=-0.5, fidelity_max=1.5)


def test_normalise():
    assert normalise(0.5, 0.0, 2.0) == 0.25
    assert normalise(-1.0, 0.0, 2.0) == -0.5
    assert np.isnan(normalise(1.0, 1.0, 1.0)) and np.isnan(normalise(float("nan"), 0.0, 1.0))


def test_caption_arithmetic_and_counting_rule():
    # face: mean of the 3 detected = 0.6 -> (0.6 - 0.2) / 0.6; fidelity: mean 0.5 -> (0.5 + 0.5) / 2
    c = caption_score("p", "a boy", [0.5, 0.6, None, 0.7], [1.0, 0.5, 0.0, 0.5], B)
    assert c.n_faces == 3 and c.face == pytest.approx(0.6) and c.fidelity == pytest.approx(0.5)
    assert c.face_norm == pytest.approx(0.4 / 0.6) and c.fidelity_norm == pytest.approx(0.5)
    assert c.counted and c.reason == ""
    one_face = caption_score("p", "x", [0.9, None, None, None], [1.0] * 4, B)
    assert not one_face.counted and "1 faces" in one_face.reason
    # exactly at the threshold does not count ("exceed 0.1"): face 0.26 -> 0.1
    at = caption_score("p", "x", [0.26, 0.26, None, None], [1.5] * 4, B)
    assert at.face_norm == pytest.approx(0.1) and not at.counted
    low_fid = caption_score("p", "x", [0.8] * 4, [-0.4] * 4, B)  # fidelity_norm 0.05
    assert not low_fid.counted and "fidelity" in low_fid.reason
    flat = caption_score("p", "x", [0.8] * 4, [1.0] * 4, Bounds(0.2, 0.2, 0.0, 1.0))
    assert not flat.counted and "range" in flat.reason
    broken = caption_score("p", "x", [0.8, 0.8, 0.8, None], [1.0, 1.0, 1.0, None], B,
                           statuses=["ok", "ok", "ok", "missing"])
    assert not broken.counted and "missing" in broken.reason
    three = caption_score("p", "x", [0.8] * 3, [1.0] * 3, B)
    assert not three.counted and "4 needed" in three.reason
    above = caption_score("p", "y", [0.8, 0.8, 0.8, 0.8], [1.5, 1.5, 1.5, 1.5], B)  # both normalised to 1
    total = final_total([c, one_face, at, low_fid, flat, above])
    assert total["counted"] == 2 and total["captions"] == 6
    assert total["face_sum"] == pytest.approx(0.4 / 0.6 + 1.0)
    assert total["fidelity_sum"] == pytest.approx(0.5 + 1.0)
    assert total["final"] == pytest.approx(2.5 * (0.4 / 0.6 + 1.0) + 1.5)
    assert final_total([c], FinalRoundConfig(face_weight=1.0))["final"] == pytest.approx(0.4 / 0.6 + 0.5)


class _Faces:
    """Face 'embedding' read from the image: the mean colour (so the test knows every cosine)."""

    def face(self, img):
        m = np.asarray(img, dtype=np.float64).reshape(-1, 3).mean(axis=0)
        return None if m.sum() == 0 else SimpleNamespace(embedding=m, size=50.0)


class _Fidelity:
    name = "image_reward"
    label = "fake"

    def __call__(self, prompt, images):
        return [float(len(prompt)) / 10 + i for i, _ in enumerate(images)]


def _solid(path: Path, rgb) -> Path:
    Image.new("RGB", (24, 24), tuple(rgb)).save(path, format="PNG")
    return path


def test_scorer_face_term_is_mean_over_references(tmp_path):
    refs = [_solid(tmp_path / "r0.png", (255, 0, 0)), _solid(tmp_path / "r1.png", (0, 255, 0)),
            _solid(tmp_path / "r2.png", (0, 0, 0))]  # r2: no face
    gen = [_solid(tmp_path / "g0.png", (255, 255, 0)), _solid(tmp_path / "g1.png", (255, 0, 0)),
           _solid(tmp_path / "g2.png", (0, 0, 0)), tmp_path / "missing.png"]
    scorer = FinalRoundScorer(_Faces(), _Fidelity())
    faces, fids, statuses = scorer.image_scores("abc", gen, scorer.reference_faces(refs))
    s2 = 1 / np.sqrt(2)
    assert faces[0] == pytest.approx((s2 + s2) / 2) and faces[1] == pytest.approx((1 + 0) / 2)
    assert faces[2] is None and faces[3] is None
    assert statuses == ["ok", "ok", "ok", "missing"]
    assert fids == [pytest.approx(0.3), pytest.approx(1.3), pytest.approx(2.3), None]
    item = FinalItem("p", refs, ["abc"])
    (c,) = scorer.score_item(item, {"abc": gen[:3] + [gen[0]]}, {"abc": Bounds(0.0, 1.0, 0.0, 10.0)})
    assert c.n_faces == 3 and c.face == pytest.approx(np.mean([s2, 0.5, s2])) and c.counted
    bounds = scorer.measure_bounds(item, {"abc": gen[:2]})["abc"]
    assert bounds["min_face_sim"] == pytest.approx((s2 + 0.5) / 2)
    assert bounds["max_face_sim"] == pytest.approx(0.0)  # red vs green references: orthogonal
    assert bounds["min_image_reward"] == pytest.approx(0.8) and bounds["max_image_reward"] == pytest.approx(1.3)


def test_image_reward_unavailable_reasons_and_fallback(tmp_path):
    with pytest.raises(ImageRewardUnavailable, match="ImageReward.pt") as e:
        find_image_reward(tmp_path / "nowhere")
    assert str(e.value).startswith("ImageReward unavailable: ")
    folder = tmp_path / "ImageReward"
    folder.mkdir()
    (folder / "ImageReward.pt").write_bytes(b"x")
    (folder / "med_config.json").write_text("{}")
    assert find_image_reward(folder) == folder
    with pytest.raises(ImageRewardUnavailable):  # no image-reward package here (or a bogus file)
        load_prompt_fidelity("image_reward", image_reward=folder)
    clip = tiny_image_clip()
    fid, note = load_prompt_fidelity("auto", image_reward=tmp_path / "nowhere", clip=clip)
    assert isinstance(fid, ClipTextFidelity) and fid.name == "clip_text" and "stand-in" in fid.label
    assert note.startswith("ImageReward unavailable: ")
    with pytest.raises(ImageRewardUnavailable):
        load_prompt_fidelity("auto", image_reward=tmp_path / "nowhere")  # no CLIP to fall back on
    img = _solid(tmp_path / "a.png", (10, 200, 30))
    (score,) = fid("a boy", [img])
    e = clip.embed_images([Image.open(img)])[0].double()
    t = clip.embed_texts(["a boy"])[0].double()
    assert score == pytest.approx(max(0.0, float(e @ t / e.norm() / t.norm())), abs=1e-6)


class _FakeImageReward(torch.nn.Module):
    """Stands for image-reward's ImageReward: a text encoder with BERT's position ids, and a head."""

    def __init__(self, med_config: str, device: str):
        super().__init__()
        self.blip = torch.nn.Module()
        self.blip.text_encoder = torch.nn.Module()
        self.blip.text_encoder.embeddings = torch.nn.Linear(3, 3)
        self.blip.text_encoder.embeddings.register_buffer("position_ids", torch.arange(4)[None])
        self.mlp = torch.nn.Linear(3, 1)

    def score(self, prompt: str, path: str) -> float:
        return float(self.mlp.bias)


def test_image_reward_checkpoint_is_loaded_strictly(tmp_path, monkeypatch):
    import sys
    import types

    package = types.ModuleType("ImageReward")
    package.ImageReward = types.ModuleType("ImageReward.ImageReward")
    package.ImageReward.ImageReward = _FakeImageReward
    monkeypatch.setitem(sys.modules, "ImageReward", package)
    monkeypatch.setitem(sys.modules, "ImageReward.ImageReward", package.ImageReward)
    folder = tmp_path / "ImageReward"
    folder.mkdir()
    (folder / "med_config.json").write_text("{}")
    full = {k: torch.full_like(v, 0.5) for k, v in _FakeImageReward("", "cpu").state_dict().items()}

    def load(state):
        torch.save(state, folder / "ImageReward.pt")
        return load_prompt_fidelity("image_reward", image_reward=folder)

    fid, note = load(full)
    assert note is None and fid("a boy", ["x.png"]) == [0.5]
    del full["blip.text_encoder.embeddings.position_ids"]  # the one known difference is tolerated
    assert load(full)[0]("a boy", ["x.png"]) == [0.5]
    with pytest.raises(ImageRewardUnavailable, match=r"1 of the model's 5 weights missing \(e.g. \['mlp.bias'\]\)"):
        load({k: v for k, v in full.items() if k != "mlp.bias"})  # one weight of five missing: refused
    with pytest.raises(ImageRewardUnavailable, match=r"1 unknown entries \(e.g. \['mlp2.weight'\]\)"):
        load({**full, "mlp2.weight": torch.zeros(1)})


def test_cli_end_to_end(tmp_path, monkeypatch, capsys):
    from eval import final_round
    from models.image_clip import ImageCLIP

    monkeypatch.setattr(ImageCLIP, "from_file", classmethod(lambda cls, path, device=None: tiny_image_clip()))
    clip_file = tmp_path / "ViT-B-32.pt"
    clip_file.write_bytes(b"stand-in")
    pack = build_pack(tmp_path / "buffalo_l")
    data = tmp_path / "data"
    for i in range(2):
        save(make_image(512, 512, [(0, 256, 256, 1.0)], 50 + i), data / f"ref{i}.jpg", "JPEG")
    for k in range(4):
        save(make_image(512, 512, [(0, 250, 260, 1.0)] if k != 3 else [], 60 + k), data / "gen" / f"{k}.jpg")
        save(make_image(512, 512, [(1, 250, 260, 1.0)], 70 + k), data / "base" / f"{k}.jpg")
    for name in ("items", "generated", "baseline"):
        (tmp_path / name).mkdir()
    (tmp_path / "items" / "p.json").write_text(json.dumps(
        {"id": "p", "class_word": "boy", "source_group": [{"path": str(data / f"ref{i}.jpg")} for i in range(2)],
         "caption_list": ["a boy"]}))
    (tmp_path / "generated" / "p.json").write_text(json.dumps(
        {"id": "p", "images": [{"prompt": "a boy", "paths": [f"../data/gen/{k}.jpg" for k in range(4)]}]}))
    (tmp_path / "baseline" / "p.json").write_text(json.dumps(
        {"id": "p", "images": [{"prompt": "a boy", "paths": [f"../data/base/{k}.jpg" for k in range(4)]}]}))
    common = ["--items", str(tmp_path / "items"), "--clip", str(clip_file), "--face-pack", str(pack),
              "--fidelity", "clip_text", "--device", "cpu"]
    assert final_round.main(common + ["--baseline", str(tmp_path / "baseline"),
                                      "--make-bounds", str(tmp_path / "bounds")]) == 0
    bounds = json.loads((tmp_path / "bounds" / "p.json").read_text())
    b = bounds["images"][0]
    assert bounds["fidelity"] == "clip_text" and {"min_text_sim", "max_text_sim", "min_face_sim"} <= set(b)
    out = tmp_path / "final.json"
    assert final_round.main(common + ["--generated", str(tmp_path / "generated"), "--bounds",
                                      str(tmp_path / "bounds"), "--json", str(out)]) == 0
    printed = capsys.readouterr()
    assert "CLIP ViT-B/32 text score" in printed.out and "final = 2.5 x" in printed.out
    report = json.loads(out.read_text())
    (cap,) = report["captions"]
    assert cap["n_faces"] == 3 and cap["statuses"] == ["ok"] * 4
    want = caption_score("p", "a boy", cap["face_scores"], cap["fidelity_scores"],
                         Bounds(b["min_face_sim"], b["max_face_sim"], b["min_text_sim"], b["max_text_sim"]))
    assert cap["face_norm"] == pytest.approx(want.face_norm) and cap["counted"] == want.counted
    assert report["total"]["final"] == pytest.approx(final_total([want])["final"])
    assert run_cli(final_round.main, ["--items", str(tmp_path / "items")]) == 2
    assert "pass --generated and --bounds" in capsys.readouterr().err
