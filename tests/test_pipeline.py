"""The whole text-to-image stack at tiny size (tests/tiny_stack.py) and the models.t2i command line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_stack import make_tiny_weights_dir

from models import t2i
from models.paths import WeightsError, read_model_configs
from models.pipeline import UniDiffuserT2I

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_weights_dir(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def pipe(root):
    return UniDiffuserT2I.from_pretrained(root, device="cpu")


def test_from_pretrained(pipe, root):
    assert pipe.dtype == torch.float32 and pipe.device.type == "cpu"
    assert pipe.z_shape == (4, 8, 8) and pipe.clip_dim == 16 and pipe.image_size == 16
    assert set(pipe.weight_files) == {"uvit", "autoencoder", "caption_decoder", "clip_text"}
    assert pipe.weight_files["uvit"] == root / "models" / "uvit_v1.pth"
    assert read_model_configs(root)["uvit"]["num_text_tokens"] == 77


def test_generates_images(pipe):
    images = pipe(["a photo of a boy", "a sitting girl"], n_per_prompt=2, steps=3)
    assert [len(row) for row in images] == [2, 2]
    assert all(im.size == (16, 16) and im.mode == "RGB" for row in images for im in row)
    again = pipe(["a photo of a boy"], n_per_prompt=2, steps=3)
    assert again[0][0].tobytes() == images[0][0].tobytes()  # seed 42 by default, set once
    assert images[0][0].tobytes() != images[0][1].tobytes()
    other = pipe(["a photo of a boy"], n_per_prompt=1, steps=3, seed=1)
    assert other[0][0].tobytes() != images[0][0].tobytes()


def test_text_features_are_encoded_once_per_prompt(pipe, monkeypatch):
    pipe._text_cache.clear()
    direct = pipe.text_encoder.encode(["a boy", "a girl"]).float()
    seen = []
    encode = pipe.text_encoder.encode
    monkeypatch.setattr(pipe.text_encoder, "encode", lambda prompts: seen.append(list(prompts)) or encode(prompts))
    first = pipe.encode_text(["a boy", "a girl", "a boy"])
    again = pipe.encode_text("a girl")
    assert seen == [["a boy", "a girl"]]  # each distinct prompt once, in one batch
    torch.testing.assert_close(first, direct[[0, 1, 0]])
    torch.testing.assert_close(again, direct[1:])
    again.add_(1)  # callers get their own tensor
    torch.testing.assert_close(pipe.encode_text("a girl"), direct[1:])
    monkeypatch.setattr(UniDiffuserT2I, "TEXT_CACHE_SIZE", 2)
    pipe.encode_text(["a cat"])  # over the bound: the store starts again
    assert len(pipe._text_cache) == 1 and seen[-1] == ["a cat"]
    # a batch mixing a stored prompt with new ones past the bound: the stored one is encoded again with them
    # (emptying the store must not lose a prompt of the batch being encoded)
    mixed = pipe.encode_text(["a cat", "a boy", "a girl"])
    assert seen[-1] == ["a cat", "a boy", "a girl"]
    torch.testing.assert_close(mixed[1:], direct)
    pipe._text_cache.clear()


def test_stages_and_nfe(pipe):
    calls = []
    handle = pipe.uvit.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        text = pipe.encode_text(["a boy"]).expand(3, -1, -1)
        assert text.shape == (3, 77, 8) and text.dtype == torch.float32
        gen = torch.Generator().manual_seed(0)
        z, clip = pipe.sample_latents(pipe.eps_fn(text, scale=7.0, generator=gen), 3, steps=6, generator=gen)
    finally:
        handle.remove()
    assert calls == [6] * 6  # one batched (cond + uncond) call per step
    assert z.shape == (3, 4, 8, 8) and clip.shape == (3, 1, 16) and z.dtype == torch.float32
    images = pipe.decode(z)
    assert images.shape == (3, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    # z is drawn before clip from the generator (the reference's order)
    gen = torch.Generator().manual_seed(5)
    z0, clip0 = pipe.sample_latents(lambda x, t: torch.zeros_like(x), 2, steps=1, generator=gen)
    gen = torch.Generator().manual_seed(5)
    ref_z, ref_clip = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 1, 16, generator=gen)
    sched = pipe.schedule  # with eps = 0 one first-order step scales x by alpha_t / alpha_s
    ratio = float(sched.marginal_alpha(1e-3) / sched.marginal_alpha(1.0))
    torch.testing.assert_close(z0, ref_z * ratio)
    torch.testing.assert_close(clip0, ref_clip * ratio)


def test_empty_token_and_no_guidance(pipe):
    a = pipe("a boy", n_per_prompt=1, steps=2, mode="empty_token")
    b = pipe("a boy", n_per_prompt=1, steps=2, scale=0)
    assert a[0][0].size == b[0][0].size == (16, 16)


def test_bfloat16_autocast(root):
    pipe = UniDiffuserT2I.from_pretrained(root, device="cpu", dtype=torch.bfloat16)
    assert next(pipe.uvit.parameters()).dtype == torch.bfloat16
    assert pipe("a boy", n_per_prompt=1, steps=2)[0][0].size == (16, 16)


def test_missing_weights(tmp_path):
    with pytest.raises(WeightsError, match="uvit_v1.pth"):
        UniDiffuserT2I.from_pretrained(tmp_path, device="cpu")


def test_cli_writes_images(root, tmp_path, capsys):
    out = tmp_path / "out"
    rc = t2i.main(["--prompt", "a boy", "--prompt", "a girl", "--n", "2", "--steps", "2", "--out", str(out),
                   "--weights", str(root), "--quiet", "--ext", "jpg"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["0-000.jpg", "0-001.jpg", "1-000.jpg", "1-001.jpg"]
    assert "4 images" in capsys.readouterr().out


def test_cli_missing_weights_exit_2(tmp_path):
    env = {**os.environ, "UNIDIFFUSER_WEIGHTS": str(tmp_path / "empty")}
    proc = subprocess.run([sys.executable, "-m", "models.t2i", "--prompt", "x", "--out", str(tmp_path / "o")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error: UniDiffuser v1 UViT not found" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_the_weights_folders_sampler_policy_adds_a_final_denoising_evaluation(tmp_path):
    """model_configs.json's "sampler": {"final_denoise": true} makes every run one evaluation longer, and that
    last evaluation's clean prediction is the result; without it the reference sampler runs; bad entries
    stop with a WeightsError that names them."""
    import json
    import shutil

    from models.pipeline import sampler_policy

    root = make_tiny_weights_dir(tmp_path / "w")
    plain = UniDiffuserT2I.from_pretrained(root, device="cpu")
    configs = json.loads((root / "model_configs.json").read_text())
    (root / "model_configs.json").write_text(json.dumps({**configs, "sampler": {"final_denoise": True}}))
    policed = UniDiffuserT2I.from_pretrained(root, device="cpu")
    assert plain.final_denoise is False and policed.final_denoise is True
    text = plain.encode_text(["a photo of a boy"])
    counts = {}
    for name, p in (("plain", plain), ("policed", policed)):
        inner = p.eps_fn(text, scale=0)
        calls = []

        def eps_fn(x, t, inner=inner, calls=calls):
            calls.append(1)
            return inner(x, t)

        z, _ = p.sample_latents(eps_fn, 1, steps=3, generator=torch.Generator().manual_seed(0))
        counts[name] = (len(calls), z)
    assert counts["plain"][0] == 3 and counts["policed"][0] == 4
    assert not torch.equal(counts["plain"][1], counts["policed"][1])
    for bad in ({"final_denoise": "yes"}, {"denoise": True}, ["final_denoise"]):
        with pytest.raises(WeightsError, match="sampler"):
            sampler_policy({"sampler": bad})
    shutil.rmtree(root)
