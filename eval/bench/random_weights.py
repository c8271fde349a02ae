"""Write a full-size UniDiffuser v1 weights folder with RANDOM weights, in the competition layout.

For end-to-end runs and timings on machines without the real release (speed, memory and the
loading path do not depend on the values; the images are noise). A RANDOM_WEIGHTS.txt file in the
folder says what it is.

    python -m eval.bench.random_weights --out /tmp/random_weights [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from models.autoencoder import AutoencoderConfig, AutoencoderKL
from models.caption_decoder import CaptionDecoder, CaptionDecoderConfig
from models.uvit import UViT, UViTConfig
from models.weights import save_state_dict


def _random_state(build, device: torch.device, prefix: str = "") -> dict[str, torch.Tensor]:
    with torch.device(device):
        module = build()
    return {prefix + k: v.detach().float().cpu() for k, v in module.state_dict().items()}


def write_random_weights(out: str | Path, device: str | torch.device = "cpu", seed: int = 0) -> Path:
    """out/models/{uvit_v1.pth, autoencoder_kl.pth, caption_decoder.pth}, out/clip-vit-large-patch14/."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from eval.bench.common import CLIP_L_TEXT
    from models.text_encoder import write_clip_tokenizer

    out, device = Path(out), torch.device(device)
    torch.manual_seed(seed)
    models = out / "models"
    save_state_dict(_random_state(lambda: UViT(UViTConfig.v1()), device), models / "uvit_v1.pth")
    save_state_dict(_random_state(lambda: AutoencoderKL(AutoencoderConfig.v1()), device),
                    models / "autoencoder_kl.pth")
    save_state_dict(_random_state(lambda: CaptionDecoder(CaptionDecoderConfig.v1()), device, prefix="module."),
                    models / "caption_decoder.pth")
    clip_dir = out / "clip-vit-large-patch14"
    CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)).save_pretrained(clip_dir)
    write_clip_tokenizer(clip_dir)
    (out / "RANDOM_WEIGHTS.txt").write_text("Every weight in this folder is random (eval/bench/random_weights.py): "
                                            "for timings and end-to-end checks only.\n")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cpu", help="where to run the random initialisation (cuda is faster)")
    args = p.parse_args(argv)
    print(write_random_weights(args.out, args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
