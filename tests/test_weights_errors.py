"""Bad weight files stop with a WeightsError that names the file, the keys and what to do."""

import collections
import dataclasses
import json
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
    assert "3 of 3 weight files are missing or unusable (2 missing, 1 bad)" in out  # a 1-byte uvit_v1.pth
    save_state_dict(UViT(TINY).state_dict(), tmp_path / "models" / "uvit_v1.pth")
    (tmp_path / "model_configs.json").write_text(json.dumps({"uvit": dataclasses.asdict(TINY)}))
    assert check_weights(["uvit", "--weights", str(tmp_path)]) == 0
    assert "ok       uvit:" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from tiny_stack import make_tiny_weights_dir

    return make_tiny_weights_dir(tmp_path_factory.mktemp("check_weights"))


def test_check_weights_passes_the_tiny_stack(tiny_weights, capsys):
    from models.check_weights import main as check_weights

    names = ["uvit", "autoencoder", "caption_decoder", "clip_text", "clip_image"]
    assert check_weights([*names, "--weights", str(tiny_weights)]) == 0
    out = capsys.readouterr().out
    assert all(f"ok       {n}: " in out for n in names) and "names and shapes match" in out


def _broken_uvit(kind: str, good: Path, other: Path, target: Path) -> None:
    if kind == "zero-byte":
        target.touch()
    elif kind == "truncated":
        target.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    elif kind == "lfs-pointer":
        target.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 3821\n")
    elif kind == "text":
        target.write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>\n")
    elif kind == "pickle":
        torch.save(torch.nn.Linear(2, 2), target)  # a whole pickled module, not a state dict
    elif kind == "directory":
        target.mkdir()
    elif kind == "wrong-module":
        target.write_bytes(other.read_bytes())


@pytest.mark.parametrize("kind,words", [
    ("zero-byte", "the file is empty"), ("truncated", "damaged PyTorch zip archive"),
    ("lfs-pointer", "is a Git LFS pointer"), ("text", "is a text file, not a weight file (it begins '<!DOCTYPE"),
    ("pickle", "holds Python objects other than tensors"), ("directory", "is a folder, but a weight file"),
    ("wrong-module", "looks like the AutoencoderKL (autoencoder_kl.pth), not the UniDiffuser UViT"),
])
def test_check_weights_names_what_is_wrong_with_a_file(kind, words, tiny_weights, tmp_path, capsys):
    """The check-first step catches a broken download before any work: one line saying what is wrong."""
    from models.check_weights import main as check_weights

    (tmp_path / "models").mkdir()
    (tmp_path / "model_configs.json").write_bytes((tiny_weights / "model_configs.json").read_bytes())
    models = tiny_weights / "models"
    _broken_uvit(kind, models / "uvit_v1.pth", models / "autoencoder_kl.pth", tmp_path / "models" / "uvit_v1.pth")
    assert check_weights(["uvit", "--weights", str(tmp_path)]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("bad      uvit: ") and words in lines[0] and str(tmp_path) in lines[0]
    assert lines[1].startswith("1 of 1 weight files are missing or unusable") and len(lines) == 2


def test_check_weights_on_folders_and_the_image_clip(tiny_weights, tmp_path, capsys):
    from models.check_weights import main as check_weights

    root = tmp_path / "w"
    (root / "antelopev2").mkdir(parents=True)
    (root / "antelopev2" / "det_10g.onnx").write_bytes(b"")
    (root / "faceid_encoder").mkdir()
    (root / "faceid_encoder" / "config.json").write_text("{}")
    (root / "faceid_encoder" / "identity.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{\"a\": 1")
    clip = (tiny_weights / "models" / "ViT-B-32.pt").read_bytes()
    (root / "ViT-B-32.pt").write_bytes(clip[: len(clip) // 2])
    assert check_weights(["face_pack", "identity", "clip_image", "--weights", str(root)]) == 2
    out = capsys.readouterr().out
    assert "bad      face_pack: " in out and "det_10g.onnx: the file is empty" in out
    assert "bad      identity: " in out and "not a valid safetensors file" in out
    assert "bad      clip_image: " in out and "damaged" in out
    (root / "ViT-B-32.pt").write_bytes(clip)
    assert check_weights(["clip_image", "--weights", str(root)]) == 0


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
