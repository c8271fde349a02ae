"""eval.world_by_identity: per-identity scores of an eval.world work folder beside the renderer's parameters."""

import json

import numpy as np
import pytest

from data_prep.faceworld.identity import HAIR_COLORS, identity_params
from eval.world_by_identity import HAIR_NAMES, by_identity, main, renderer_seed
from models.errors import UserError

SEED = 4321


def _unit(work, method, seed_index, name, identity, found, sim):
    path = work / "scores" / method / "p3" / f"s{seed_index}" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": name, "identity": identity,
                                "means": {"all": {"face_found": found, "identity_similarity_found": sim}}}))


@pytest.fixture
def work(tmp_path):
    """Twelve people; method "enc" finds faces in proportion to how dark the hair is, over two seeds."""
    ids = list(range(100, 112))
    hair = identity_params(SEED, ids).p["hair_color"].astype(int)
    for i, (identity, h) in enumerate(zip(ids, hair)):
        dark = 1.0 - HAIR_COLORS[h].mean()
        _unit(tmp_path, "enc", 0, f"p{i}", identity, dark, 0.2)
        _unit(tmp_path, "enc", 1, f"p{i}", identity, dark - 0.1, float("nan") if i == 0 else 0.4)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "faceworld.json").write_text(json.dumps({"seed": SEED, "people": []}))
    return tmp_path


def test_means_groups_and_correlation(work):
    r = by_identity(work, SEED, "enc", 3)
    hair = identity_params(SEED, list(range(100, 112))).p["hair_color"].astype(int)
    assert r["identities"] == 12
    rows = {row["name"]: row for row in r["rows"]}
    for i, h in enumerate(hair):
        expected = 1.0 - HAIR_COLORS[h].mean() - 0.05  # the two seeds' mean
        assert rows[f"p{i}"]["face_found"] == pytest.approx(expected)
        assert rows[f"p{i}"]["hair"] == HAIR_NAMES[h]
    assert rows["p0"]["identity_similarity_found"] == pytest.approx(0.2)  # NaN left out
    assert rows["p1"]["identity_similarity_found"] == pytest.approx(0.3)
    for name, group in r["face_found_by_hair"].items():
        members = [row["face_found"] for row in r["rows"] if row["hair"] == name]
        assert group == {"n": len(members), "mean": pytest.approx(np.mean(members))}
    assert r["corr_face_found_hair_lightness"] == pytest.approx(-1.0)
    assert r["below_0.8"] == sorted(n for n, row in rows.items() if row["face_found"] < 0.8)


def test_renderer_seed_from_folder_or_flag(work, tmp_path_factory):
    assert renderer_seed(work, None) == SEED
    with pytest.raises(UserError, match="differs"):
        renderer_seed(work, SEED + 1)
    bare = tmp_path_factory.mktemp("bare")
    with pytest.raises(UserError, match="--seed"):
        renderer_seed(bare, None)
    assert renderer_seed(bare, 7) == 7


def test_cli_writes_json_and_refuses_bad_folders(work, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["--work", str(work), "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["renderer_seed"] == SEED and list(saved["methods"]) == ["enc"]
    assert "enc: faces found" in capsys.readouterr().out
    with pytest.raises(UserError, match="not an eval.world work folder"):
        main(["--work", str(tmp_path / "nothing")])
    with pytest.raises(UserError, match="no scored units"):
        main(["--work", str(work), "--methods", "other"])
