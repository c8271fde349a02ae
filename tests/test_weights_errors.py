"""Bad weight files stop with a WeightsError that names the file, the keys and what to do."""

import collections
from pathlib import Path

import pytest
import torch

from models import (
    AutoencoderConfig,
    AutoencoderKL,
    CaptionDecoder,
    CaptionDecoderConfig,
    UViT,
    UViTConfig,
    WeightsError,
    load_autoencoder,
    load_caption_decoder,
    load_encode_prefix,
    load_uvit,
)
from models.weights import read_state_dict, save_state_dict

TINY = UViTConfig.tiny()


@pytest.fixture(scope="module")
def uvit_state():
    torch.manual_seed(0)
    return UViT(TINY).state_dict()


def write(path, state):
    return save_state_dict(state, path)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError) as e:
        load_uvit(tmp_path / "uvit_v1.pth", TINY)
    msg = str(e.value)
    assert "uvit_v1.pth" in msg and "does not exist" in msg and "checkpoints/README.md" in msg


def test_missing_from_weights_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIDIFFUSER_WEIGHTS", str(tmp_path))
    with pytest.raises(WeightsError, match="checkpoints/README.md") as e:
        load_autoencoder()
    assert str(tmp_path / "models" / "autoencoder_kl.pth") in str(e.value)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file(tmp_path, uvit_state, suffix):
    path = write(tmp_path / f"uvit{suffix}", uvit_state)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError) as e:
        load_uvit(path, TINY)
    msg = str(e.value)
    assert str(path) in msg and "truncated" in msg and "download it again" in msg


@pytest.mark.parametrize("text", ["hello, these are not weights\n", "version 2\nsize 3821\n"])
def test_text_file_named_pth(tmp_path, text):
    path = tmp_path / "uvit_v1.pth"
    path.write_text(text)
    with pytest.raises(WeightsError) as e:
        load_uvit(path, TINY)
    assert str(path) in str(e.value) and "not a weight file" in str(e.value)


def test_git_lfs_pointer(tmp_path):
    path = tmp_path / "uvit_v1.pth"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 3821\n")
    with pytest.raises(WeightsError, match="Git LFS pointer"):
        load_uvit(path, TINY)


def test_empty_file(tmp_path):
    path = tmp_path / "uvit_v1.pth"
    path.touch()
    with pytest.raises(WeightsError, match="empty"):
        load_uvit(path, TINY)


def test_pickle_with_objects_is_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"weight": torch.zeros(2), "counter": collections.OrderedDict(a=UViTConfig.tiny())}, path)
    with pytest.raises(WeightsError) as e:
        read_state_dict(path, "UViT")
    msg = str(e.value)
    assert "objects other than tensors" in msg and "UViTConfig" in msg and "state_dict()" in msg


def test_training_checkpoint_is_not_a_state_dict(tmp_path, uvit_state):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": dict(uvit_state), "step": 10}, path)
    with pytest.raises(WeightsError, match=r"not tensors \('state_dict': dict, 'step': int\)"):
        load_uvit(path, TINY)
    torch.save({"state_dict": dict(uvit_state)}, path)  # a wrapper that is the whole content is fine
    assert load_uvit(path, TINY).config == TINY


def test_autoencoder_file_given_to_uvit(tmp_path):
    path = write(tmp_path / "uvit_v1.pth", AutoencoderKL(AutoencoderConfig.tiny()).state_dict())
    with pytest.raises(WeightsError) as e:
        load_uvit(path, TINY)
    msg = str(e.value)
    assert "looks like the AutoencoderKL (autoencoder_kl.pth)" in msg and str(path) in msg


def test_uvit_file_given_to_autoencoder(tmp_path, uvit_state):
    path = write(tmp_path / "autoencoder_kl.safetensors", uvit_state)
    with pytest.raises(WeightsError, match="looks like the UniDiffuser UViT"):
        load_autoencoder(path, AutoencoderConfig.tiny())


def test_one_wrong_shape(tmp_path, uvit_state):
    state = dict(uvit_state) | {"text_embed.weight": torch.zeros(64, 9)}
    with pytest.raises(WeightsError) as e:
        load_uvit(write(tmp_path / "u.pth", state), TINY)
    msg = str(e.value)
    assert "0 missing, 0 unexpected, 1 with the wrong shape" in msg
    assert "text_embed.weight: expected [64, 8], found [64, 9]" in msg
    assert "looks like" not in msg and "config" in msg


def test_missing_and_unexpected_keys_reported_together(tmp_path, uvit_state):
    state = {k: v for k, v in uvit_state.items() if k != "norm.bias"} | {"extra.weight": torch.zeros(3)}
    with pytest.raises(WeightsError) as e:
        load_uvit(write(tmp_path / "u.safetensors", state), TINY)
    msg = str(e.value)
    assert "1 missing, 1 unexpected, 0 with the wrong shape" in msg
    assert "norm.bias: expected [64]" in msg and "extra.weight: found [3]" in msg


def test_many_offending_keys_are_truncated(tmp_path, uvit_state):
    path = write(tmp_path / "u.pth", {k: v for k, v in uvit_state.items() if "mlp" not in k})
    with pytest.raises(WeightsError, match=r"missing from the file \(first 8 shown\)") as e:
        load_uvit(path, TINY)
    assert str(e.value).count("expected [") == 8


def test_full_config_against_tiny_file(tmp_path, uvit_state):
    with pytest.raises(WeightsError, match=r"pos_embed: expected \[1, 1104, 1536\], found \[1, 25, 64\]"):
        load_uvit(write(tmp_path / "u.pth", uvit_state))


@pytest.fixture(scope="module")
def caption_file(tmp_path_factory):
    """A tiny caption decoder saved as the release is: `module.` prefix, clip* and attention buffers."""
    torch.manual_seed(0)
    model = CaptionDecoder(CaptionDecoderConfig.tiny()).eval()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state |= {"module.clip.visual.proj": torch.zeros(4, 4), "module.clip_project.weight": torch.zeros(2),
              "module.gpt.transformer.h.0.attn.bias": torch.ones(1, 1, 32, 32),
              "module.gpt.transformer.h.0.attn.masked_bias": torch.tensor(-1e4)}
    path = tmp_path_factory.mktemp("caption") / "caption_decoder.pth"
    torch.save(state, path)
    return model, path


@torch.no_grad()
def test_caption_decoder_with_extra_entries_loads(caption_file):
    model, path = caption_file
    loaded = load_caption_decoder(path, CaptionDecoderConfig.tiny())
    assert loaded.gpt.lm_head.weight is loaded.gpt.transformer.wte.weight
    tokens, features = torch.randint(0, 64, (2, 5)), torch.randn(2, 3, 32)
    torch.testing.assert_close(loaded(tokens, features), model(tokens, features))
    prefix = load_encode_prefix(path, CaptionDecoderConfig.tiny())
    assert isinstance(prefix, torch.nn.Linear) and not prefix.weight.requires_grad
    assert torch.equal(prefix(features), model.encode_prefix(features))


def test_encode_prefix_wrong_shape(caption_file):
    _, path = caption_file
    with pytest.raises(WeightsError, match=r"encode_prefix.weight: expected \[64, 768\], found \[8, 32\]"):
        load_encode_prefix(path)


def test_file_without_encode_prefix(tmp_path):
    path = write(tmp_path / "caption_decoder.pth", AutoencoderKL(AutoencoderConfig.tiny()).state_dict())
    with pytest.raises(WeightsError) as e:
        load_encode_prefix(path, CaptionDecoderConfig.tiny())
    msg = str(e.value)
    assert "not a caption decoder file" in msg and "no encode_prefix" in msg
    assert "encoder.conv_in.weight" in msg and "looks like the AutoencoderKL" in msg


def test_save_is_atomic_and_handles_shared_tensors(tmp_path):
    shared = torch.randn(4, 3)
    state = {"a": shared, "b": shared, "c": shared[:, 1]}  # tied and non-contiguous
    path = save_state_dict(state, tmp_path / "sub" / "w.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["w.safetensors"]
    back = read_state_dict(path, "test")
    assert all(torch.equal(back[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="unknown weight format"):
        save_state_dict(state, tmp_path / "w.npz")


def test_format_follows_content_not_suffix(tmp_path, uvit_state):
    sd = save_state_dict(uvit_state, tmp_path / "w.safetensors")
    misnamed = sd.rename(tmp_path / "uvit_v1.pth")
    assert load_uvit(misnamed, TINY).config == TINY


def test_legacy_format_and_file_dtype(tmp_path, uvit_state):
    path = tmp_path / "uvit_v1.pth"
    torch.save({k: v.half() for k, v in uvit_state.items()}, path, _use_new_zipfile_serialization=False)
    loaded = load_uvit(path, TINY)
    assert all(p.dtype == torch.float16 for p in loaded.parameters())


def test_preflight_lists_every_missing_file(tmp_path, capsys):
    from models.check_weights import main as check_weights

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "uvit_v1.pth").write_bytes(b"x")
    assert check_weights(["uvit", "autoencoder", "face_pack", "--weights", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "autoencoder_kl.pth" in out and "antelopev2" in out and "uvit_v1.pth not found" not in out
    assert "2 of 3 weight files are missing" in out
    assert check_weights(["uvit", "--weights", str(tmp_path)]) == 0


def test_meta_build_skips_random_init_and_keeps_it_elsewhere():
    """build_on_meta: a shell without running random init (no torch._dynamo import on the way);
    outside it modules initialise as usual."""
    import subprocess
    import sys

    from models.weights import build_on_meta

    shell = build_on_meta(lambda: torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 2)))
    assert all(p.is_meta for p in shell.parameters())
    real = torch.nn.Embedding(5, 3)
    assert not real.weight.is_meta and real.weight.std() > 0
    code = ("import sys; from models.weights import build_on_meta; import torch; "
            "build_on_meta(lambda: torch.nn.Embedding(50, 8)); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "False"
