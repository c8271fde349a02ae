"""python -m eval.world on a tiny world (random weights in the world layout): every method, the JSON
issue 16 asks for, and a rerun that resumes (does no work); the fine-tuning grid that feeds it."""

import json
import shutil

import pytest

from eval.world import METHODS


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tests.tiny_eval_world import make_eval_world

    return make_eval_world(tmp_path_factory.mktemp("evalworld") / "world")


def test_finetune_grid_scores_every_point_and_picks_one(world, tmp_path):
    from eval.finetune_baseline import GRID_LRS, main

    out = tmp_path / "grid.json"
    assert main(["grid", "--world", str(world), "--seed", "9", "--identities", "1", "--photos", "2", "--prompts", "1",
                 "--steps", "1,2", "--modes", "lora", "--sample-steps", "2", "--out", str(tmp_path / "work"),
                 "--json", str(out), "--device", "cpu", "--workers", "2"]) == 0  # each LR in its own process
    grid = json.loads(out.read_text())
    points = {(r["mode"], r["lr"], r["steps"]) for r in grid["grid"]}
    assert points == {("lora", lr, s) for lr in GRID_LRS["lora"] for s in (1, 2)}
    assert (grid["best"]["mode"], grid["best"]["lr"], grid["best"]["steps"]) in points
    assert grid["validation"]["split"] == "val" and "commands" in grid and "git_commit" in grid
    assert all(r["identity_similarity"] is not None and r["seconds_per_identity"] > 0 for r in grid["grid"])
    # the backbone files it was tuned on: eval.world says when its grid was tuned on others, or does not say
    from eval.world import BACKBONE_FILES, finetune_setting, weights_sha256
    assert grid["world_sha256"] == weights_sha256(world, names=BACKBONE_FILES) and "model_configs.json" in grid[
        "world_sha256"]
    backbone = weights_sha256(world, names=BACKBONE_FILES)  # as eval.world passes it (from its hashes)
    assert finetune_setting(out, None, backbone)[1] == f"best of {out}"
    for tuned_on, why in (({"models/uvit_v1.safetensors": "0"}, "tuned on other backbone files"),
                          (None, "its backbone files are not recorded")):
        other = tmp_path / "other_grid.json"
        other.write_text(json.dumps({**grid, "world_sha256": tuned_on}))
        cfg, source = finetune_setting(other, None, backbone)
        assert source == f"best of {other} ({why})" and cfg.steps == grid["best"]["steps"]


def test_eval_world_runs_every_method_writes_the_json_and_resumes(world, tmp_path, monkeypatch):
    import eval.finetune_baseline as finetune_baseline
    import eval.world as ew
    import personalize.generate as generate
    from data_prep.faceworld.render import FaceWorld

    out, results = tmp_path / "work", tmp_path / "synthworld.json"
    argv = ["--seed", "5", "--identities", "2", "--photos", "2", "--prompts", "2", "--seeds", "1", "--n", "2",
            "--steps", "2", "--refs", "2", "--device", "cpu", "--world", str(world), "--out", str(out),
            "--json", str(results), "--finetune-setting", "lora,1e-3,2", "--command-timing", "1", "--no-progress"]
    assert ew.main(argv) == 0
    r = json.loads(results.read_text())
    for key in ("identity_similarity", "edit_success", "copy_paste"):
        assert set(r[key]) == set(METHODS), key
        assert all(isinstance(v, float) for v in r[key].values()), key
    assert set(r["seconds_per_identity"]) == {"encoder", "finetune", "text_only"}
    assert r["seconds_per_identity"]["text_only"] == 0.0 and r["seconds_per_identity"]["encoder"] > 0
    commands = r["seconds_per_identity_detail"]
    assert commands["encoder"]["command"]["n"] == 1 and commands["finetune"]["command"]["n"] == 1  # fresh processes
    assert commands["encoder"]["command"]["mean"] > commands["encoder"]["in_process"]["mean"]
    assert commands["encoder"]["photos_processing"]["n"] == 2  # train.py's own split, parsed from its output
    assert r["counts"]["identities"] == 2 and r["counts"]["prompts"] == {"sim": 2, "edit": 2}
    assert r["counts"]["seeds"] == 1 and r["counts"]["held_out_edit_prompts"] == 4  # two per person
    assert r["renderer_seed"] == 5 and r["renderer"]["split"] == "test"
    assert r["commands"]["evaluate"].startswith("python -m eval.world --seed 5") and r["git_commit"]
    # without --id-start: the module's own default (this module has no sampling block, so 1), passed explicitly
    assert r["sampling"]["id_start"] == 1.0 and r["sampling"]["id_start_from"].startswith("module's")
    assert "--id-start 1" in (out / "logs" / "sample.log").read_text()
    from models.paths import file_sha256
    assert r["world_sha256"] == {  # the exact weights behind the numbers, and the configs with the sampler policy
        name: file_sha256(world / name) for name in ("models/uvit_v1.safetensors", "models/pixel_space.safetensors",
                                                     "model_configs.json", "faceid_encoder/identity.safetensors")}
    assert r["sampling"]["sampler"] == {"final_denoise": False}
    assert set(r["targets"]) >= {"identity_vs_ceiling", "edit_vs_text_only", "speedup_vs_finetune"}
    assert r["intervals"]["identity_similarity"]["encoder"]["n"] == 2
    # the ceiling is renders of the person: the (projection) recogniser finds them closer to the references
    # than the random backbone's images
    assert r["identity_similarity"]["ceiling"] > max(r["identity_similarity"][m] for m in ("encoder", "text_only"))
    units = sorted((out / "scores").rglob("*.json"))
    assert len(units) == len(METHODS) * 2
    unit = json.loads(units[0].read_text())
    assert [p["layout"] for p in unit["prompts"]] == ["sim", "sim", "edit", "edit"]
    assert all(len(p["identity_similarity"]) == 2 for p in unit["prompts"])
    # identity similarity over the images with a face (no face scores 0 in the headline figure)
    pairs = [(v, f) for p in unit["prompts"] for v, f in zip(p["identity_similarity"], p["face_found"])]
    found = [v for v, f in pairs if f]
    assert unit["means"]["all"]["identity_similarity_found"] == (pytest.approx(sum(found) / len(found)) if found
                                                                else None)
    assert set(r["identity_similarity_found"]) == set(METHODS)
    # paired differences over the same identities: encoder minus each baseline, per identity
    def unit_means(method):
        return {u.stem: json.loads(u.read_text())["means"]["all"]["identity_similarity"]
                for u in (out / "scores" / method / "p2" / "s0").glob("*.json")}
    enc, text = unit_means("encoder"), unit_means("text_only")
    paired = r["paired"]["encoder - text_only"]["identity_similarity"]
    assert paired["n"] == 2 and paired["mean"] == pytest.approx(sum(enc[n] - text[n] for n in enc) / 2)
    assert set(r["paired"]) == {"encoder - text_only", "encoder - finetune"}
    # pooled over folders (here one folder twice): every identity of each, the same mean
    from eval.world_pooled import pooled
    both = pooled([out, out], 2, 1)["identity_similarity"]
    assert both["n"] == 4 and both["mean"] == pytest.approx(paired["mean"])
    from eval.world_pooled import main as pooled_main
    from models.errors import UserError
    assert pooled_main([str(out), str(out), "--photos", "2"]) == 0
    other = tmp_path / "other"  # the same units, one of them scored with other sampling steps
    shutil.copytree(out / "scores", other / "scores")
    unit_file = sorted((other / "scores" / "text_only").rglob("*.json"))[0]
    changed = json.loads(unit_file.read_text())
    changed["key"]["steps"] += 1
    unit_file.write_text(json.dumps(changed))
    with pytest.raises(UserError, match="different settings"):
        pooled_main([str(out), str(other), "--photos", "2"])
    assert sorted(p.name for p in (out / "images" / "encoder" / "p2" / "girl1").glob("*.jpg")) == \
        [f"{i}-{k:03}.jpg" for i in range(4) for k in range(2)]
    stamps = {u: u.stat().st_mtime_ns for u in units}

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished unit was done again")

    monkeypatch.setattr(ew, "run_cli", forbidden)
    monkeypatch.setattr(ew, "wall_clock", forbidden)
    monkeypatch.setattr(generate, "generate_prompts", forbidden)
    monkeypatch.setattr(finetune_baseline.Finetuner, "train", forbidden)
    monkeypatch.setattr(FaceWorld, "render", forbidden)
    assert ew.main(argv) == 0
    again = json.loads(results.read_text())
    assert again["identity_similarity"] == r["identity_similarity"] and again["edit_success"] == r["edit_success"]
    assert {u: u.stat().st_mtime_ns for u in units} == stamps
    # a run stopped part way: --aggregate-only runs nothing and keeps the identities with every unit
    (out / "scores" / "text_only" / "p2" / "s0" / "girl1.json").unlink()
    partial = tmp_path / "partial.json"
    only = [a for a in argv if a not in ("--json", str(results))] + ["--json", str(partial), "--methods",
                                                                     "encoder,text_only", "--aggregate-only"]
    assert ew.main(only) == 0
    p = json.loads(partial.read_text())
    assert p["counts"]["identities"] == 1 and p["aggregated_identities"] != ["girl1"]
    assert p["paired"]["encoder - text_only"]["identity_similarity"]["n"] == 1
    name = p["aggregated_identities"][0]
    assert p["paired"]["encoder - text_only"]["identity_similarity"]["mean"] == pytest.approx(enc[name] - text[name])
    for unit in (out / "scores" / "text_only").rglob("*.json"):  # now no identity is complete
        unit.unlink()
    with pytest.raises(UserError, match="no identity"):
        ew.main(only)


def test_eval_world_stops_when_a_method_was_scored_with_other_weights(tmp_path):
    from eval.world import SCORED_FILES, check_scored_weights, weights_sha256
    from models.errors import UserError

    def check_weights(out, methods, world, encoder):  # as eval.world's main calls it
        check_scored_weights(out, methods, weights_sha256(world, encoder, SCORED_FILES))

    world, out, other = tmp_path / "world", tmp_path / "out", tmp_path / "other_module"
    for path, content in ((world / "models" / "uvit_v1.safetensors", b"backbone"),
                          (world / "faceid_encoder" / "identity.safetensors", b"module"),
                          (other / "identity.safetensors", b"another module")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    out.mkdir()
    check_weights(out, ("encoder", "text_only", "ceiling"), world, None)
    check_weights(out, ("encoder",), world, other)  # no units yet: the new weights replace the record
    for method in ("encoder", "text_only"):
        unit = out / "scores" / method / "p3" / "s0" / "girl1.json"
        unit.parent.mkdir(parents=True)
        unit.write_text("{}")
    check_weights(out, ("encoder", "text_only"), world, other)  # the same weights: resumes
    with pytest.raises(UserError, match="encoder units .*faceid_encoder"):
        check_weights(out, ("encoder",), world, None)
    check_weights(out, ("text_only", "ceiling"), world, None)  # text only does not depend on the module
    (world / "models" / "uvit_v1.safetensors").write_bytes(b"another backbone")
    with pytest.raises(UserError, match="text_only units .*uvit_v1"):
        check_weights(out, ("text_only",), world, None)
    check_weights(out, ("ceiling",), world, None)  # renders: no weights
    # a latent world's autoencoder and the configs with their sampler policy are the backbone's files too
    (world / "models" / "uvit_v1.safetensors").write_bytes(b"backbone")
    for name, before, after in (("models/autoencoder_kl.safetensors", b"decoder", b"another decoder"),
                                ("model_configs.json", b"{}", b'{"sampler": {"final_denoise": true}}')):
        shutil.rmtree(out)
        out.mkdir()
        (world / name).write_bytes(before)
        check_weights(out, ("text_only",), world, None)
        unit = out / "scores" / "text_only" / "p3" / "s0" / "girl1.json"
        unit.parent.mkdir(parents=True)
        unit.write_text("{}")
        (world / name).write_bytes(after)
        with pytest.raises(UserError, match=f"text_only units .*{name.split('/')[-1]}"):
            check_weights(out, ("text_only",), world, None)


def test_eval_world_workers_split_the_identities_and_match_one_process(world, tmp_path):
    import eval.world as ew

    def run(name, *extra):
        out, results = tmp_path / name, tmp_path / f"{name}.json"
        assert ew.main(["--seed", "6", "--identities", "2", "--photos", "2", "--prompts", "1", "--seeds", "1",
                        "--n", "1", "--steps", "2", "--refs", "2", "--device", "cpu", "--world", str(world),
                        "--out", str(out), "--json", str(results), "--methods", "encoder,text_only",
                        "--command-timing", "0", "--no-progress", *extra]) == 0
        return out, json.loads(results.read_text())

    out, split = run("split", "--workers", "2")  # one identity per worker process
    assert split["workers"] == 2 and split["wall_seconds_this_run"]["workers"] > 0 and "shared" in split["note"]
    assert split["intervals"]["identity_similarity"]["encoder"]["n"] == 2
    assert len(list((out / "scores").rglob("*.json"))) == 4  # 2 methods x 2 identities, by the workers
    _, single = run("single")
    for metric in ("identity_similarity", "edit_success", "copy_paste"):
        for method in ("encoder", "text_only"):
            assert split[metric][method] == pytest.approx(single[metric][method], abs=2e-3), (metric, method)


def test_identity_grid_runs_each_setting_pairs_it_with_text_only_and_resumes(world, tmp_path, monkeypatch):
    import eval.identity_grid as grid
    import eval.world as ew
    import personalize.generate as generate

    out, results = tmp_path / "work", tmp_path / "grid.json"
    argv = ["--seed", "3", "--identities", "2", "--photos", "2", "--prompts", "1", "--n", "1", "--steps", "2",
            "--id-scales", "1,2", "--id-guidances", "none,5", "--refine-steps", "0,1", "--device", "cpu",
            "--world", str(world),
            "--out", str(out), "--json", str(results), "--no-progress"]
    assert grid.main(argv) == 0
    r = json.loads(results.read_text())
    settings = [(0, 1, None), (0, 1, 5), (0, 2, None), (0, 2, 5), (1, 1, None), (1, 1, 5), (1, 2, None), (1, 2, 5)]
    assert [(row["refine_steps"], row["id_scale"], row["id_guidance"]) for row in r["rows"]] == settings
    assert r["validation"]["split"] == "val" and r["commands"]["grid"].startswith("python -m eval.identity_grid")
    # each setting's images are its own, sampled with its flags; the records are shared
    logs = (out / "logs" / "sample.log").read_text()
    assert "--id-scale 2 --id-guidance 5" in logs
    for row in r["rows"]:
        units = sorted((out / "scores" / row["method"] / "p2" / "s0").glob("*.json"))
        assert len(units) == 2
        key = json.loads(units[0].read_text())["key"]
        assert key.get("id_scale", 1.0) == row["id_scale"] and key.get("id_guidance") == row["id_guidance"]
        assert key.get("refine_steps", 0) == row["refine_steps"]
        # the paired difference is the mean of per-identity differences against text only
        mine = {u.stem: json.loads(u.read_text())["means"]["edit"]["edit_success"] for u in units}
        text = {u.stem: json.loads(u.read_text())["means"]["edit"]["edit_success"]
                for u in (out / "scores" / "text_only" / "p2" / "s0").glob("*.json")}
        assert row["paired"]["edit_success"]["mean"] == pytest.approx(sum(mine[n] - text[n] for n in mine) / 2)
    # one set of records per refinement setting, the refined ones made with train.py --refine-steps
    assert len(list((out / "records" / "p2").iterdir())) == 2
    refined = json.loads(next((out / "records" / "p2_refine1").iterdir()).joinpath("identity.json").read_text())
    assert "refine" in json.dumps(refined) and "--refine-steps 1" in (out / "logs" / "train.log").read_text()
    env = {"IDENTITY_GRID": str(results), "IDENTITY_GRID_REFINE": str(results)}
    outputs = _run_notebook("identity_grid.ipynb", env, tmp_path, monkeypatch, pictures=2)
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "python -m eval.identity_grid" in text and "best:" in text
    assert r["best"] is None or (r["best"]["refine_steps"], r["best"]["id_scale"], r["best"]["id_guidance"]) in settings

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished unit was done again")

    monkeypatch.setattr(ew, "run_cli", forbidden)
    monkeypatch.setattr(generate, "generate_prompts", forbidden)
    assert grid.main(argv) == 0
    assert json.loads(results.read_text())["rows"] == r["rows"]


def test_identity_grid_chooses_between_modules_on_the_same_text_only_images(world, tmp_path, monkeypatch):
    """Several --encoder NAME=DIR: every setting for every module, one set of text-only images, the chosen
    row names its module, and --export folds the scale into that module (not the first one)."""
    import torch
    from safetensors.torch import load_file

    import eval.identity_grid as grid
    from encoder.identity import WEIGHTS_FILE, IdentityModule, checkpoint_hash, read_metadata
    from models.errors import UserError

    weak = IdentityModule.load(world / "faceid_encoder").fold_scale_(0.25).save(tmp_path / "weak", {})
    out, results = tmp_path / "work", tmp_path / "grid.json"
    common = ["--seed", "4", "--identities", "2", "--photos", "2", "--prompts", "1", "--n", "1", "--steps", "2",
              "--device", "cpu", "--world", str(world), "--out", str(out), "--json", str(results), "--no-progress"]
    base = common + ["--settings", "1:none:0,2:none:0"]
    for bad, message in ((["--encoder", str(world / "faceid_encoder"), "--encoder", f"weak={weak}"], "name each"),
                         (["--encoder", f"a={weak}", "--encoder", f"a={weak}"], "name each"),
                         (["--encoder", f"a b={weak}"], "letters, digits"),
                         (["--encoder", f"a={tmp_path / 'none'}"], "no identity module there"),
                         (["--id-start", "1,0"], "noise level"), (["--id-start", "late"], "noise levels")):
        with pytest.raises(UserError, match=message):
            grid.main(base + bad)
    with pytest.raises(UserError, match="refinement"):
        grid.main(common + ["--settings", "1:none:1", "--encoder", f"a={weak}", "--encoder",
                            f"b={world / 'faceid_encoder'}"])
    assert not out.exists()  # every refusal came before any work
    chosen = {}

    def pick_weak(rows, metric):  # the choice is the rule's; what is tested here is where it leads
        chosen.update(next(r for r in rows if r["module"] == "weak" and r["id_scale"] == 2 and r["id_start"] < 1))
        return chosen

    monkeypatch.setattr(grid, "pick_best", pick_weak)
    argv = base + ["--encoder", f"open={world / 'faceid_encoder'}", "--encoder", f"weak={weak}",
                   "--id-start", "1,0.5", "--export", str(tmp_path / "chosen")]
    assert grid.main(argv) == 0
    r = json.loads(results.read_text())
    assert [(row["module"], row["id_scale"], row["id_start"]) for row in r["rows"]] == [
        (m, scale, start) for m in ("open", "weak") for scale in (1, 2) for start in (1, 0.5)]
    assert len({row["method"] for row in r["rows"]}) == 8 and all(row["module"] in row["method"] for row in r["rows"])
    assert read_metadata(tmp_path / "chosen")["sampling"] == {"id_start": 0.5}  # the start travels with the module
    assert {row["encoder_sha256"] for row in r["rows"] if row["module"] == "weak"} != \
        {row["encoder_sha256"] for row in r["rows"] if row["module"] == "open"}
    assert (r["best"]["module"], r["best"]["encoder"], r["best"]["id_scale"]) == ("weak", str(weak), 2)
    logs = (out / "logs" / "sample.log").read_text()
    assert f"--encoder {weak}" in logs and f"--encoder {world / 'faceid_encoder'}" in logs and "--id-start 0.5" in logs
    assert sorted(p.name for p in (out / "scores").iterdir()) == sorted([row["method"] for row in r["rows"]]
                                                                        + ["text_only"])
    assert read_metadata(tmp_path / "chosen")["strength"]["source_sha256"] == checkpoint_hash(weak)
    stored = load_file(str(tmp_path / "chosen" / WEIGHTS_FILE))  # --export-dtype's default
    assert {v.dtype for v in stored.values()} == {torch.float16}
    assert "with module weak" in grid.table(r)


def test_identity_grid_picks_the_largest_identity_gain_that_keeps_edits_and_faces():
    from eval.identity_grid import pick_best

    def row(gain, edit, faces, found_gain=None):
        return {"paired": {"identity_similarity": {"mean": gain},
                           "identity_similarity_found": {"mean": gain if found_gain is None else found_gain}},
                "ratio_to_text_only": {"edit_success": edit, "face_found": faces}}

    rows = [row(0.01, 1.0, 1.0), row(0.05, 0.95, 0.92), row(0.2, 0.5, 1.0), row(0.3, 1.0, 0.6)]
    assert pick_best(rows) is rows[1]
    assert pick_best([row(0.2, 0.5, 1.0)]) is None
    # a setting that loses its worst faces leads over the faces found, not over all images (the default)
    rows = [row(0.086, 0.93, 0.92, found_gain=0.101), row(0.090, 1.0, 0.98, found_gain=0.092)]
    assert pick_best(rows) is rows[1]
    assert pick_best(rows, "identity_similarity_found") is rows[0]


def test_identity_grid_settings_are_a_product_or_an_explicit_list():
    from eval.identity_grid import flags, main, parse_settings
    from models.errors import UserError

    assert parse_settings("1:none:0, 2:20:50") == [(0, 1.0, None), (50, 2.0, 20.0)]
    with pytest.raises(ValueError, match="scale:guidance:refine"):
        parse_settings("1:none")
    assert flags({"id_scale": 2.0, "id_guidance": None, "refine_steps": 0}) == "--id-scale 2"
    assert flags({"id_scale": 1.0, "id_guidance": 20.0, "refine_steps": 50}) == \
        "--id-scale 1 --id-guidance 20 --refine-steps 50"
    with pytest.raises(UserError, match="scale:guidance:refine"):  # before any work is done
        main(["--seed", "1", "--settings", "1:none"])
    assert flags({"id_scale": 1.0, "id_guidance": None, "refine_steps": 0, "photo_tokens": "each"}) == \
        "--id-scale 1 --photo-tokens each"
    assert flags({"id_scale": 1.0, "id_guidance": None, "refine_steps": 0, "id_start": 0.7}) == \
        "--id-scale 1 --id-start 0.7"
    from eval.identity_grid import label
    assert label(1.0, None, id_start=0.7) == "encoder_scale1_guidancenone_start0.7"
    assert label(1.0, None) == "encoder_scale1_guidancenone"  # units made before --id-start keep their names
    with pytest.raises(UserError, match="photo-tokens each"):
        main(["--seed", "1", "--settings", "1:none:5", "--photo-tokens", "each"])
    from eval.world import Plan

    each = Plan(seed=1, identities=1, photo_tokens="each")
    assert each.sample_flags() == ["--id-scale", "1", "--photo-tokens", "each", "--id-start", "1"]
    assert each.identity_settings == {"photo_tokens": "each"}  # units scored with the mean's keep their keys
    with pytest.raises(ValueError, match="photo-tokens"):
        Plan(seed=1, identities=1, photo_tokens="each", refine_steps=1)


def _run_notebook(name: str, env: dict[str, str], tmp_path, monkeypatch, pictures: int = 1) -> list:
    """eval/notebooks/<name> top to bottom in a fresh kernel with `env` set; asserts that no cell failed and
    that it drew `pictures` pictures; returns the code cells' outputs."""
    import os
    from pathlib import Path

    import nbformat
    from nbclient import NotebookClient

    repo = Path(__file__).resolve().parent.parent
    nb = nbformat.read(repo / "eval" / "notebooks" / name, as_version=4)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum(1 for o in outputs if o.output_type == "display_data" and "image/png" in o.data) == pictures
    return outputs


def test_identity_grid_export_folds_the_chosen_scale_into_the_gates(tmp_path):
    import torch
    from safetensors.torch import load_file

    from encoder.config import IdentityConfig
    from encoder.identity import WEIGHTS_FILE, IdentityModule, checkpoint_hash, read_metadata, sampling_defaults
    from eval.identity_grid import export_best
    from models.errors import UserError
    from models.uvit import UViTConfig

    module = IdentityModule(IdentityConfig.for_uvit(UViTConfig.tiny(), num_tokens=2, hidden_dim=16))
    with torch.no_grad():
        module.gate.normal_(0, 0.3)
    src = module.save(tmp_path / "src", {"pretraining": {"step": 7}})
    best = {"id_scale": 0.5, "id_guidance": None, "refine_steps": 0}
    out = export_best(best, src, tmp_path / "out", tmp_path / "grid.json")
    torch.testing.assert_close(IdentityModule.load(out).gate, 0.5 * module.gate, rtol=0, atol=0)
    meta = read_metadata(out)
    assert meta["pretraining"] == {"step": 7} and meta["strength"]["source_sha256"] == checkpoint_hash(src)
    assert meta["strength"]["folded_id_scale"] == 0.5 and meta["strength"]["chosen_by"] == str(tmp_path / "grid.json")
    again = export_best(best, out, tmp_path / "again", tmp_path / "grid2.json")  # folds multiply
    assert read_metadata(again)["strength"]["folded_id_scale"] == 0.25
    half = export_best(best, src, tmp_path / "half", tmp_path / "grid.json", dtype=torch.float16)
    assert {v.dtype for v in load_file(str(half / WEIGHTS_FILE)).values()} == {torch.float16}
    torch.testing.assert_close(IdentityModule.load(half).gate, (0.5 * module.gate).half().float(), rtol=0, atol=0)
    with pytest.raises(UserError, match="no setting kept the floors"):
        export_best(None, src, tmp_path / "x", tmp_path / "grid.json")
    with pytest.raises(UserError, match="identity guidance or refinement"):
        export_best({"id_scale": 1.0, "id_guidance": 20.0, "refine_steps": 0}, src, tmp_path / "x", tmp_path / "g.json")
    assert not (tmp_path / "x").exists()
    # the chosen identity start travels as the module's sampling default; a setting without one resets it
    late = export_best({**best, "id_start": 0.7}, src, tmp_path / "late", tmp_path / "grid.json")
    assert sampling_defaults(late) == {"id_start": 0.7} and sampling_defaults(src) == {"id_start": 1.0}
    assert sampling_defaults(export_best(best, late, tmp_path / "reset", tmp_path / "g.json")) == {"id_start": 1.0}


def test_a_modules_sampling_block_is_checked(tmp_path):
    import json

    from encoder.identity import sampling_defaults
    from eval.world import module_id_start
    from models.paths import WeightsError

    assert sampling_defaults(None) == {"id_start": 1.0}
    folder = tmp_path / "world" / "faceid_encoder"
    assert module_id_start(tmp_path / "world", None) == 1.0  # a world without a module: the built-in default
    folder.mkdir(parents=True)
    for block, ok in (({"id_start": 0.7}, 0.7), ({}, 1.0), ({"id_start": 1}, 1.0)):
        (folder / "config.json").write_text(json.dumps({"format": "x", "sampling": block}))
        assert sampling_defaults(folder)["id_start"] == ok == module_id_start(tmp_path / "world", None)
    for bad in ({"id_start": 0}, {"id_start": 1.5}, {"id_start": "0.7"}, {"id_start": True}, {"id_scale": 2},
                [0.7]):
        (folder / "config.json").write_text(json.dumps({"sampling": bad}))
        with pytest.raises(WeightsError, match="sampling"):
            sampling_defaults(folder)


def test_world_ablations_read_the_committed_results_and_the_notebook_runs(tmp_path, monkeypatch):
    """eval.world_ablations on the committed results (the photo counts of eval/results/synthworld.json, the
    modules' id_gain from their training logs, the variants and the guidance grids on validation identities)
    and eval/notebooks/world_ablations.ipynb top to bottom."""
    from eval import world_ablations as wa

    result = json.loads((wa.RESULTS / "synthworld.json").read_text())
    rows = wa.photo_rows(result)
    assert {r["photos"] for r in rows} == set(result["counts"]["photos"])
    enc = {r["photos"]: r for r in rows if r["method"] == "encoder"}
    k = result["counts"]["headline_photos"]
    assert enc[k]["identity_similarity"] == pytest.approx(result["identity_similarity"]["encoder"])
    points = wa.module_points()
    assert len(points) == len(wa.MODULES) and all(p["id_gain"] > 0 and p["lo"] <= p["identity_gain"] <= p["hi"]
                                                   for p in points)
    log = tmp_path / "train.log"
    log.write_text("step 10 id_gain 0.00100 +- 0.00020\nstep 20 id_gain 0.00300 +- 0.00050\n")
    assert wa.last_id_gain(log) == (0.003, 0.0005)
    variants = wa.variant_rows()
    assert [v["name"] for v in variants] == [v.name for v in wa.VARIANTS]
    assert all(v["lo"] <= v["identity_gain"] <= v["hi"] and v["seed"] == 101 for v in variants)
    guidance = wa.guidance_rows()
    assert {g["cfg"] for g in guidance} == {3.0, 7.0}
    assert 1.0 in {g["id_scale"] for g in guidance if g["cfg"] == 7.0}  # the committed module's default
    other = json.loads(wa.VARIANTS[0].grid.read_text())
    other["validation"]["seed"] += 1
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="differs"):  # variants are compared on the same identities only
        wa.variant_rows([wa.VARIANTS[0], wa.Variant("other", tmp_path / "other.json", wa.VARIANTS[0].log)])
    assert wa.main(["--plot", str(tmp_path / "ablations.png")]) == 0 and (tmp_path / "ablations.png").is_file()

    _run_notebook("world_ablations.ipynb", {"WORLD_RESULTS": str(wa.RESULTS / "synthworld.json")}, tmp_path,
                  monkeypatch)


def test_world_reconstruction_scores_each_time_and_the_source_and_checks_its_input(world, tmp_path):
    from eval.world_reconstruction import main
    from models.errors import UserError

    out, sheet = tmp_path / "rec.json", tmp_path / "rec.png"
    assert main(["--world", str(world), "--seed", "9", "--identities", "2", "--references", "2", "--t", "0.5,1",
                 "--steps", "2", "--device", "cpu", "--json", str(out), "--sheet", str(sheet)]) == 0
    r = json.loads(out.read_text())
    assert list(r["by_t"]) == ["0", "0.5", "1"]
    for row in r["by_t"].values():
        assert row["identity_similarity"]["n"] == 2 and 0 <= row["face_found"] <= 1
        assert 0 <= row["attribute_success"] <= 1 and row["per_attribute"]
    assert r["by_t"]["0"]["face_found"] == 1.0  # the source renders themselves
    assert set(r["denoising"]) == {"5", "20", "50", "100", "200", "400", "700", "1000"}
    assert all(v["input_mse"] > 0 and v["x0_mse"] >= 0 for v in r["denoising"].values())
    assert r["renderer_seed"] == 9 and "command" in r and "git_commit" in r and sheet.stat().st_size > 0
    assert r["final_denoise"] is False
    assert list(r["band_energy"]) == ["0", "0.5", "1"]
    size = 2 ** (len(r["band_energy"]["0"]) - 1)  # one detail band per halving, then the mean
    assert list(r["band_energy"]["0"]) == [*(str(2 ** j) for j in range(1, size.bit_length())), "mean"]
    assert all(v >= 0 for row in r["band_energy"].values() for v in row.values())
    for bad in (["--t", "0"], ["--t", "x"], ["--identities", "1"]):
        with pytest.raises(UserError):
            main(["--world", str(world), "--seed", "9", "--json", str(tmp_path / "bad.json"), *bad])
    assert not (tmp_path / "bad.json").exists()


def test_id_start_reaches_sample_py_and_keys_the_units():
    import dataclasses

    from eval.world import Plan
    from sample import build_parser

    plan = Plan(seed=1, identities=1)
    # always passed, so that a module's own default (its `sampling` block) cannot change what is evaluated
    assert "--id-start 1" in " ".join(plan.sample_flags()) and plan.identity_settings == {}  # old units keep keys
    windowed = dataclasses.replace(plan, id_start=0.7)
    assert "--id-start 0.7" in " ".join(windowed.sample_flags()) and windowed.identity_settings == {"id_start": 0.7}
    base = ["--restore_path", "r", "--prompt_path", "p", "--output_path", "o"]
    assert build_parser().parse_args(base).id_start is None  # the module's default, else 1
    assert build_parser().parse_args(base + ["--id-start", "0.7"]).id_start == 0.7
    for bad in ("0", "1.5"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(base + ["--id-start", bad])
