"""Generation with an identity record: what `sample.py` does.

For each prompt of the file, `n` images (default 3) are written as `<prompt index>-<k:03>.jpg`.
Each prompt draws its noise from its own generator seeded with `seed + prompt index`, so a rerun
that skips already written prompts (resume) produces the same images as an uninterrupted run.

    pipe = load_pipeline(weights, device, dtype)                     # the frozen backbone, once
    net, tokens, source = identity_conditioning(pipe, encoder, record)
    generate_prompts(pipe, net, tokens, prompts, out_dir, GenerateOptions(...))

are sample.py's steps; the web page (personalize/app.py) calls the same functions.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from encoder.guidance import identity_guided_eps_fn
from encoder.id_uvit import IDConditionedUViT
from encoder.identity import IdentityModule, checkpoint_hash
from models.atomic import atomic_write, write_json_atomic
from models.errors import UserError
from models.paths import WeightsError
from personalize.record import IdentityRecord


@dataclass(frozen=True)
class GenerateOptions:
    n_per_prompt: int = 3
    steps: int = 30
    cfg: float = 7.0
    id_scale: float = 1.0
    id_guidance: float | None = None  # separate identity guidance scale (adds a third pass)
    id_start: float = 1.0  # identity only at noise levels t <= id_start (encoder.guidance)
    seed: int = 42
    resume: bool = True  # skip prompts whose images all exist already
    jpeg_quality: int = 95


def find_identity_module(encoder_path, *, allow_untrained: bool = False) -> Path | None:
    """The pretrained identity module's folder, checked before anything heavy is loaded; None (an
    untrained module) only when allowed explicitly."""
    from models.paths import find_weights

    try:
        return find_weights("identity", encoder_path)
    except WeightsError as e:
        if not allow_untrained:
            raise WeightsError(
                f"{e}\nNo pretrained identity module is available. Pretrain one with scripts/pretrain.sh "
                "(see README, 'Pretraining'), then pass --encoder <folder> or place it at "
                "checkpoints/faceid_encoder/. For testing only, --allow-untrained-encoder runs with an "
                "untrained module (its zero gates give plain UniDiffuser images).") from e
        return None


def load_identity_module(folder: Path | None, uvit_config, record: IdentityRecord | None = None
                         ) -> tuple[IdentityModule, str]:
    """The module in `folder` (None: an untrained one, for testing) and a description of it.

    A record whose tokens were refined must be used with the module they were refined against.
    """
    from encoder.config import IdentityConfig

    refined = record is not None and record.tokens is not None
    if folder is None:
        return IdentityModule(IdentityConfig.for_uvit(uvit_config)), "untrained (testing only)"
    if refined and not record.encoder:
        raise WeightsError("the identity record's tokens were refined against an untrained identity module; "
                           f"rerun train.py with --encoder {folder}.")
    if refined and record.encoder.get("sha256") != checkpoint_hash(folder):
        raise WeightsError(f"the identity record was refined with encoder {record.encoder['sha256'][:12]}..., "
                           f"but {folder} is a different checkpoint; rerun train.py with it.")
    return IdentityModule.load(folder, uvit_config=uvit_config), str(folder)


def identity_tokens(module: IdentityModule, record: IdentityRecord, device, dtype,
                    per_photo: bool = False) -> torch.Tensor:
    """[1, K, token_dim]: the record's refined tokens, else the projector's tokens of its photos' pooled
    embedding; with `per_photo` [1, N x K, token_dim], each photo's own tokens (sample.py --photo-tokens each)."""
    if record.tokens is not None:
        if per_photo:
            raise UserError("per-photo identity tokens (--photo-tokens each) need an unrefined identity record; "
                            "this one holds refined tokens of the pooled photos (rerun train.py without "
                            "--refine-steps, or sample with --photo-tokens mean)")
        return record.tokens[None].to(device, dtype)
    p = next(module.parameters())  # the module may be held in any dtype; its tokens take `dtype`
    try:
        with torch.no_grad():
            tokens = module.tokens_from_photos(record.embeddings.to(p.device, p.dtype),
                                               record.embeddings_flip.to(p.device, p.dtype), per_photo=per_photo)
    except ValueError as e:  # per-photo tokens with a text-slot module
        raise UserError(f"--photo-tokens each: {e}") from e
    return tokens.to(device, dtype)


def image_paths(out_dir: Path, index: int, n: int) -> list[Path]:
    return [out_dir / f"{index}-{k:03}.jpg" for k in range(n)]


def save_jpeg(image, path: Path, quality: int = 95) -> None:
    """PIL image -> JPEG at path, atomically."""
    atomic_write(path, lambda tmp: image.save(tmp, format="JPEG", quality=quality))


def identity_net(pipe, module: IdentityModule):
    """The ID-conditioned UViT as eps functions call it (fused, and as `pipe.execution` runs nets)."""
    return pipe.execution.net(IDConditionedUViT(pipe.uvit, module, fused=pipe.execution.fast))


def load_pipeline(weights, device: torch.device, dtype: torch.dtype, *, fast: bool = True,
                  compile_mode: str | None = None, cuda_graphs: bool = True):
    """The frozen UniDiffuser stack from the weights folder; on CUDA with `fast`, run on the fast path
    (pure `dtype`, fused; `compile_mode` for torch.compile, `cuda_graphs` to replay captured graphs)."""
    from models.execution import Execution
    from models.pipeline import UniDiffuserT2I

    pipe = UniDiffuserT2I.from_pretrained(weights, device=device, dtype=dtype)
    if device.type == "cuda" and fast:
        pipe.execution = Execution.fast_path(device, dtype, compile_mode, cuda_graphs=cuda_graphs)
    return pipe


def identity_conditioning(pipe, encoder: Path | None, record: IdentityRecord,
                          per_photo: bool = False) -> tuple[object, torch.Tensor, str]:
    """(net, tokens [1, K, token_dim], description of the module) for generate_prompts: the identity
    module in `encoder` (None: untrained, for testing) on the pipe's device, the ID-conditioned UViT
    and the record's tokens in the pipe's dtype (per photo: `identity_tokens`)."""
    module, source = load_identity_module(encoder, pipe.uvit.config, record)
    module = module.to(pipe.device).eval()  # float32: it is small; only its tokens take the sampling dtype
    return identity_net(pipe, module), identity_tokens(module, record, pipe.device, pipe.dtype, per_photo), source


MANIFEST = ".generation.json"


def resumable(out_dir: Path, fingerprint: dict) -> bool:
    """Whether images already in out_dir were made from the same inputs and settings; records the
    fingerprint of this run there (before any image is written)."""
    path = out_dir / MANIFEST
    try:
        same = json.loads(path.read_text()) == fingerprint
    except (OSError, ValueError):
        same = False
    if not same:
        write_json_atomic(path, fingerprint)
    return same


@torch.no_grad()
def generate_prompts(pipe, net, tokens: torch.Tensor, prompts: list[str],
                     out_dir: str | Path, opts: GenerateOptions, progress: bool = True,
                     fingerprint: dict | None = None, step_progress: bool = False) -> dict:
    """Write n images per prompt into out_dir; returns a summary (written, skipped, seconds).

    net: from `identity_net(pipe, module)`; tokens [1, K, token_dim] from `identity_tokens`.
    Images already there are kept (resume) only when `fingerprint` (what made them: record,
    encoder, weights, prompts) and the options are those of this run. `step_progress`: a bar of each
    prompt's sampling steps too.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if opts.resume:
        run = {**(fingerprint or {}), "options": asdict(opts) | {"resume": True}, "prompts": prompts}
        opts = replace(opts, resume=resumable(out_dir, run))
    c = pipe.uvit.config
    z_shape = (c.in_chans, c.img_size, c.img_size)
    written = skipped = 0
    per_prompt = []
    t0 = time.perf_counter()
    bar = tqdm(list(enumerate(prompts)), desc="prompts", unit="prompt", disable=not progress)
    for i, prompt in bar:
        paths = image_paths(out_dir, i, opts.n_per_prompt)
        if opts.resume and all(p.is_file() for p in paths):
            skipped += 1
            continue
        bar.set_postfix_str(prompt[:40])
        t_prompt = time.perf_counter()
        gen = torch.Generator(device=pipe.device).manual_seed(opts.seed + i)
        text = pipe.encode_text([prompt]).repeat(opts.n_per_prompt, 1, 1)
        eps_fn = identity_guided_eps_fn(net, text, tokens, z_shape=z_shape, clip_dim=c.clip_img_dim,
                                        scale=opts.cfg, id_scale=opts.id_scale, id_guidance=opts.id_guidance,
                                        id_start=opts.id_start,
                                        generator=gen)
        z, _ = pipe.sample_latents(eps_fn, opts.n_per_prompt, steps=opts.steps, generator=gen,
                                   progress=step_progress)
        for img, path in zip(pipe.to_pil(pipe.decode(z)), paths):
            save_jpeg(img, path, opts.jpeg_quality)
        written += 1
        per_prompt.append(time.perf_counter() - t_prompt)
    return {"prompts_written": written, "prompts_skipped": skipped, "seconds": time.perf_counter() - t0,
            "seconds_per_prompt": per_prompt}
