"""eval.competition_scorer / eval.score: the competition's preliminary-round numbers on images the test makes.

Face models are ONNX files in insightface's signatures (eval/bench/standin_faces.py), CLIP is a tiny
open_clip model built from a config. Expected numbers are computed independently through
insightface's and open_clip's own calls (tests/scoring_world.py) with the competition's arithmetic
written out here, not through the scorer's aggregation.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scoring_world import DirectModels, build_pack, make_image, save, tiny_image_clip

from eval.competition_faces import CompetitionFaceConfig, CompetitionFaces, pick_face
from eval.competition_scorer import CompetitionScorer, References, ScoreError, parse_task
from models.errors import run_cli

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # insightface face_align, reference path
TOL = 1e-5
PROMPTS = {
    "alice": ["a girl", "a girl on the beach"],
    "alice_sim": ["a photo of a girl", "a closer look of a girl"],
    "alice_edit": ["a girl who raised her hands", "a sitting girl"],
    "bob_sim": ["a boy", "a handsome boy"],
    "bob_edit": ["a boy in a spacesuit", "a boy riding a horse"],
}
PERSON = {"alice": 0, "bob": 1}


def _write_outputs(out: Path, task: str, person: int, other: int, seed: int) -> None:
    """Two prompts x 3 images, plus a 4th image the scorer must ignore; prompt 1 holds the hard cases."""
    d = out / task
    save(make_image(512, 512, [(person, 256, 250, 1.0)], seed), d / "0-000.jpg")  # PNG bytes, .jpg name
    save(make_image(512, 512, [(person, 200, 300, 0.9)], seed + 1), d / "0-001.jpg", "JPEG")
    save(make_image(512, 512, [], seed + 2), d / "0-002.jpg", "JPEG")  # no face
    # two faces: the central weaker one is the competition's pick, the stronger off-centre one is not
    save(make_image(512, 512, [(person, 256, 256, 0.7), (other, 96, 420, 1.0)], seed + 3), d / "1-000.jpg")
    # 1-001.jpg missing
    (d / "1-002.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")  # broken
    save(make_image(512, 512, [(person, 256, 256, 1.0)], seed + 4), d / "1-003.jpg")  # k = 3: not scored


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    pack = build_pack(root / "buffalo_l")
    train = root / "train_data"
    # alice: .jpg and .jpeg references of different sizes, one without a face, one ignored (.png)
    save(make_image(800, 600, [(0, 400, 300, 1.0)], 11), train / "alice" / "a.jpg", "JPEG")
    save(make_image(640, 640, [(0, 320, 320, 1.0)], 12), train / "alice" / "b.jpeg", "JPEG")
    save(make_image(480, 640, [], 13), train / "alice" / "c.jpg", "JPEG")
    save(make_image(640, 640, [(1, 320, 320, 1.0)], 14), train / "alice" / "d.png")
    # bob: one unreadable reference
    save(make_image(640, 640, [(1, 320, 320, 1.0)], 21), train / "bob" / "x.jpg", "JPEG")
    save(make_image(700, 560, [(1, 300, 280, 0.8)], 22), train / "bob" / "y.jpeg", "JPEG")
    (train / "bob" / "z.jpg").write_bytes(b"not an image")
    prompts, outputs = root / "eval_prompts", root / "outputs"
    prompts.mkdir()
    for i, (task, plist) in enumerate(PROMPTS.items()):
        (prompts / f"{task}.json").write_text(json.dumps(plist))
        _, identity, _ = parse_task(task)
        person = PERSON[identity]
        _write_outputs(outputs, task, person, 1 - person, seed=100 + 10 * i)
    faces = CompetitionFaces.from_pack(pack, providers=["CPUExecutionProvider"])
    scorer = CompetitionScorer(faces, tiny_image_clip())
    report = scorer.score_tree(outputs, prompts, train, progress=False)
    return SimpleNamespace(root=root, pack=pack, train=train, prompts=prompts, outputs=outputs,
                           scorer=scorer, report=report, direct=DirectModels(pack))


# ----------------------------------------------------------------------- independent computation
def _readable(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:
        return False


def expected_task(direct: DirectModels, out_dir: Path, prompts: list[str], ref_dir: Path):
    """The competition's arithmetic: per image [face, clip, text] or zeros, mean per prompt, mean of prompts."""
    refs = [p for p in sorted(ref_dir.iterdir()) if p.suffix in (".jpg", ".jpeg") and _readable(p)]
    ref_clip = np.stack([direct.clip_image(p) for p in refs])
    ref_face = [e for e in (direct.face(p) for p in refs) if e is not None]
    per_image, per_prompt = {}, []
    for i, prompt in enumerate(prompts):
        text = direct.clip_text(prompt)
        scores = []
        for k in range(3):
            path = out_dir / f"{i}-{k:03}.jpg"
            try:
                c = direct.clip_image(path)
                f = direct.face(path)
                face = 0.0 if f is None else max(0.0, max(float(r @ f) for r in ref_face))
                s = [face, max(0.0, float(np.max(ref_clip @ c))), max(0.0, float(c @ text))]
            except Exception:
                s = [0.0, 0.0, 0.0]
            per_image[path.name] = s
            scores.append(s)
        per_prompt.append(np.mean(scores, axis=0))
    return per_image, per_prompt, np.mean(per_prompt, axis=0)


# ------------------------------------------------------------------------------------------ tests
def test_image_prompt_and_task_scores_match_direct_computation(world):
    for task in world.report.tasks:
        ref_dir = world.train / task.identity
        per_image, per_prompt, task_mean = expected_task(world.direct, Path(task.output_dir),
                                                         PROMPTS[task.task], ref_dir)
        assert len(task.prompts) == 2 and all(len(p.images) == 3 for p in task.prompts)
        for p in task.prompts:
            for im in p.images:
                want = per_image[Path(im.file).name]
                np.testing.assert_allclose([im.face, im.clip_img, im.text], want, atol=TOL, err_msg=im.file)
            np.testing.assert_allclose([p.mean(k) for k in ("face", "clip_img", "text")], per_prompt[p.index],
                                       atol=TOL)
        np.testing.assert_allclose([task.mean(k) for k in ("face", "clip_img", "text")], task_mean, atol=TOL)
        # the cases are really exercised: a face found in the central face of the two-face image,
        # a faceless image with non-zero CLIP scores, and positive identity similarity
        images = {Path(im.file).name: im for im in task.images}
        assert images["0-000.jpg"].face > 0.3
        assert not images["0-002.jpg"].face_found and images["0-002.jpg"].clip_img > 0
        assert images["1-000.jpg"].face_found and images["1-000.jpg"].face > 0.3


def test_missing_and_broken_images_score_zero(world):
    task = next(t for t in world.report.tasks if t.task == "alice")
    images = {Path(im.file).name: im for im in task.images}
    assert set(images) == {"0-000.jpg", "0-001.jpg", "0-002.jpg", "1-000.jpg", "1-001.jpg", "1-002.jpg"}
    assert images["1-001.jpg"].status == "missing"
    assert images["1-002.jpg"].status.startswith("unreadable")
    for name in ("1-001.jpg", "1-002.jpg"):
        assert (images[name].face, images[name].clip_img, images[name].text) == (0.0, 0.0, 0.0)
    assert any("missing or unreadable" in w for w in world.report.warnings)


def test_summary_plain_and_five_numbers(world):
    means = {}
    for task, plist in PROMPTS.items():
        _, identity, _ = parse_task(task)
        means[task] = expected_task(world.direct, world.outputs / task, plist, world.train / identity)[2]
    summary = world.report.summary()
    np.testing.assert_allclose([summary["plain"][k] for k in ("face", "clip_img", "text")], means["alice"],
                               atol=TOL)
    five = summary["five"]
    sim = np.mean([means["alice_sim"], means["bob_sim"]], axis=0)
    edit = np.mean([means["alice_edit"], means["bob_edit"]], axis=0)
    np.testing.assert_allclose(
        [five["reproduction_face"], five["reproduction_clip_img"], five["editing_face"],
         five["editing_clip_img"], five["editing_text"]],
        [sim[0], sim[1], edit[0], edit[1], edit[2]], atol=TOL)
    assert five["identities_sim"] == 2 and five["identities_edit"] == 2


def test_references_jpg_and_jpeg_only(world):
    alice, bob = world.report.references["alice"], world.report.references["bob"]
    assert alice.files == ["a.jpg", "b.jpeg", "c.jpg"] and alice.ignored == ["d.png"]
    assert alice.face_files == ["a.jpg", "b.jpeg"] and alice.no_face == ["c.jpg"]
    assert alice.clip.shape == (3, 32) and alice.face.shape == (2, 512)
    assert bob.files == ["x.jpg", "y.jpeg"] and [f for f, _ in bob.unreadable] == ["z.jpg"]
    warnings = " | ".join(world.report.warnings)
    assert "d.png" in warnings and "z.jpg" in warnings and "c.jpg" in warnings


def test_report_json_is_complete(world, tmp_path):
    from models.atomic import write_json_atomic

    path = write_json_atomic(tmp_path / "r.json", world.report.to_json())
    data = json.loads(path.read_text())
    assert set(data["summary"]) == {"plain", "five"}
    assert [t["task"] for t in data["tasks"]] == sorted(PROMPTS)
    t0 = data["tasks"][0]
    assert {"face", "clip_img", "text", "prompts"} <= set(t0)
    assert len(t0["prompts"][1]["images"]) == 3 and t0["prompts"][1]["images"][1]["status"] == "missing"
    assert not list(tmp_path.glob(".*.tmp"))


def test_competition_face_choice_is_central_not_strongest(world):
    """max_num=1 keeps the largest-and-most-central face; "first" keeps the highest score."""
    img = make_image(512, 512, [(0, 256, 256, 0.7), (1, 96, 420, 1.0)], 5)
    central = world.scorer.faces.face(img)
    faces = world.scorer.faces.analyzer.analyze_all(img)
    assert len(faces) == 2 and faces[0].det_score > faces[1].det_score
    np.testing.assert_array_equal(central.box, faces[1].box)
    np.testing.assert_allclose(central.embedding, faces[1].embedding, atol=1e-6)
    assert pick_face(faces, img.shape[:2], "first") is faces[0]
    first = CompetitionFaces(world.scorer.faces.analyzer, CompetitionFaceConfig(select="first"))
    assert first.face(img).det_score == pytest.approx(faces[0].det_score)
    assert world.scorer.faces.face(make_image(512, 512, [(0, 256, 256, 0.45)], 6)) is None  # below 0.5


def test_missing_output_folder_stops_unless_allowed(world, tmp_path):
    prompts = tmp_path / "p"
    prompts.mkdir()
    (prompts / "alice.json").write_text(json.dumps(["a girl"]))
    with pytest.raises(ScoreError, match="--allow-missing"):
        world.scorer.score_tree(tmp_path / "nothing", prompts, world.train, progress=False)
    report = world.scorer.score_tree(tmp_path / "nothing", prompts, world.train, allow_missing=True,
                                     progress=False)
    assert report.summary()["plain"]["face"] == 0.0 and report.summary()["plain"]["text"] == 0.0
    with pytest.raises(ScoreError, match="training photos"):
        world.scorer.score_tree(world.outputs, prompts, tmp_path, progress=False)
    with pytest.raises(ScoreError, match="no readable reference"):
        world.scorer.references(world.prompts)


def test_clipping_at_zero_and_no_face_references(tmp_path):
    """Negative cosines score 0; with no face reference every face score is 0."""
    from PIL import Image

    class Clip:
        def embed_images(self, images):
            return torch.tensor([[-1.0, 0.2, 0.0]] * len(images))

        def embed_texts(self, texts):
            return torch.tensor([[1.0, 0.0, 0.0]] * len(texts))

    class Faces:
        def face(self, img):
            return SimpleNamespace(embedding=np.array([0.0, 1.0]), size=40.0)

    scorer = CompetitionScorer(Faces(), Clip())
    path = tmp_path / "0-000.jpg"
    Image.new("RGB", (32, 32)).save(path, format="PNG")
    refs = References("p", tmp_path, ["r.jpg"], clip=np.array([[1.0, 0.0, 0.0]]), face_files=["r.jpg"],
                      face=np.array([[0.0, -1.0]]))
    (s,) = scorer.score_images([path], ["x"], refs)
    assert s.status == "ok" and s.face_found
    assert (s.face, s.clip_img, s.text) == (0.0, 0.0, 0.0)
    refs = References("p", tmp_path, ["r.jpg"], clip=np.array([[-0.6, 0.8, 0.0]]), face_files=[],
                      face=np.zeros((0, 2)))
    (s,) = scorer.score_images([path], ["x"], refs)
    assert s.face == 0.0 and s.clip_img == pytest.approx((0.6 + 0.16) / np.hypot(1.0, 0.2))


def test_parse_task():
    assert parse_task("eval_prompts/boy1.json") == ("boy1", "boy1", "plain")
    assert parse_task("girl2_sim.json") == ("girl2_sim", "girl2", "sim")
    assert parse_task("girl2_edit.json") == ("girl2_edit", "girl2", "edit")
    assert parse_task("_sim.json") == ("_sim", "_sim", "plain")


def test_cli_scores_an_outputs_tree(world, tmp_path, monkeypatch, capsys):
    """`python -m eval.score` end to end (CLIP file loading replaced by the tiny model)."""
    from eval import score
    from models.image_clip import ImageCLIP

    monkeypatch.setattr(ImageCLIP, "from_file", classmethod(lambda cls, path, device=None: tiny_image_clip()))
    clip_file = tmp_path / "ViT-B-32.pt"
    clip_file.write_bytes(b"stand-in")
    out = tmp_path / "results.json"
    rc = score.main(["--outputs", str(world.outputs), "--prompts", str(world.prompts), "--train-data",
                     str(world.train), "--json", str(out), "--clip", str(clip_file), "--face-pack",
                     str(world.pack), "--device", "cpu", "--tasks", "alice,bob_sim", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "per prompt" in printed and "per identity" in printed and "identity metrics" in printed
    data = json.loads(out.read_text())
    assert [t["task"] for t in data["tasks"]] == ["alice", "bob_sim"]
    alice = next(t for t in world.report.tasks if t.task == "alice")
    assert data["summary"]["plain"]["face"] == pytest.approx(alice.mean("face"), abs=1e-9)
    assert data["metrics"]["tasks"]["alice"]["images"] == 6 and "eval.score" in data["command"]
    # a clear error for missing weights
    rc = run_cli(score.main, ["--outputs", str(world.outputs), "--prompts", str(world.prompts), "--train-data",
                              str(world.train), "--clip", str(tmp_path / "none.pt"), "--face-pack", str(world.pack)])
    assert rc == 2 and "none.pt" in capsys.readouterr().err
