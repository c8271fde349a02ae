"""UniDiffuser v1 text-to-image: text encoder + UViT + DPM-Solver++ + autoencoder, kept apart.

    pipe = UniDiffuserT2I.from_pretrained("checkpoints", device="cuda")
    images = pipe(["an elephant under the sea"], n_per_prompt=3)      # list[list[PIL.Image]]

Reference behaviour (`reference/unidiffuser_v1.md`): z [B, 4, 64, 64] then image-CLIP [B, 1, 512]
drawn from N(0, I), 30 steps of singlestep DPM-Solver++ (order 3) over the joint state, guidance
scale 7 with the "true_uncond" unconditional pass, data_type 1, decode and clamp to [0, 1].

Precision and execution: module weights are held in `dtype` (default `models.device.pick_dtype`:
bfloat16 on CUDA, float32 on the CPU). How the nets and the decoder run (autocast, the fast path,
compilation, CUDA graphs, the reference's precision) is `pipe.execution`'s, a
`models.execution.Execution`; the default runs the nets under autocast(dtype) (none for float32).
The sampler state, the text features handed to the nets and all guidance arithmetic stay float32,
so any eps function built on these modules (e.g. the identity encoder's) works unchanged.

A weights folder may hold `model_configs.json` ({"uvit": {...}, "autoencoder": {...},
"caption_decoder": {...}}, reference keyword names): those configs replace v1. This is how tests
run the whole stack at tiny size (tests/tiny_stack.py). Its optional "sampler" entry is the sampling
policy that suits those weights: {"final_denoise": true} ends every run with one more evaluation that
returns the clean prediction (models.dpm_solver.sample); without it the reference sampler runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from .device import pick_device, pick_dtype
from .execution import Execution
from .guidance import EpsFn, GuidanceMode, text_guided_eps_fn
from .noise_schedule import NoiseScheduleVP
from .paths import WeightsError, find_weights, read_model_configs
from .sampling import sample_joint

logger = logging.getLogger(__name__)
SAMPLER_KEYS = {"final_denoise": bool}  # model_configs.json's "sampler" entry


def sampler_policy(configs: dict) -> dict:
    """The "sampler" entry of a weights folder's model_configs.json with its defaults ({"final_denoise":
    False} without one); WeightsError for an unknown key or a value of the wrong type."""
    given = configs.get("sampler") or {}
    if not isinstance(given, dict):
        bad = ["(not an object)"]
    else:
        bad = [k for k, v in given.items() if k not in SAMPLER_KEYS or not isinstance(v, SAMPLER_KEYS[k])]
    if bad:
        raise WeightsError(f'model_configs.json: "sampler" must be an object with {sorted(SAMPLER_KEYS)} '
                           f"(true or false); bad entries: {bad}")
    return {"final_denoise": False, **given}


def folder_sampler_policy(root: str | os.PathLike | None = None) -> dict:
    """sampler_policy of the weights folder `root` (what from_pretrained samples with): evaluations record it
    beside their numbers, since no weights file holds it."""
    return sampler_policy(read_model_configs(root))


class UniDiffuserT2I:
    """The frozen text-to-image stack.

    TEXT_CACHE_SIZE: how many prompts' text features `encode_text` keeps (77 x 64 floats each).

    uvit: models.uvit.UViT; autoencoder: models.autoencoder.AutoencoderKL;
    text_encoder: models.text_encoder.TextEncoder; schedule: NoiseScheduleVP.
    weight_files: {"uvit" | "autoencoder" | "caption_decoder" | "clip_text": path} as loaded.
    execution: how the nets and the decoder run (models.execution; default: autocast to dtype);
    replace it to change that, e.g. `pipe.execution = Execution.fast_path(pipe.device, pipe.dtype)`.
    """

    TEXT_CACHE_SIZE = 1024

    def __init__(self, uvit, autoencoder, text_encoder, schedule: NoiseScheduleVP | None = None, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 weight_files: dict[str, Path] | None = None, final_denoise: bool = False):
        self.device = torch.device(device) if device is not None else next(uvit.parameters()).device
        self.dtype = dtype or next(uvit.parameters()).dtype
        self.execution = Execution.autocast_to(self.device, self.dtype)
        self._text_cache: dict[str, torch.Tensor] = {}  # prompt -> [77, text_dim], see `encode_text`
        self.uvit = uvit
        self.autoencoder = autoencoder
        self.text_encoder = text_encoder
        self.schedule = schedule or NoiseScheduleVP.stable_diffusion()
        self.weight_files = dict(weight_files or {})
        self.final_denoise = final_denoise  # see the module docstring ("sampler")
        c = uvit.config
        if text_encoder.text_dim != c.text_dim:
            raise ValueError(f"text encoder gives {text_encoder.text_dim}-d features, the UViT takes "
                             f"{c.text_dim}")
        if autoencoder.config.embed_dim != c.in_chans:
            raise ValueError(f"autoencoder latents have {autoencoder.config.embed_dim} channels, "
                             f"the UViT takes {c.in_chans}")

    @classmethod
    def from_pretrained(cls, root: str | os.PathLike | None = None, *,
                        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                        uvit_path: str | os.PathLike | None = None,
                        autoencoder_path: str | os.PathLike | None = None,
                        caption_decoder_path: str | os.PathLike | None = None,
                        clip_text_path: str | os.PathLike | None = None) -> UniDiffuserT2I:
        """Load every part from the weights folder `root` (see models.paths for how it is found);
        an explicit *_path wins for its part. All files are located before anything is loaded."""
        from . import load_autoencoder, load_uvit
        from .text_encoder import TextEncoder

        device = torch.device(device) if device is not None else pick_device("auto")
        dtype = dtype or pick_dtype("auto", device)
        files = {
            "uvit": find_weights("uvit", uvit_path, root),
            "autoencoder": find_weights("autoencoder", autoencoder_path, root),
            "caption_decoder": find_weights("caption_decoder", caption_decoder_path, root),
            "clip_text": find_weights("clip_text", clip_text_path, root),
        }
        configs = read_model_configs(root)
        text_encoder = TextEncoder.from_pretrained(files["clip_text"], files["caption_decoder"],
                                                   caption_decoder_config=configs.get("caption_decoder"),
                                                   device=device, dtype=dtype)
        autoencoder = load_autoencoder(files["autoencoder"], configs.get("autoencoder"), device=device,
                                       dtype=dtype)
        uvit = load_uvit(files["uvit"], configs.get("uvit"), device=device, dtype=dtype)
        return cls(uvit, autoencoder, text_encoder, NoiseScheduleVP.stable_diffusion(), device=device,
                   dtype=dtype, weight_files=files, final_denoise=sampler_policy(configs)["final_denoise"])

    # ---- shapes -------------------------------------------------------------------------------
    @property
    def z_shape(self) -> tuple[int, int, int]:
        """Latent shape (C, h, w): (4, 64, 64) for v1."""
        c = self.uvit.config
        return (c.in_chans, c.img_size, c.img_size)

    @property
    def clip_dim(self) -> int:
        return self.uvit.config.clip_img_dim

    @property
    def image_size(self) -> int:
        """Side of the generated images (512 for v1)."""
        return self.uvit.config.img_size * self.autoencoder.config.downsample_factor

    # ---- stages -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """prompts -> UViT text input [B, 77, text_dim], float32 on self.device.

        Each prompt is encoded once: the encoder is deterministic, so repeated prompts (a batch
        loop over one prompt, a resumed run) reuse the stored features. A prompt longer than the
        text context is cut, as the reference does, with a warning naming what was dropped.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if new := list(dict.fromkeys(p for p in prompts if p not in self._text_cache)):
            for p in new:
                if cut := self.text_encoder.dropped(p):
                    logger.warning("prompt %r is longer than the text encoder's %d-token context; its end was "
                                   "dropped: %r", p, self.text_encoder.max_length, cut)
            if len(self._text_cache) + len(new) > self.TEXT_CACHE_SIZE:
                # a full cache is emptied, so this batch's prompts that it held are encoded again with the new
                self._text_cache.clear()
                new = list(dict.fromkeys(prompts))
            self._text_cache.update(zip(new, self.text_encoder.encode(new).float()))
        return torch.stack([self._text_cache[p] for p in prompts])

    @torch.no_grad()
    def sample_latents(self, eps_fn: EpsFn, batch: int, *, steps: int = 30,
                       generator: torch.Generator | None = None,
                       progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the sampler from N(0, I) -> (z [B, C, h, w], clip [B, 1, clip_dim]), float32.

        eps_fn(x [B, C*h*w + clip_dim] float32, t_cont [B]) -> noise prediction of the joint state
        (guidance.text_guided_eps_fn builds one); it runs under self.execution.autocast(). z is
        drawn first, then clip, from `generator` (the reference's order): models.sampling.sample_joint,
        with the weights folder's final_denoise.
        """
        with self.execution.autocast():
            return sample_joint(eps_fn, batch, z_shape=self.z_shape, clip_dim=self.clip_dim, steps=steps,
                                schedule=self.schedule, generator=generator, device=self.device, progress=progress,
                                final_denoise=self.final_denoise)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, h, w] -> images [B, 3, H, W], float32 in [0, 1] (decoded as
        self.execution runs the decoder)."""
        x = self.execution.decoder(self.autoencoder)(z)
        return (0.5 * (x + 1.0)).clamp(0.0, 1.0)

    @staticmethod
    def to_pil(images: torch.Tensor) -> list[Image.Image]:
        """[B, 3, H, W] in [0, 1] -> RGB PIL images (x * 255 rounded, as torchvision's save_image)."""
        arr = (images.detach().float().cpu() * 255 + 0.5).clamp(0, 255).to(torch.uint8)
        return [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in arr]

    def eps_fn(self, text: torch.Tensor, *, scale: float | None = 7.0, mode: GuidanceMode = "true_uncond",
               generator: torch.Generator | None = None) -> EpsFn:
        """Plain text-guided eps function for `sample_latents` (the UViT as both nets, one batched call)."""
        net = self.execution.net(self.uvit)
        empty = self.encode_text([""]) if (scale and mode == "empty_token") else None
        return text_guided_eps_fn(net, net, text, scale, z_shape=self.z_shape, clip_dim=self.clip_dim,
                                  mode=mode, empty_text=empty, generator=generator)

    @torch.no_grad()
    def __call__(self, prompts: str | Sequence[str], *, n_per_prompt: int = 3, steps: int = 30,
                 scale: float | None = 7.0, mode: GuidanceMode = "true_uncond", seed: int = 42,
                 generator: torch.Generator | None = None, progress: bool = False) -> list[list[Image.Image]]:
        """n_per_prompt images for each prompt (one batch per prompt), as PIL images.

        The generator (default: a CPU generator seeded once with `seed`, so results do not depend
        on the device) draws the initial noise and the true-uncond noise text, prompt after prompt.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if generator is None:
            generator = torch.Generator().manual_seed(seed)
        results = []
        for prompt in prompts:
            text = self.encode_text([prompt]).expand(n_per_prompt, -1, -1)
            eps_fn = self.eps_fn(text, scale=scale, mode=mode, generator=generator)
            z, _ = self.sample_latents(eps_fn, n_per_prompt, steps=steps, generator=generator,
                                       progress=progress)
            results.append(self.to_pil(self.decode(z)))
        return results
