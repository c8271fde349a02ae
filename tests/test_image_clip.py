"""Image CLIP (open_clip): shapes, embeddings not normalised, local-file loading and its errors."""

import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_stack import IMAGE_CLIP, make_tiny_image_clip, make_tiny_weights_dir

from models.image_clip import ImageCLIP
from models.paths import WeightsError


@pytest.fixture(scope="module")
def clip():
    model, preprocess = make_tiny_image_clip()
    return ImageCLIP(model, preprocess)


def _gradient(w=48, h=40, mode="RGB"):
    x = torch.linspace(0, 1, w)[None, :] * torch.linspace(0.2, 1, h)[:, None]
    rgb = torch.stack([x, x.flip(1), 1 - x], dim=-1)
    return Image.fromarray((rgb * 255).to(torch.uint8).numpy()).convert(mode)


def test_embed_images_shapes_not_normalised(clip):
    images = [_gradient(), _gradient(mode="L"), _gradient(mode="RGBA"), _gradient(64, 64)]
    emb = clip.embed_images(images)
    assert emb.shape == (4, IMAGE_CLIP["embed_dim"]) and emb.dtype == torch.float32
    assert not torch.allclose(emb.norm(dim=-1), torch.ones(4), atol=1e-3)
    ref = clip.model.encode_image(torch.stack([clip.preprocess(im) for im in images]))
    torch.testing.assert_close(emb, ref)
    torch.testing.assert_close(clip.embed_images(images, batch_size=3), emb)


def test_tensor_input_close_to_pil(clip):
    image = _gradient(64, 64)
    pil = clip.embed_images([image])
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
    from_uint8 = clip.embed_images(pixels)
    from_float = clip.embed_images(pixels.float() / 255)
    torch.testing.assert_close(from_uint8, from_float)
    assert torch.nn.functional.cosine_similarity(pil, from_float).item() > 0.99
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        clip.embed_images(torch.rand(3, 8, 8))


def test_embed_texts(clip):
    emb = clip.embed_texts(["a boy", "a girl who raised her hands"])
    assert emb.shape == (2, IMAGE_CLIP["embed_dim"])
    assert not torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-3)
    torch.testing.assert_close(clip.embed_texts("a boy"), emb[:1])


def test_from_file_state_dict_and_torchscript(clip, tmp_path, monkeypatch):
    torch.save(clip.model.state_dict(), tmp_path / "w.pt")
    loaded = ImageCLIP.from_file(tmp_path / "w.pt", model_cfg=IMAGE_CLIP)
    images = [_gradient()]
    torch.testing.assert_close(loaded.embed_images(images), clip.embed_images(images))
    with pytest.warns(FutureWarning):  # the OpenAI release is a TorchScript archive
        torch.jit.script(clip.model).save(str(tmp_path / "jit.pt"))
    with monkeypatch.context() as m:  # read as data: the archive's code never runs
        m.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load ran the archive"))
        loaded = ImageCLIP.from_file(tmp_path / "jit.pt", model_cfg=IMAGE_CLIP)
    torch.testing.assert_close(loaded.embed_images(images), clip.embed_images(images))
    for k, v in clip.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[k], v, rtol=0, atol=0)


def _rewrite_zip(src, dst, edit) -> None:
    """Copy a zip, passing each (name, bytes) through edit."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, edit(info.filename, zin.read(info)))


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_torchscript_archive_that_would_run_code_is_refused(clip, tmp_path, monkeypatch):
    with pytest.warns(FutureWarning):
        torch.jit.script(clip.model).save(str(tmp_path / "jit.pt"))
    marker = tmp_path / "ran"
    evil = pickle.dumps({"visual": _RunsCode(marker)}, protocol=2)
    _rewrite_zip(tmp_path / "jit.pt", tmp_path / "evil.pt", lambda n, b: evil if n.endswith("/data.pkl") else b)
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load ran the archive"))
    with pytest.raises(WeightsError, match=r"asks to run code \(posix.mkdir\).*not OpenAI's ViT-B-32.pt"):
        ImageCLIP.from_file(tmp_path / "evil.pt", model_cfg=IMAGE_CLIP)
    assert not marker.exists()
    # damaged archives: a message, not a traceback
    whole = (tmp_path / "jit.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) * 2 // 3])
    (tmp_path / "empty.pt").write_bytes(b"")
    _rewrite_zip(tmp_path / "jit.pt", tmp_path / "short.pt",
                 lambda n, b: b[: len(b) // 2] if n.endswith("/data/1") else b)
    for name in ("cut.pt", "empty.pt", "short.pt"):  # (an empty file is caught by the cheap check first)
        with pytest.raises(WeightsError, match="could not load image CLIP weights|cannot read .*the file is empty"):
            ImageCLIP.from_file(tmp_path / name, model_cfg=IMAGE_CLIP)


def test_openai_release_is_loaded_only_with_its_checksum(clip, tmp_path, monkeypatch):
    """An archive the data reader refuses goes to torch.jit.load only when it is OpenAI's file."""
    import hashlib

    import models.image_clip as image_clip

    with pytest.warns(FutureWarning):
        torch.jit.script(clip.model).save(str(tmp_path / "ViT-B-32.pt"))

    def refuse(path):
        raise image_clip.ArchiveRefused("torch.some_future_global")

    monkeypatch.setattr(image_clip, "_torchscript_tensors", refuse)
    with pytest.raises(WeightsError, match="not OpenAI's ViT-B-32.pt"):
        ImageCLIP.from_file(tmp_path / "ViT-B-32.pt", model_cfg=IMAGE_CLIP)
    digest = hashlib.sha256((tmp_path / "ViT-B-32.pt").read_bytes()).hexdigest()
    monkeypatch.setattr(image_clip, "OPENAI_VIT_B_32_SHA256", digest)
    loaded = ImageCLIP.from_file(tmp_path / "ViT-B-32.pt", model_cfg=IMAGE_CLIP)
    images = [_gradient()]
    torch.testing.assert_close(loaded.embed_images(images), clip.embed_images(images))


def test_from_pretrained_tiny_stack(tmp_path):
    root = make_tiny_weights_dir(tmp_path)
    loaded = ImageCLIP.from_pretrained(root)
    assert loaded.embed_images([_gradient()]).shape == (1, IMAGE_CLIP["embed_dim"])


def test_missing_or_wrong_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        ImageCLIP.from_file(tmp_path / "ViT-B-32.pt")
    torch.save({"foo": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="could not load"):
        ImageCLIP.from_file(tmp_path / "bad.pt", model_cfg=IMAGE_CLIP)
