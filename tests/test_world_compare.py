"""eval.world_compare: two eval.world runs of one method on the same people, paired per identity."""

import json

import pytest

from eval.world import HEADLINE
from eval.world_compare import compare, main
from models.errors import UserError


def _run(root, identity_gain, seeds=2, people=("p0", "p1", "p2", "p3"), seed=9):
    """An eval.world-shaped folder whose encoder units score identity 0.1 * i + identity_gain for person i."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "faceworld.json").write_text(json.dumps(
        {"seed": seed, "split": "test", "people": [{"identity": 100 + i} for i in range(len(people))]}))
    (root / "prompts").mkdir()
    for i, name in enumerate(people):
        (root / "prompts" / f"{name}.json").write_text(json.dumps(["a photo of a man"] * seeds))
        for j in range(seeds):
            path = root / "scores" / "encoder" / "p3" / f"s{j}" / f"{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            value = 0.1 * i + identity_gain + 0.01 * j
            means = {layout: {metric: value for metric in HEADLINE} for layout in ("all", "edit")}
            path.write_text(json.dumps({"name": name, "identity": 100 + i, "means": means}))
    return root


def test_paired_difference_cancels_each_persons_level(tmp_path):
    a, b = _run(tmp_path / "a", 0.0), _run(tmp_path / "b", 0.05)
    r = compare(a, b)
    assert r["identities"] == 4 and r["sampling_seeds"] == 2
    d = r["b - a"]["identity_similarity"]
    assert d["mean"] == pytest.approx(0.05) and d["lo"] == pytest.approx(0.05) and d["hi"] == pytest.approx(0.05)
    assert r["a"]["identity_similarity"] == pytest.approx(0.155)
    assert r["b"]["identity_similarity"] == pytest.approx(0.205)


def test_refuses_what_cannot_be_paired(tmp_path):
    a = _run(tmp_path / "a", 0.0)
    with pytest.raises(UserError, match="different people"):
        compare(a, _run(tmp_path / "seed", 0.0, seed=10))
    with pytest.raises(UserError, match="different units"):
        compare(a, _run(tmp_path / "short", 0.0, seeds=1))
    other = _run(tmp_path / "prompts", 0.0)
    (other / "prompts" / "p1.json").write_text(json.dumps(["a man"] * 2))
    with pytest.raises(UserError, match="prompted differently"):
        compare(a, other)
    with pytest.raises(UserError, match="no scored units"):
        compare(a, _run(tmp_path / "b", 0.0), method="finetune")


def test_cli_prints_and_writes(tmp_path, capsys):
    a, b = _run(tmp_path / "a", 0.0), _run(tmp_path / "b", -0.02)
    assert main([str(a), str(b), "--json", str(tmp_path / "c.json")]) == 0
    assert "B - A -0.020" in capsys.readouterr().out
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["b - a"]["edit_success"]["mean"] == pytest.approx(-0.02) and saved["method"] == "encoder"
