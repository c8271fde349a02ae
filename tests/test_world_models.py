"""The identity world's model pieces: word tokenizer, pixel space, world-CLIP, and the world folder
loaded through the real pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from models.paths import find_weights
from models.pixel_space import LOGVAR, PixelSpace, PixelSpaceConfig
from models.tokenizers import WordTokenizer, load_tokenizer, split_words
from models.world_clip import VisionTower, WorldCLIPConfig, WorldCLIPModel, load_world_clip
from tests.tiny_world import WORDS, make_tiny_world


# ---- word tokenizer ---------------------------------------------------------------------------------
def test_word_tokenizer_round_trip_and_padding(tmp_path: Path):
    tok = WordTokenizer.build(["a", "photo", "of", "man", "t-shirt", "wearing", "Red"], context_length=8)
    assert tok.save(tmp_path) == tmp_path
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, WordTokenizer) and tok.context_length == 8
    text = "A photo of a man, wearing a red T-shirt!"
    assert split_words(text) == ["a", "photo", "of", "a", "man", "wearing", "a", "red", "t-shirt"]
    ids = tok([text, "a zebra"])
    assert ids.shape == (2, 8) and ids.dtype == torch.long
    # BOS, 6 words (truncated to context - 2), EOS
    assert ids[0, 0] == tok.bos_id and ids[0, 7] == tok.eos_id
    assert tok.decode(ids[0]) == "a photo of a man wearing"
    # short prompt: BOS, a, <unk>, EOS, then <pad> to the end
    assert ids[1].tolist() == [tok.bos_id, tok.vocab["a"], tok.unk_id, tok.eos_id] + [tok.pad_id] * 4
    assert tok.decode(tok(text, max_length=16)[0]) == " ".join(split_words(text))
    assert tok.unknown_words("a zebra") == ["zebra"]


def test_word_tokenizer_refuses_bad_vocabularies():
    with pytest.raises(ValueError, match="special"):
        WordTokenizer({"a": 0}, 8)
    with pytest.raises(ValueError, match="single words"):
        WordTokenizer.build(["two words"], 8)


def test_clip_folder_still_gets_the_bpe_tokenizer(tmp_path: Path):
    from models.clip_tokenizer import ClipTokenizer
    from models.text_encoder import write_clip_tokenizer

    tok = load_tokenizer(write_clip_tokenizer(tmp_path))
    assert isinstance(tok, ClipTokenizer) and tok.context_length == 77


# ---- pixel space ------------------------------------------------------------------------------------
def test_pixel_space_is_the_identity_with_autoencoder_methods():
    ps = PixelSpace()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    m = ps.encode_moments(x)
    assert m.shape == (2, 6, 64, 64)
    assert torch.allclose(m[:, :3] * ps.config.scale_factor, x, atol=1e-6) and (m[:, 3:] == LOGVAR).all()
    z = ps.encode(x, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(z, x, atol=1e-5) and torch.equal(ps.decode(z), z)
    assert torch.allclose(ps(x), x, atol=1e-5)
    # pretrain/losses.py draws shard latents with AutoencoderKL v1's scale: the image comes back
    from models.autoencoder import latent_from_moments

    assert torch.allclose(latent_from_moments(m.half().float()), x, atol=2e-3)  # shards store fp16
    assert ps.config.downsample_factor == 1 and next(ps.parameters()).numel() == 1
    with pytest.raises(ValueError):
        ps.encode_moments(torch.zeros(1, 4, 8, 8))


def test_pixel_space_gain_scales_the_latent_and_decode_undoes_it():
    """signal_scale g: the latent is g x (through the moments too, as shards store them), decode gives x."""
    from models.autoencoder import latent_from_moments

    ps = PixelSpace(PixelSpaceConfig(signal_scale=0.3))
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    z = ps.encode(x, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(z, 0.3 * x, atol=1e-5) and torch.allclose(ps.decode(z), x, atol=1e-5)
    assert torch.allclose(latent_from_moments(ps.encode_moments(x)), 0.3 * x, atol=1e-5)
    older = {"kind": "pixel_space", "embed_dim": 3, "scale_factor": 0.18215}  # written before the gain
    assert PixelSpaceConfig.from_dict(older).signal_scale == 1
    with pytest.raises(ValueError, match="signal_scale"):
        PixelSpaceConfig(signal_scale=0.0)


def test_load_autoencoder_gives_pixel_space_for_its_config(tmp_path: Path):
    from models import WeightsError, load_autoencoder
    from models.weights import save_state_dict

    path = save_state_dict(PixelSpace().state_dict(), tmp_path / "pixel_space.safetensors")
    ps = load_autoencoder(path, {"kind": "pixel_space", "embed_dim": 3, "scale_factor": 0.18215})
    assert isinstance(ps, PixelSpace) and not ps.scale.requires_grad
    with pytest.raises(WeightsError, match="scale"):
        load_autoencoder(path, {"kind": "pixel_space", "scale_factor": 1.0})
    # in bfloat16 (sample.py on CUDA, or --dtype bf16) the scale is rounded to 0.1826: still the same file
    for dtype in (torch.bfloat16, torch.float16):
        ps = load_autoencoder(path, {"kind": "pixel_space", "embed_dim": 3, "scale_factor": 0.18215}, dtype=dtype)
        assert ps.scale.dtype == dtype
    with pytest.raises(WeightsError, match="scale"):
        load_autoencoder(path, {"kind": "pixel_space", "scale_factor": 0.2}, dtype=torch.bfloat16)
    # models.check_weights loads on the meta device: names and shapes only
    assert load_autoencoder(path, {"kind": "pixel_space", "scale_factor": 0.18215}, device="meta").scale.is_meta
    # a bad entry names the file it came from, as every loader's does (models.weights.as_config)
    with pytest.raises(WeightsError, match="PixelSpaceConfig in the weights folder's model_configs.json"):
        load_autoencoder(path, {"kind": "pixel_space", "scale_factor": 0.18215, "signal_scale": -1.0})
    with pytest.raises(ValueError):
        PixelSpaceConfig(kind="vae")


# ---- world-CLIP -------------------------------------------------------------------------------------
def test_vision_tower_matches_open_clip():
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    ours = VisionTower(image_size=32, patch_size=8, width=32, layers=2, heads=4, output_dim=16).eval()
    ref = VisionTransformer(image_size=32, patch_size=8, width=32, layers=2, heads=4, mlp_ratio=4.0,
                            output_dim=16).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(ours(x), ref(x), atol=1e-5)


def test_standardized_prefix_keeps_the_text_embedding():
    torch.manual_seed(0)
    model = WorldCLIPModel(WorldCLIPConfig.tiny(32)).eval()
    ids = torch.randint(4, 32, (16, 24))
    ids[:, 0], ids[:, 10] = 1, 2
    before_emb = model.encode_text(ids)
    f = model.text_features(ids).flatten(0, 1)
    model.standardize_prefix(f.mean(0), f.std(0))
    g = model.text_features(ids).flatten(0, 1)
    assert torch.allclose(g.mean(0), torch.zeros(8), atol=1e-4) and torch.allclose(g.std(0), torch.ones(8), atol=1e-4)
    assert torch.allclose(model.encode_text(ids), before_emb, atol=1e-4)
    assert torch.allclose(before_emb.norm(dim=-1), torch.full((16,), 4.0), atol=1e-4)  # sqrt(E), E = 16


def test_world_clip_folder_loads_as_image_clip_and_text_encoder(tmp_path: Path):
    from models.image_clip import ImageCLIP
    from models.text_encoder import TextEncoder

    root = make_tiny_world(tmp_path)
    tok, model = load_world_clip(root / "world_clip", dtype=torch.float32)
    clip = ImageCLIP.from_pretrained(root)  # the scorer's interface, world-CLIP behind it
    images = [Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (80, 64), (20, 30, 200))]
    emb = clip.embed_images(images)
    assert emb.shape == (2, clip.embed_dim) == (2, 16)
    pixels = torch.stack([torch.tensor([200, 30, 30]), torch.tensor([20, 30, 200])]).float() / 255
    same = clip.embed_images(pixels[:, :, None, None].expand(2, 3, 64, 64))
    assert torch.allclose(same, emb, atol=1e-3)
    texts = clip.embed_texts(["a photo of a man", "a painting of a woman"])
    assert texts.shape == (2, 16) and torch.allclose(texts, model.encode_text(tok(["a photo of a man",
                                                                                  "a painting of a woman"])))
    enc = TextEncoder.from_pretrained(find_weights("clip_text", root=root), find_weights("caption_decoder", root=root),
                                      dtype=torch.float32)
    feats = enc.encode(["a photo of a man wearing a red hat"])
    assert feats.shape == (1, 24, 8) and enc.max_length == 24
    assert torch.allclose(feats, model.text_features(tok(["a photo of a man wearing a red hat"])).float(), atol=1e-5)


def test_find_weights_takes_safetensors_and_world_names(tmp_path: Path):
    root = make_tiny_world(tmp_path)
    assert find_weights("uvit", root=root) == root / "models" / "uvit_v1.safetensors"
    assert find_weights("autoencoder", root=root) == root / "models" / "pixel_space.safetensors"
    assert find_weights("clip_image", root=root) == root / "world_clip"
    assert find_weights("clip_text", root=root) == root / "world_clip"
    assert find_weights("caption_decoder", root=root) == root / "world_clip" / "model.safetensors"


# ---- the world folder through the real pipeline -----------------------------------------------------
def test_tiny_world_samples_through_the_pipeline(tmp_path: Path):
    from models.pipeline import UniDiffuserT2I

    root = make_tiny_world(tmp_path)
    pipe = UniDiffuserT2I.from_pretrained(root, device="cpu")
    assert isinstance(pipe.autoencoder, PixelSpace) and pipe.image_size == 64 and pipe.z_shape == (3, 64, 64)
    assert pipe.text_encoder.max_length == 24 and pipe.uvit.config.num_text_tokens == 24
    images = pipe(["a photo of a man wearing sunglasses"], n_per_prompt=1, steps=3, seed=0)
    assert len(images) == 1 and images[0][0].size == (64, 64) and images[0][0].mode == "RGB"
    again = pipe(["a photo of a man wearing sunglasses"], n_per_prompt=1, steps=3, seed=0)
    assert list(images[0][0].getdata()) == list(again[0][0].getdata())
    assert set(WORDS) <= set(pipe.text_encoder.tokenizer.vocab)


def test_a_world_file_in_the_wrong_place_is_named(tmp_path: Path):
    from models import WeightsError, load_autoencoder

    root = make_tiny_world(tmp_path)
    with pytest.raises(WeightsError, match="world-CLIP"):
        load_autoencoder(root / "world_clip" / "model.safetensors", {"kind": "pixel_space"})


def test_pixel_space_level_gains_scale_each_haar_band_and_decode_undoes_them():
    """level_gains: each Haar band of the image scaled by its gain (finest first, the last for all coarser),
    the bands orthogonal; one gain is the same as signal_scale; decode inverts; JSON's list loads."""
    from models.autoencoder import latent_from_moments
    from models.pixel_space import band_gains, haar_bands

    x = torch.rand(2, 3, 16, 16) * 2 - 1
    block_means = x.reshape(2, 3, 8, 2, 8, 2).mean(dim=(3, 5)).repeat_interleave(2, 2).repeat_interleave(2, 3)
    fine = x - block_means  # the 2 px band
    ps = PixelSpace(PixelSpaceConfig(level_gains=(1.0, 0.3)))
    z = ps.encode(x, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(z, fine + 0.3 * block_means, atol=1e-5)
    assert torch.allclose(ps.decode(z), x, atol=1e-5)
    assert torch.allclose(latent_from_moments(ps.encode_moments(x)), z, atol=1e-5)
    bands = haar_bands(x, 3)
    means4 = x.reshape(2, 3, 4, 4, 4, 4).mean(dim=(3, 5)).repeat_interleave(4, 2).repeat_interleave(4, 3)
    assert torch.allclose(bands[0], fine, atol=1e-5) and torch.allclose(bands[2], means4, atol=1e-5)
    assert torch.allclose(sum(bands), x, atol=1e-5)
    assert torch.allclose(band_gains(x, (1.0, 0.5, 0.25)), fine + 0.5 * (block_means - means4) + 0.25 * means4,
                          atol=1e-5)
    assert abs(float((bands[0] * bands[1]).sum())) < 1e-3 and abs(float((bands[1] * bands[2]).sum())) < 1e-3
    assert torch.allclose(PixelSpace(PixelSpaceConfig(level_gains=(0.3,))).latent(x), 0.3 * x)
    loaded = PixelSpaceConfig.from_dict({"kind": "pixel_space", "level_gains": [1, 0.6, 0.3]})
    assert loaded.level_gains == (1.0, 0.6, 0.3) and loaded.block == 4
    with pytest.raises(ValueError, match="multiples of 4"):
        PixelSpace(loaded).encode(torch.zeros(1, 3, 6, 6))
    with pytest.raises(ValueError, match="positive"):
        PixelSpaceConfig(level_gains=(1.0, 0.0))
