"""train.py and sample.py run unchanged on an identity-world weights folder (pixel space, word
tokenizer, world-CLIP, small UViT in .safetensors): tiny random world, stand-in face pack."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encoder.config import IdentityConfig
from encoder.identity import IdentityModule
from eval.bench.standin_faces import make_pack, paint_marker
from models.pixel_space import PixelSpace, PixelSpaceConfig
from models.uvit import UViTConfig
from tests.tiny_world import make_tiny_world

ROOT = Path(__file__).resolve().parent.parent


def _run(*args):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.parametrize("gains", [(), (1.0, 0.6, 0.3)], ids=["one_gain", "band_gains"])
def test_train_and_sample_on_a_world_folder(tmp_path: Path, gains):
    """With either pixel space; with band gains, refinement encodes the photos through it too."""
    world = make_tiny_world(tmp_path / "world", pixel=PixelSpaceConfig(level_gains=gains))
    pack = make_pack(tmp_path / "pack")
    photos = tmp_path / "train_data" / "woman1"
    photos.mkdir(parents=True)
    for i, (row, col) in enumerate([(20, 20), (30, 40)]):
        img = np.full((640, 640, 3), 128, np.uint8)
        Image.fromarray(paint_marker(img, row, col)).save(photos / f"photo{i}.jpg", quality=98)
    uvit = UViTConfig.from_dict(json.loads((world / "model_configs.json").read_text())["uvit"])
    module = IdentityModule(IdentityConfig.for_uvit(uvit, num_tokens=2, hidden_dim=16))
    with torch.no_grad():
        module.gate.fill_(0.5)
    encoder = module.save(tmp_path / "faceid_encoder")
    prompts = tmp_path / "woman1.json"
    prompts.write_text(json.dumps(["a photo of a woman wearing sunglasses"]))
    record = tmp_path / "identities" / "woman1"
    refine = ["--weights", str(world), "--refine-steps", "1", "--refine-batch", "1"] if gains else []
    _run("train.py", "-d", str(photos), "-o", str(record), "--face-pack", str(pack), "--encoder", str(encoder),
         "--device", "cpu", "--quiet", *refine)
    out = tmp_path / "outputs" / "woman1"
    p = _run("sample.py", "--restore_path", str(record), "--prompt_path", str(prompts), "--output_path", str(out),
             "--weights", str(world), "--encoder", str(encoder), "--steps", "2", "--device", "cpu", "--quiet")
    assert p.stdout.strip().splitlines()[-1] == "finetuned parameters: 0"
    images = sorted(out.glob("*.jpg"))
    assert [i.name for i in images] == ["0-000.jpg", "0-001.jpg", "0-002.jpg"]
    assert all(Image.open(i).size == (64, 64) for i in images)


def _world_shard(tmp_path: Path, name: str, gains: tuple[float, ...]) -> tuple[dict, Path]:
    """data_prep's CLI on one photo of a marker face, for a tiny world whose pixel space has `gains`:
    (the shard's arrays, the world folder)."""
    import tarfile

    from data_prep.__main__ import main
    from data_prep.format import decode_arrays

    world = make_tiny_world(tmp_path / name / "world", pixel=PixelSpaceConfig(level_gains=gains))
    pack = make_pack(tmp_path / "pack")
    photos = tmp_path / "photos"
    if not photos.exists():
        (photos / "p").mkdir(parents=True)
        Image.fromarray(paint_marker(np.full((640, 640, 3), 128, np.uint8), 30, 40)).save(photos / "p" / "one.png")
        (photos / "p" / "one.txt").write_text("a photo of a woman in the snow")
    out = tmp_path / name / "out"
    code = main(["--source", "folder", "--input", str(photos), "--identity-from-folder", "--out", str(out),
                 "--weights", str(world), "--face-pack", str(pack), "--no-progress", "--resolution", "64",
                 "--min-image-side", "64", "--min-face-size", "32"])
    assert code == 0
    with tarfile.open(next(out.glob("*.tar"))) as tf:
        raw = {m.name.split(".", 1)[1]: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}
    return decode_arrays(raw, ("moments", "text", "clip")), world


def test_data_prep_writes_world_shards(tmp_path: Path):
    """data_prep's CLI on the world folder: pixel-space moments [6, 64, 64], 24 x 8 text, 16-d image CLIP;
    pretrain's loader reads them with the world UViT's shapes and its losses get the crop back; a world whose
    pixel space has band gains stores that space's latent of the same crop."""
    from models.autoencoder import latent_from_moments
    from pretrain.data import expected_shapes

    arrays, world = _world_shard(tmp_path, "one_gain", ())
    uvit = UViTConfig.from_dict(json.loads((world / "model_configs.json").read_text())["uvit"])
    shapes = expected_shapes(uvit)
    assert {k: tuple(v.shape) for k, v in arrays.items()} == {k: tuple(shapes[k]) for k in arrays}
    z = latent_from_moments(torch.from_numpy(arrays["moments"])[None]).float()
    assert z.shape == (1, 3, 64, 64) and -1.01 <= float(z.min()) and float(z.max()) <= 1.01
    gains = (1.0, 0.6, 0.3)
    banded, _ = _world_shard(tmp_path, "band_gains", gains)
    zb = latent_from_moments(torch.from_numpy(banded["moments"])[None]).float()
    expected = PixelSpace(PixelSpaceConfig(level_gains=gains)).latent(z)  # z is the crop itself
    assert not torch.allclose(zb, z, atol=1e-3)
    torch.testing.assert_close(zb, expected, atol=2e-3, rtol=0)
