"""models.image_text: the scorer's image-text model through one interface (ViT-B/32 for real, a stand-in here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from eval.competition_scorer import CompetitionScorer, References
from models.image_text import ImageTextModel, load_image_text_model


class StandIn:
    """An image-text model of two numbers: mean red and mean green of an image; texts name a colour."""

    def embed_images(self, images):
        arr = np.stack([np.asarray(im, np.float32).reshape(-1, 3).mean(0) for im in images])
        return torch.from_numpy(arr[:, :2] + 1.0)

    def embed_texts(self, texts):
        return torch.tensor([[1.0, 0.0] if "red" in t else [0.0, 1.0] for t in texts])


class NoFaces:
    def face(self, img):
        return None


def test_the_scorer_takes_any_image_text_model(tmp_path):
    model = StandIn()
    assert isinstance(model, ImageTextModel)
    red, green = tmp_path / "0-000.jpg", tmp_path / "1-000.jpg"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(red, format="PNG")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(green, format="PNG")
    scorer = CompetitionScorer(NoFaces(), model)
    ref = np.array([[256.0, 1.0]]) / np.hypot(256.0, 1.0)  # a red reference
    refs = References("p", tmp_path, ["r.jpg"], clip=ref, face_files=[], face=np.zeros((0, 512)))
    r, g = scorer.score_images([red, green], ["a man in red", "a man in red"], refs)
    e_red, e_green = np.array([256.0, 1.0]), np.array([1.0, 256.0])
    assert r.text == pytest.approx(e_red[0] / np.linalg.norm(e_red))
    assert g.text == pytest.approx(e_green[0] / np.linalg.norm(e_green))
    assert r.clip_img == pytest.approx(1.0) and g.clip_img < 0.1
    assert r.face == 0.0 and not r.face_found


def test_loads_the_weights_folders_vit_b32(tmp_path):
    """A weights folder with ViT-B-32.pt gives an ImageCLIP implementing the interface."""
    from scoring_world import CLIP_CFG, tiny_open_clip

    from models.image_clip import ImageCLIP
    from models.paths import WeightsError

    model, _, _ = tiny_open_clip()
    torch.save(model.state_dict(), tmp_path / "ViT-B-32.pt")
    with pytest.raises(WeightsError, match="ViT-B-32.pt"):
        load_image_text_model(root=tmp_path / "nothing")
    clip = ImageCLIP.from_file(tmp_path / "ViT-B-32.pt", model_cfg=CLIP_CFG)
    assert isinstance(clip, ImageTextModel)
    assert clip.embed_texts(["a boy"]).shape == (1, CLIP_CFG["embed_dim"])
    assert clip.embed_images([Image.new("RGB", (40, 40))]).shape == (1, CLIP_CFG["embed_dim"])


def test_the_scorer_loads_the_world_clip_of_a_world_folder(tmp_path):
    """In the identity world's folder the scorer's CLIP-I / CLIP-T come from its world-CLIP."""
    from scoring_world import build_pack
    from tiny_world import make_tiny_world

    from models.world_clip import load_world_clip

    world = make_tiny_world(tmp_path / "world")
    model, found = load_image_text_model(root=world)
    assert found == world / "world_clip"
    _, clip = load_world_clip(found, dtype=torch.float32)
    images = [Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (20, 200, 30))]
    e = model.embed_images(images)
    assert e.shape == (2, clip.config.embed_dim)
    pixels = torch.tensor([[200, 30, 30], [20, 200, 30]], dtype=torch.float32).view(2, 3, 1, 1).expand(2, 3, 64, 64)
    assert torch.allclose(e, clip.encode_image(pixels / 127.5 - 1.0), atol=1e-4)
    assert model.embed_texts(["a man in the snow"]).shape == (1, clip.config.embed_dim)
    scorer, info = CompetitionScorer.from_weights(weights_root=world, face_pack=build_pack(tmp_path / "pack"))
    assert info["clip"] == str(world / "world_clip")
    assert torch.allclose(scorer.clip.embed_images(images), e)
