"""The face world renderer: determinism, splits, captions, held-out pairs, labels, identity in
geometry, the render CLI and the data_prep source (with the tiny stack, as tests/test_data_prep.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from data_prep.faceworld.__main__ import main as faceworld_main
from data_prep.faceworld.attributes import (
    ANY_HAT,
    ATTRIBUTES,
    CLASS_WORDS,
    HELD_OUT,
    SPLITS,
    CaptionError,
    caption,
    class_word_of,
    held_out_pairs_in,
    parse_caption,
    sample_attributes,
    split_of,
    with_value,
)
from data_prep.faceworld.identity import identity_params
from data_prep.faceworld.render import FaceWorld
from encoder.align import align_face
from models.errors import run_cli

PLAIN = {"scene": "living room", "hat": "none", "glasses": "none", "clothing": "blue", "expression": "neutral",
         "style": "photo"}


@pytest.fixture(scope="module")
def world() -> FaceWorld:
    return FaceWorld(seed=5, size=64, chunk=16)


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.images.numpy(), b.images.numpy())
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    assert a.captions == b.captions and a.attributes == b.attributes and a.class_words == b.class_words


# ------------------------------------------------------------------------------------ determinism
def test_pixels_do_not_depend_on_batch_order_or_chunking(world):
    ids = np.array([3, 3, 17, 1_100_004, 250, 17, 9, 41, 3, 77, 12, 5, 1_000_123, 8, 64, 2, 90, 33])
    rs = np.arange(len(ids)) * 7 % 11
    whole = world.render(ids, rs)
    perm = np.random.default_rng(0).permutation(len(ids))
    shuffled = world.render(ids[perm], rs[perm])
    inverse = np.argsort(perm)
    np.testing.assert_array_equal(shuffled.images.numpy()[inverse], whole.images.numpy())
    assert [shuffled.captions[i] for i in inverse] == whole.captions
    small_chunks = FaceWorld(seed=5, size=64, chunk=5).render(ids, rs)
    _same(whole, small_chunks)
    for i in (0, 3, 12):  # one at a time
        one = world.render(ids[i:i + 1], rs[i:i + 1])
        np.testing.assert_array_equal(one.images.numpy()[0], whole.images.numpy()[i])
        assert one.captions[0] == whole.captions[i]
    other_seed = FaceWorld(seed=6, size=64).render(ids[:4], rs[:4])
    assert not np.array_equal(other_seed.images.numpy(), whole.images.numpy()[:4])


def test_face_window_changes_no_pixel():
    """Features are drawn on a window around each face: its bounds must hold every feature pixel."""
    ids, rs = np.arange(96) * 13 + 5, np.arange(96) % 7
    fast = FaceWorld(seed=8, size=64).render(ids, rs).images.numpy()
    full = FaceWorld(seed=8, size=64, window=False).render(ids, rs).images.numpy()
    np.testing.assert_array_equal(fast, full)


def test_render_outputs_and_given_attributes(world):
    asked = {"hat": "cowboy hat", "hat_color": "red", "glasses": "sunglasses", "scene": "desert",
             "expression": "smiling", "style": "painting", "clothing": "green"}
    b = world.render([10, 11], [0, 0], [asked, None], mention="all")
    assert b.images.shape == (2, 64, 64, 3) and str(b.images.dtype) == "torch.uint8"
    assert b.attributes[0] == asked
    assert parse_caption(b.captions[0]) == {k: v for k, v in asked.items()} or \
        parse_caption(b.captions[0]) == {**asked, "hat": ANY_HAT}
    assert class_word_of(b.captions[0]) == b.class_words[0] in CLASS_WORDS
    assert b.boxes.shape == (2, 4) and b.landmarks.shape == (2, 5, 2)
    r = b.item(1)
    assert r.image.shape == (64, 64, 3) and r.identity == 11 and r.render == 0
    assert set(r.attributes) == set(ATTRIBUTES)
    prompt = parse_caption("a photo of a woman wearing a red hat and sunglasses, smiling, in a snowy forest")
    got = world.render([1_100_000], [9], [prompt]).attributes[0]  # a prompt's attributes, "any" hat included
    assert got["hat"] not in ("none", ANY_HAT) and got["hat_color"] == "red" and got["scene"] == "snow"
    assert got["glasses"] == "sunglasses" and got["expression"] == "smiling" and got["style"] == "photo"
    big = FaceWorld(seed=5, size=128).render([10], [0], [asked])
    assert big.images.shape == (1, 128, 128, 3)
    np.testing.assert_allclose(big.landmarks[0], (b.landmarks[0] + 0.5) * 2 - 0.5, atol=1e-3)  # same geometry


def test_every_attribute_value_changes_the_picture(world):
    base = world.render([21], [3], [PLAIN]).images.numpy()[0].astype(int)
    for name, values in ATTRIBUTES.items():
        for value in values:
            if name == "hat_color" or value == PLAIN.get(name):
                continue
            asked = dict(PLAIN, **{name: value})
            if name == "hat" and value != "none":
                asked["hat_color"] = "red"
            img = world.render([21], [3], [asked]).images.numpy()[0].astype(int)
            changed = (np.abs(img - base).sum(-1) > 60).mean()
            assert changed > 0.012, f"{name} = {value} changes only {changed:.1%} of the pixels"


# -------------------------------------------------------------------------------- splits, labels
def test_splits_are_disjoint_ranges():
    ranges = sorted(SPLITS.values())
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:])) and ranges[0][0] == 0
    assert [split_of(lo) for lo, _ in SPLITS.values()] == list(SPLITS)
    with pytest.raises(ValueError):
        split_of(max(hi for _, hi in SPLITS.values()))
    # people are a function of (seed, index) only
    a = identity_params(1, [5, 6, 7])
    b = identity_params(1, [7, 5])
    assert a.p["face_w"][2] == b.p["face_w"][0] and a.class_words[0] == b.class_words[1]
    many = identity_params(0, np.arange(4000))
    counts = np.bincount(many.kind, minlength=4)
    assert counts.min() > 800  # every class word is common


def test_landmarks_lie_inside_the_face_box(world):
    n = 96
    b = world.render(np.arange(n), np.arange(n) % 5, [{"glasses": "none", "expression": "neutral"}] * n)
    x1, y1, x2, y2 = b.boxes.T
    lx, ly = b.landmarks[..., 0], b.landmarks[..., 1]
    assert np.all((lx > x1[:, None]) & (lx < x2[:, None]) & (ly > y1[:, None]) & (ly < y2[:, None]))
    assert np.all(lx[:, 0] < lx[:, 1]) and np.all(lx[:, 3] < lx[:, 4])  # image-left first
    eyes_y, mouth_y = ly[:, :2].mean(1), ly[:, 3:].mean(1)
    assert np.all(eyes_y < ly[:, 2]) and np.all(ly[:, 2] < mouth_y)  # eyes above nose above mouth
    side = np.minimum(x2 - x1, y2 - y1)
    assert side.min() > 12 and np.all((x1 > -8) & (y1 > -8) & (x2 < 72) & (y2 < 72))
    # the pupils are dark: the darkest pixel next to an eye landmark is darker than the skin between the eyes
    img = b.images.numpy().astype(float).mean(-1)
    darker = []
    for i in range(n):
        my, mx = (int(round(v)) for v in b.landmarks[i, :2].mean(0)[::-1])
        skin = img[i, my - 1:my + 2, mx - 1:mx + 2].mean()
        for e in (0, 1):
            y, x = int(round(ly[i, e])), int(round(lx[i, e]))
            darker.append(img[i, y - 1:y + 2, x - 1:x + 2].min() < skin)
    assert np.mean(darker) > 0.95


# ------------------------------------------------------------------------------ attributes, captions
def test_held_out_pairs_never_sampled_for_training():
    ids = np.arange(30000)
    train = sample_attributes(0, ids, ids % 13, avoid_held_out=True)
    assert not any(held_out_pairs_in(a) for a in train)
    free = sample_attributes(0, ids, ids % 13, avoid_held_out=False)
    seen = {tuple(map(tuple, p)) for a in free for p in held_out_pairs_in(a)}
    assert len(seen) == len(HELD_OUT)  # without the rule, every pair occurs
    for name, values in ATTRIBUTES.items():  # every value still occurs in training
        assert {a[name] for a in train} >= set(values)
    asked = dict(HELD_OUT[0])
    kept = sample_attributes(0, [1, 2], [0, 0], avoid_held_out=True, overrides=[asked, None])
    assert held_out_pairs_in(kept[0]) == [HELD_OUT[0]]  # asked for explicitly: kept
    assert {n for pair in HELD_OUT for n, _ in pair} == set(ATTRIBUTES)  # together they cover every attribute


def test_world_renders_avoid_held_out_for_training_identities(world):
    b = world.render(np.arange(128), np.zeros(128, int))
    assert not any(held_out_pairs_in(a) for a in b.attributes)
    assert not any(held_out_pairs_in(parse_caption(c)) for c in b.captions)


def test_every_pair_renders_training_identities_with_held_out_pairs(world):
    """every_pair (the attribute classifier's renders): training identities get the held-out pairs as often as
    the other splits do (the sampler's draw without the rule); without it, the same items get none."""
    from data_prep.faceworld.render import draw_attributes

    ids, rs = np.arange(30000), np.arange(30000) % 7
    every = draw_attributes(0, ids, rs, every_pair=True)
    assert {tuple(map(tuple, p)) for a in every for p in held_out_pairs_in(a)} == set(HELD_OUT)
    assert every == sample_attributes(0, ids, rs, avoid_held_out=False)
    ids, rs = np.arange(2000), np.zeros(2000, int)
    paired = ids[[bool(held_out_pairs_in(a)) for a in draw_attributes(world.seed, ids, rs, every_pair=True)]][:4]
    b = world.render(paired, 0, every_pair=True)
    assert len(paired) == 4 and all(held_out_pairs_in(a) for a in b.attributes)
    assert not any(held_out_pairs_in(a) for a in world.render(paired, 0).attributes)


def test_captions_round_trip():
    rng = np.random.default_rng(0)
    attrs = sample_attributes(3, np.arange(3000), 0, avoid_held_out=False)
    for k, a in enumerate(attrs):
        word = CLASS_WORDS[k % 4]
        mention = (None, "all", ["scene"], ["hat", "hat_color", "glasses"])[k % 4]
        text = caption(a, word, rng, mention=mention)
        got = parse_caption(text)
        assert class_word_of(text) == word, text
        for name, value in got.items():
            assert value == a[name] or (name == "hat" and value == ANY_HAT and a["hat"] != "none"), (text, a)
        if mention == "all":
            expect = {n for n, v in a.items() if v is not None}
            assert set(got) == expect, (text, a)
    assert parse_caption("a photo of a woman wearing a red hat and sunglasses, smiling, in a snowy forest") == {
        "style": "photo", "hat": ANY_HAT, "hat_color": "red", "glasses": "sunglasses", "expression": "smiling",
        "scene": "snow"}
    assert parse_caption("a handsom boy with whole body") == {} and class_word_of("a handsom boy") == "boy"
    assert class_word_of("a woman") == "woman" and class_word_of("a cat") is None
    with pytest.raises(CaptionError):
        parse_caption("a man wearing glasses and sunglasses")


def test_with_value_keeps_the_hat_rule():
    bare = sample_attributes(3, np.arange(40), 0, avoid_held_out=False)
    bare = next(a for a in bare if a["hat"] == "none")
    assert bare["hat_color"] is None
    capped = with_value(bare, "hat", "cap")
    assert capped == {**bare, "hat": "cap", "hat_color": ATTRIBUTES["hat_color"][0]}  # put on: the first colour
    assert with_value(bare, "hat", "cap", "blue")["hat_color"] == "blue"  # or the one given
    red = {**capped, "hat_color": "red"}
    assert with_value(red, "hat", "top hat", "blue")["hat_color"] == "red"  # changed for another: kept
    assert with_value(red, "hat", "none") == {**red, "hat": "none", "hat_color": None}  # taken off: lost
    assert with_value(red, "glasses", "sunglasses") == {**red, "glasses": "sunglasses"}
    assert red["hat_color"] == "red" and bare["hat_color"] is None  # the input is not changed


# ----------------------------------------------------------------------------- identity is geometry
def test_people_differ_more_than_photos_of_one_person():
    """Aligned grey crops (by the landmarks) of 12 people x 4 photos with the same attributes: each
    photo's nearest other photo is mostly of the same person, and colour alone cannot tell them apart."""
    world = FaceWorld(seed=11, size=128)
    ids = np.repeat(np.arange(12), 4)
    b = world.render(ids, np.tile(np.arange(4), 12), [PLAIN] * len(ids))
    imgs = b.images.numpy()
    crops = []
    for img, lm in zip(imgs, b.landmarks):
        c = align_face(img, lm, 112)[20:100, 16:96].mean(-1)
        gy, gx = np.gradient(c)
        g = np.hypot(gx, gy).ravel()  # edges: geometry, not brightness
        crops.append((g - g.mean()) / (g.std() + 1e-6))
    crops = np.stack(crops)
    dist = ((crops[:, None] - crops[None]) ** 2).mean(-1)
    np.fill_diagonal(dist, np.inf)
    same = ids[:, None] == ids[None]
    assert dist[same & np.isfinite(dist)].mean() < dist[~same].mean()
    nearest_same = (ids[dist.argmin(1)] == ids).mean()
    assert nearest_same > 0.7, nearest_same


# ------------------------------------------------------------------------------------------- CLI
def test_render_cli_writes_the_competition_layout(tmp_path, capsys):
    out = tmp_path / "world"
    code = faceworld_main(["render", "--seed", "9", "--identities", "5", "--photos", "3", "--out", str(out),
                           "--no-progress"])
    assert code == 0
    side = json.loads((out / "faceworld.json").read_text())
    names = [p["name"] for p in side["people"]]
    assert len(names) == 5 and all(n.rstrip("0123456789") in CLASS_WORDS for n in names)
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["eval_prompts", "faceworld.json"])
    lo, _ = SPLITS["test"]
    assert [p["identity"] for p in side["people"]] == list(range(lo, lo + 5)) and side["seed"] == 9
    for person in side["people"]:
        folder = out / person["name"]
        files = sorted(f.name for f in folder.iterdir())
        assert files == ["000.jpg", "001.jpg", "002.jpg"]  # images only
        assert Image.open(folder / files[0]).size == (64, 64)
        word = person["class_word"]
        prompts = {kind: json.loads((out / "eval_prompts" / f"{person['name']}{kind}.json").read_text())
                   for kind in ("", "_sim", "_edit")}
        assert prompts[""] == prompts["_sim"] + prompts["_edit"] and len(prompts["_edit"]) == 6
        assert all(isinstance(t, str) and class_word_of(t) == word for t in prompts[""])
        assert prompts["_sim"][0] == f"a photo of a {word}"
        edits = person["prompts"]["edit"]
        assert [e["text"] for e in edits] == prompts["_edit"]
        assert edits[0]["held_out"] and edits[1]["held_out"]  # the first two are held-out pairs
        assert all(e["attributes"] == parse_caption(e["text"]) for e in edits)
    assert "5 people" in capsys.readouterr().out
    assert run_cli(faceworld_main, ["render", "--seed", "9", "--identities", "2", "--photos", "1", "--out", str(out),
                                    "--no-progress"]) == 2  # never writes into a used folder
    assert "exists and is not an empty folder" in capsys.readouterr().err
    again = tmp_path / "again"
    faceworld_main(["render", "--seed", "9", "--identities", "2", "--photos", "3", "--out", str(again),
                    "--no-progress"])
    first = side["people"][0]["name"]
    assert (again / first / "002.jpg").read_bytes() == (out / first / "002.jpg").read_bytes()


# ------------------------------------------------------------------------------ data_prep source
def test_data_prep_source_writes_shards_with_identities(tmp_path):
    from tiny_stack import make_tiny_weights_dir

    from data_prep.__main__ import build_parser, run
    from data_prep.format import decode_arrays, decode_meta
    from data_prep.process import FrozenModels
    from data_prep.shards import MANIFEST
    from eval.bench.standin_faces import make_pack
    from pretrain.data import read_shard

    weights = make_tiny_weights_dir(tmp_path / "weights")
    models = FrozenModels.from_weights(weights, face_pack=make_pack(tmp_path / "pack"))
    out = tmp_path / "shards"
    args = build_parser().parse_args(["--source", "faceworld", "--seed", "2", "--identities", "3", "--photos", "4",
                                      "--out", str(out), "--shard-size", "6", "--batch-size", "4", "--no-progress",
                                      "--resolution", "16", "--min-image-side", "64", "--min-face-size", "12"])
    manifest = run(args, models=models)
    assert manifest["complete"] and manifest["totals"]["input"] == 12 and manifest["totals"]["written"] == 12
    assert [s["name"] for s in manifest["shards"]] == ["shard-000000.tar", "shard-000001.tar"]
    assert manifest["settings"]["source"]["kind"] == "faceworld"
    samples = [s for p in sorted(out.glob("shard-*.tar")) for s in read_shard(p)]
    metas = [decode_meta(s) for s in samples]
    assert [m["identity"] for m in metas] == [f"faceworld2-{i}" for i in range(3) for _ in range(4)]
    world = FaceWorld(seed=2)
    b = world.render(np.repeat(np.arange(3), 4), np.tile(np.arange(4), 3))
    assert [s["txt"].decode() for s in samples] == b.captions
    for s, box in zip(samples, b.boxes):
        a = decode_arrays(s)
        np.testing.assert_allclose(a["box"], np.clip(box, 0, 64) * 16 / 64 / 2, atol=1e-4)  # latent pixels
        assert abs(np.linalg.norm(a["arcface"]) - 1) < 1e-4
    assert json.loads((out / MANIFEST).read_text())["settings"]["models"]["face_detector"].endswith("RenderedFaces")
    bad = build_parser().parse_args(["--source", "faceworld", "--out", str(tmp_path / "o2"), "--no-progress"])
    from data_prep.sources import SourceError

    with pytest.raises(SourceError, match="min-image-side"):
        run(bad, models=models)


# ------------------------------------------------------------------------------------ versions
def test_renderer_versions_are_chosen_by_argument_or_environment(monkeypatch):
    from data_prep.faceworld.render import DEFAULT_VERSION, VERSION_ENV, RendererVersionError, renderer_version
    from models.errors import UserError

    monkeypatch.delenv(VERSION_ENV, raising=False)
    assert renderer_version() == DEFAULT_VERSION == "faceworld-2" == FaceWorld(0).version
    monkeypatch.setenv(VERSION_ENV, "faceworld-3")
    assert renderer_version() == "faceworld-3" == FaceWorld(0).version
    assert FaceWorld(0, version="faceworld-2").version == "faceworld-2"  # the argument wins
    monkeypatch.setenv(VERSION_ENV, "faceworld-9")
    with pytest.raises(RendererVersionError, match=r"'faceworld-9' \(from \$FACEWORLD_VERSION\)") as e:
        FaceWorld(0)
    assert isinstance(e.value, UserError) and "faceworld-2, faceworld-3" in e.value.hint


def test_a_folder_of_models_names_the_renderer_version_they_saw(tmp_path, monkeypatch):
    """record_folder_version writes the version in force once; use_folder_version makes a folder's version the
    process's (FaceWorlds built without one draw it) and refuses $FACEWORLD_VERSION asking for another."""
    import os

    from data_prep.faceworld.render import (
        VERSION_ENV,
        RendererVersionError,
        record_folder_version,
        use_folder_version,
    )

    monkeypatch.setenv(VERSION_ENV, "")  # as if unset (and restored after the test)
    assert use_folder_version(tmp_path) == "faceworld-2"  # no file: the version in force
    assert os.environ[VERSION_ENV] == ""  # the default is not written into the environment
    path = record_folder_version(tmp_path)
    assert json.loads(path.read_text()) == {"version": "faceworld-2"}
    path.write_text('{"version": "faceworld-3"}')
    record_folder_version(tmp_path)  # an existing record is kept
    assert json.loads(path.read_text()) == {"version": "faceworld-3"}
    assert use_folder_version(tmp_path) == "faceworld-3" == os.environ[VERSION_ENV] == FaceWorld(0).version
    monkeypatch.setenv(VERSION_ENV, "faceworld-2")
    with pytest.raises(RendererVersionError, match="trained on renders of faceworld-3; .* asks for faceworld-2"):
        use_folder_version(tmp_path)


def test_commands_on_a_world_draw_the_renderer_version_its_models_saw(tmp_path, monkeypatch):
    """Every command that renders for a world's models draws the version in its renderer.json, whatever the
    environment says by default: data_prep's shards (--weights), so the identity stage's (also built directly, as
    scripts/world_identity_call.sh does), the identity and fine-tuning grids, the demo folder and the render
    CLI's photo folders (default: the embedded world's version). The demo refuses photos of another version."""
    import os

    import torch

    import eval.demo as demo
    import eval.finetune_baseline as finetune_baseline
    import eval.identity_grid as identity_grid
    import pretrain.world.identity as identity_stage
    from data_prep.__main__ import build_parser, build_source
    from data_prep.faceworld.render import VERSION_ENV, renderer_version
    from models.errors import UserError

    committed = json.loads((demo.DEMO_DATA / "faceworld.json").read_text())["renderer"]
    version = "faceworld-3" if committed == "faceworld-2" else "faceworld-2"  # not the committed demo's
    world = tmp_path / "world"
    (world / "faceid_encoder").mkdir(parents=True)
    (world / "faceid_encoder" / "identity.safetensors").write_bytes(b"")
    (world / "renderer.json").write_text(json.dumps({"version": version}))

    def fresh():  # as a new process would start: the environment's version is the default (conftest restores it)
        os.environ.pop(VERSION_ENV, None)

    fresh()
    args = build_parser().parse_args(["--source", "faceworld", "--identities", "1", "--photos", "1",
                                      "--out", str(tmp_path / "shards"), "--weights", str(world)])
    assert build_source(args).world.version == version

    class Seen(Exception):
        pass

    def seen(*args, **kwargs):  # what the next step would render with (faceworld-2, the default, sets no variable)
        raise Seen(renderer_version())

    fresh()  # the identity stage's shards: its data_prep command names the world, whoever built the stage
    stage = identity_stage.IdentityStage(identity_stage.StageOptions(out=tmp_path / "runs", world=world,
                                                                     device=torch.device("cpu"), tiny=True))
    argv = stage.prep_command()
    assert argv[1:3] == ["-m", "data_prep"]
    assert build_source(build_parser().parse_args(argv[3:])).world.version == version
    fresh()
    monkeypatch.setattr(identity_grid, "prepare_data", seen)
    with pytest.raises(Seen, match=version):
        identity_grid.main(["--seed", "1", "--world", str(world), "--settings", "1:none:0", "--no-progress"])
    fresh()
    monkeypatch.setattr(finetune_baseline, "cmd_grid", seen)
    with pytest.raises(Seen, match=version):
        finetune_baseline.main(["grid", "--world", str(world), "--seed", "1"])

    fresh()
    side = demo.make_demo_data(tmp_path / "demo", world=world)
    assert side["renderer"] == version == FaceWorld(0, version=version).version
    monkeypatch.setenv("UNIDIFFUSER_DEMO_WORLD", str(world))
    faceworld_main(["render", "--seed", "9", "--identities", "1", "--photos", "1", "--out", str(tmp_path / "f"),
                    "--no-progress"])
    assert json.loads((tmp_path / "f" / "faceworld.json").read_text())["renderer"] == version
    faceworld_main(["render", "--seed", "9", "--identities", "1", "--photos", "1", "--out", str(tmp_path / "g"),
                    "--no-progress", "--version", committed])
    assert json.loads((tmp_path / "g" / "faceworld.json").read_text())["renderer"] == committed
    monkeypatch.setattr(demo, "check_world", lambda folder: None)
    with pytest.raises(UserError, match=f"holds renders of {committed}, but .* trained on {version}") as e:
        demo.run_demo(world, demo.DEMO_DATA, tmp_path / "out", demo.Settings(device="cpu"), progress=False)
    assert "--make-data" in e.value.hint


def test_faceworld3_draws_bigger_heads_and_broader_expressions():
    """The same people, poses and light: faceworld-3's face boxes are a quarter wider, and an expression
    changes more pixels than in faceworld-2; both versions stay deterministic item by item."""
    ids, rs = np.arange(40, 56), np.arange(16) % 5
    old, new = FaceWorld(5, version="faceworld-2"), FaceWorld(5, version="faceworld-3")
    a, b = old.render(ids, rs), new.render(ids, rs)
    assert a.captions == b.captions and a.attributes == b.attributes
    widths = (b.boxes[:, 2] - b.boxes[:, 0]) / (a.boxes[:, 2] - a.boxes[:, 0])
    np.testing.assert_allclose(widths, 1.25, rtol=0.05)
    one = new.render(ids[3:4], rs[3:4])
    np.testing.assert_array_equal(one.images.numpy()[0], b.images.numpy()[3])

    def changed(world, value):  # pixels (of 64 x 64) an expression changes, mean over the people
        plain = world.render(ids, 0, dict(PLAIN)).images.numpy().astype(int)
        other = world.render(ids, 0, dict(PLAIN, expression=value)).images.numpy().astype(int)
        return (np.abs(plain - other).max(axis=-1) > 24).sum(axis=(1, 2)).mean()

    for value in ("smiling", "surprised"):
        assert changed(new, value) > 2 * changed(old, value), value


def test_render_workers_draw_the_version_of_their_parent(monkeypatch):
    import torch

    from data_prep.faceworld.render import VERSION_ENV
    from pretrain.world.common import WorldData

    monkeypatch.setenv(VERSION_ENV, "faceworld-3")
    there = WorldData(0, "backbone", 2, torch.device("cpu"), render_workers=1)
    monkeypatch.delenv(VERSION_ENV)  # the workers were told the version; they do not read it again
    try:
        got = there.get(0).pixels
    finally:
        there.close()
    ids, rs = there.draw(0)
    want = FaceWorld(0, version="faceworld-3").render(ids, rs).images
    np.testing.assert_array_equal(((got + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy(), want.numpy())
