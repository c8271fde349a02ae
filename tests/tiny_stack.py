"""A complete tiny UniDiffuser weights folder for tests, built from the real module code.

Sizes fit together: the tiny autoencoder (AutoencoderConfig.tiny(), downsampling 2) decodes an
8 x 8 latent into 16 x 16 images; the tiny UViT (UViTConfig.tiny() with 77 text tokens, so real
tokenisation works) has a 4 x 8 x 8 latent, text width 8 = the tiny caption decoder's hidden_dim,
image-CLIP width 16 = the tiny image CLIP's embed_dim; the tiny CLIP text model is 32 wide = the
tiny caption decoder's text_dim. Weights are random with fixed seeds (the global RNG is left as it
was). Layout is the competition's:

    root/model_configs.json             configs of every module (models.pipeline reads it)
    root/models/uvit_v1.pth  autoencoder_kl.pth  caption_decoder.pth (`module.` prefixed keys)
    root/models/clip-vit-large-patch14/  (tiny CLIPTextModel + tokenizer files)
    root/models/ViT-B-32.pt              (tiny open_clip CLIP state dict)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import torch

from models.autoencoder import AutoencoderConfig, AutoencoderKL
from models.caption_decoder import CaptionDecoder, CaptionDecoderConfig
from models.text_encoder import write_clip_tokenizer
from models.uvit import UViT, UViTConfig
from models.weights import save_state_dict

CLIP_TEXT = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                 pad_token_id=49407)
IMAGE_CLIP = dict(embed_dim=16,
                  vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=16, head_width=16),
                  text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))


def tiny_configs() -> dict[str, dict]:
    """Configs of the tiny stack as written to model_configs.json."""
    uvit = dataclasses.asdict(dataclasses.replace(UViTConfig.tiny(), num_text_tokens=77))
    caption = dataclasses.asdict(CaptionDecoderConfig.tiny())
    auto = dataclasses.asdict(AutoencoderConfig.tiny())
    auto = {k: list(v) if isinstance(v, tuple) else v for k, v in auto.items()}
    assert uvit["text_dim"] == caption["hidden_dim"] and caption["text_dim"] == CLIP_TEXT["hidden_size"]
    assert uvit["clip_img_dim"] == IMAGE_CLIP["embed_dim"] and uvit["in_chans"] == auto["embed_dim"]
    return {"uvit": uvit, "autoencoder": auto, "caption_decoder": caption, "clip_image": IMAGE_CLIP}


@contextlib.contextmanager
def _seeded(seed: int):
    """The global RNG seeded for module init, restored on exit."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def make_clip_tokenizer_dir(folder: str | Path) -> Path:
    """CLIP-L's tokenizer files (from open_clip's BPE) in `folder`."""
    return write_clip_tokenizer(folder)


def make_tiny_clip_text_dir(folder: str | Path, seed: int = 0) -> Path:
    """A tiny CLIPTextModel (width 32, 2 layers, 2 heads, 77 positions, CLIP's vocabulary) saved with
    save_pretrained, plus the tokenizer files."""
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    with _seeded(seed):
        model = CLIPTextModel(CLIPTextConfig(**CLIP_TEXT))
    model.save_pretrained(str(folder))
    make_clip_tokenizer_dir(folder)
    return folder


def make_tiny_image_clip(seed: int = 0):
    """(open_clip CLIP, preprocess) of the tiny image CLIP (embed_dim 16, 32 x 32 images)."""
    import open_clip

    with _seeded(seed):
        model = open_clip.model.CLIP(quick_gelu=True, **IMAGE_CLIP)
    return model.eval(), open_clip.image_transform(IMAGE_CLIP["vision_cfg"]["image_size"], is_train=False)


def _randomise(module: torch.nn.Module, std: float = 0.02) -> None:
    """Give every zero-initialised parameter (e.g. pos_embed) small random values: a less trivial model."""
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.normal_(0.0, std)


def make_tiny_weights_dir(root: str | Path, seed: int = 0) -> Path:
    """Write the complete tiny weights folder (see module docstring) under `root`; returns root."""
    root = Path(root)
    models_dir = root / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    configs = tiny_configs()
    with _seeded(seed):
        uvit = UViT(UViTConfig.from_dict(configs["uvit"]))
        _randomise(uvit)
        autoencoder = AutoencoderKL(AutoencoderConfig.from_dict(configs["autoencoder"]))
        caption = CaptionDecoder(CaptionDecoderConfig.from_dict(configs["caption_decoder"]))
    save_state_dict(uvit.state_dict(), models_dir / "uvit_v1.pth")
    save_state_dict(autoencoder.state_dict(), models_dir / "autoencoder_kl.pth")
    save_state_dict({f"module.{k}": v for k, v in caption.state_dict().items()},
                    models_dir / "caption_decoder.pth")
    make_tiny_clip_text_dir(models_dir / "clip-vit-large-patch14", seed=seed + 1)
    image_clip, _ = make_tiny_image_clip(seed=seed + 2)
    save_state_dict(image_clip.state_dict(), models_dir / "ViT-B-32.pt")
    (root / "model_configs.json").write_text(json.dumps(configs, indent=1))
    return root
