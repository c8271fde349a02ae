"""eval.ablation, eval.make_ablation_inputs and eval/notebooks/ablation.ipynb (executed headless)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from eval import ablation
from eval import make_ablation_inputs as mai
from models.errors import run_cli

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "eval" / "notebooks" / "ablation.ipynb"
SMALL = ["--num-tokens", "4", "16", "--injections", "extra_tokens", "text_slots", "--id-scales", "0.5", "1",
         "--cfgs", "7", "--refine-steps", "0", "20", "--identities", "boy1"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ablation")
    assert mai.main(["--synthetic", "--out", str(out)] + SMALL) == 0
    return out


def test_synthetic_results_load_and_aggregate(synthetic):
    files = sorted(synthetic.glob("*.json"))
    assert len(files) == 2 * 2 * 2 * 1 * 2
    (synthetic / "notes.json").write_text(json.dumps({"other": "file"}))  # not a result: skipped
    results = ablation.load_results(synthetic)
    assert len(results) == len(files) and {r.source for r in results} == {"synthetic"}
    assert ablation.varied_axes(results) == ["num_tokens", "injection", "id_scale", "refine_steps"]
    # marginal means against a direct reading of the files
    raw = [json.loads(f.read_text()) for f in files]
    for axis, metric in [("num_tokens", "face"), ("id_scale", "text"), ("injection", "clip_img"),
                         ("refine_steps", "copy_paste_gap")]:
        pts = ablation.marginal(results, axis, metric)
        for p in pts:
            sel = [(d["scores"] | d["metrics"])[metric] for d in raw if d["settings"][axis] == p.value]
            assert p.n == len(sel) and p.mean == pytest.approx(np.mean(sel)) and p.std == pytest.approx(np.std(sel))
    assert [p.value for p in ablation.marginal(results, "num_tokens", "face")] == [4, 16]
    assert [p.value for p in ablation.marginal(results, "injection", "face")] == ["extra_tokens", "text_slots"]
    text = ablation.results_table(results)
    assert text.count("\n") == len(results) + 1 and "num_tokens" in text
    assert "synthetic" in ablation.describe(results).lower()
    best = ablation.best_settings(results, "face", floor={"text": 0.0})
    assert best.values["face"] == max(r.values["face"] for r in results)
    assert ablation.best_settings(results, "face", floor={"text": 9.0}) is None


def test_plots_build(synthetic):
    import matplotlib

    matplotlib.use("Agg")
    results = ablation.load_results(synthetic)
    fig = ablation.plot_axes(results)
    assert len(fig.axes) == 4 and "SYNTHETIC" in fig._suptitle.get_text()
    fig2 = ablation.plot_tradeoff(results)
    assert len(fig2.axes[0].collections) == 2  # one scatter per identity scale


def test_malformed_and_missing_inputs(tmp_path):
    with pytest.raises(ablation.AblationError, match="does not exist"):
        ablation.load_results(tmp_path / "nope")
    with pytest.raises(ablation.AblationError, match="no ablation results"):
        ablation.load_results(tmp_path)
    bad = {"format": ablation.FORMAT, "version": 1, "settings": {"num_tokens": 4}, "scores": {}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ablation.AblationError, match="bad.json"):
        ablation.load_results(tmp_path)
    with pytest.raises(ablation.AblationError, match="settings lack"):
        ablation.make_result("p", {"num_tokens": 4}, {"face": 0, "clip_img": 0, "text": 0}, {})


def test_from_json_manifest(tmp_path):
    report = {"tasks": [{"task": "boy1", "identity": "boy1", "face": 0.4, "clip_img": 0.7, "text": 0.3}],
              "metrics": {"tasks": {"boy1": {"detection_rate": 0.9, "diversity_clip": 0.2, "diversity_face": 0.1,
                                             "copy_paste": {"gap": 0.05}}}}}
    (tmp_path / "score.json").write_text(json.dumps(report))
    settings = {"num_tokens": 8, "injection": "extra_tokens", "id_scale": 1.0, "cfg": 7.0, "refine_steps": 0}
    (tmp_path / "manifest.json").write_text(json.dumps([{"settings": settings, "score_json": "score.json"}]))
    assert mai.main(["--from-json", str(tmp_path / "manifest.json"), "--out", str(tmp_path / "out")]) == 0
    (r,) = ablation.load_results(tmp_path / "out")
    assert r.identity == "boy1" and r.settings == settings and r.source == "scored"
    assert r.values == {"face": 0.4, "clip_img": 0.7, "text": 0.3, "detection_rate": 0.9, "diversity_clip": 0.2,
                        "diversity_face": 0.1, "copy_paste_gap": 0.05}
    (tmp_path / "m2.json").write_text(json.dumps([{"settings": settings, "score_json": "missing.json"}]))
    assert run_cli(mai.main, ["--from-json", str(tmp_path / "m2.json"), "--out", str(tmp_path / "out")]) == 2


def _encoder(folder: Path, k: int, injection: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"config": {"num_tokens": k, "injection": injection}}))
    return folder


def test_real_grid_commands_scoring_and_resume(tmp_path, capsys):
    """The real-run loop with train.py / sample.py replaced by a runner that writes their outputs."""
    from scoring_world import build_pack, make_image, save, tiny_image_clip

    from eval.competition_faces import CompetitionFaces
    from eval.competition_scorer import CompetitionScorer

    ident = tmp_path / "train_data" / "boy1"
    for i in range(2):
        save(make_image(512, 512, [(0, 256, 256, 1.0)], 80 + i), ident / f"{i}.jpg", "JPEG")
    prompts = tmp_path / "boy1.json"
    prompts.write_text(json.dumps(["a boy", "a boy at sea"]))
    encs = [str(_encoder(tmp_path / "enc_k4", 4, "extra_tokens")), str(_encoder(tmp_path / "enc_k8", 8, "text_slots"))]
    points = mai.grid(encs, id_scales=[0.5, 1.0], cfgs=[7.0], refine_steps=[0])
    assert [(p.num_tokens, p.injection, p.id_scale) for p in points] == [
        (4, "extra_tokens", 0.5), (4, "extra_tokens", 1.0), (8, "text_slots", 0.5), (8, "text_slots", 1.0)]
    calls = []

    def runner(cmd):
        calls.append(cmd)
        if cmd[1].endswith("train.py"):
            out = Path(cmd[cmd.index("-o") + 1])
            out.mkdir(parents=True)
            (out / "identity.json").write_text("{}")
        else:
            out = Path(cmd[cmd.index("--output_path") + 1])
            scale = float(cmd[cmd.index("--id-scale") + 1])
            for i in range(2):
                for k in range(3):
                    faces = [(0, 256, 256, 1.0)] if scale >= 1 or k == 0 else []
                    save(make_image(512, 512, faces, 200 + 10 * i + k), out / f"{i}-{k:03}.jpg")

    scorer = CompetitionScorer(CompetitionFaces.from_pack(build_pack(tmp_path / "pack"),
                                                          providers=["CPUExecutionProvider"]), tiny_image_clip())
    out, work = tmp_path / "results", tmp_path / "work"
    written = mai.run_grid(points, ident, prompts, out, work, scorer, weights="W", runner=runner)
    assert len(written) == 4
    trains = [c for c in calls if c[1].endswith("train.py")]
    samples = [c for c in calls if c[1].endswith("sample.py")]
    assert len(trains) == 2 and len(samples) == 4  # one record per encoder, shared by its scales
    assert trains[0][trains[0].index("--encoder") + 1] == encs[0] and "--weights" in samples[0]
    assert samples[1][samples[1].index("--id-scale") + 1] == "1"
    results = ablation.load_results(out)
    by_scale = {r.settings["id_scale"]: r for r in results if r.settings["num_tokens"] == 4}
    assert by_scale[1.0].values["detection_rate"] == 1.0
    assert by_scale[0.5].values["detection_rate"] == pytest.approx(1 / 3)  # one face in 3 images
    # the scores are the scorer's on the written images
    refs = scorer.references(ident)
    task = scorer.score_task(Path(json.loads(written[0].read_text())["images"]), ["a boy", "a boy at sea"], refs)
    assert by_scale[0.5].values["face"] == pytest.approx(task.mean("face"))
    # a rerun keeps finished results and runs nothing
    calls.clear()
    assert mai.run_grid(points, ident, prompts, out, work, scorer, runner=runner) == [] and calls == []
    # dry run: commands only
    capsys.readouterr()
    mai.run_grid(points[:1], ident, prompts, out, work, None, dry_run=True)
    assert "sample.py" in capsys.readouterr().out


def test_notebook_executes_headless(synthetic, tmp_path, monkeypatch):
    """The notebook runs top to bottom in a fresh kernel on the synthetic results."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "def " not in code and "class " not in code and "import numpy" not in code  # package code only
    monkeypatch.setenv("ABLATION_RESULTS", str(synthetic))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    client = NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "16 results" in text and "synthetic" in text.lower()
    pngs = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(pngs) == 3
