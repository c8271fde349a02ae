"""Plain UniDiffuser v1 text-to-image from the command line (no identity module).

    python -m models.t2i --prompt "an elephant under the sea" --out outputs/t2i
    python -m models.t2i --prompt "a boy" --prompt "a girl" --n 3 --steps 30 --cfg 7 --out outputs/t2i

Writes <prompt index>-<k:03>.<ext> (k = 0 .. n-1) into --out, atomically (temporary file, then
os.replace). Weights come from --weights, else $UNIDIFFUSER_WEIGHTS, else checkpoints/ (the
competition's models/ layout is accepted). Exit codes: 0 done, 2 bad arguments or missing weights.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .atomic import atomic_write
from .errors import run_cli

PRECISIONS = ("reference", "auto", "float32", "float16", "bfloat16")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m models.t2i",
        description="Generate images with the frozen UniDiffuser v1 (text-to-image, DPM-Solver++ "
                    "order 3, classifier-free guidance). Reference settings are the defaults.",
        epilog="Weights folder contents: uvit_v1.pth, autoencoder_kl.pth, caption_decoder.pth and the "
               "clip-vit-large-patch14/ folder (directly or under models/); see checkpoints/README.md.")
    p.add_argument("--prompt", action="append", required=True,
                   help="text prompt; repeat the option for several prompts")
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument("--weights", default=None,
                   help="weights folder (default: $UNIDIFFUSER_WEIGHTS, else checkpoints/)")
    p.add_argument("--n", type=int, default=3, help="images per prompt (default 3, one batch)")
    p.add_argument("--steps", type=int, default=30, help="sampler steps = network evaluations (default 30)")
    p.add_argument("--cfg", type=float, default=7.0, help="guidance scale; 0 disables guidance (default 7)")
    p.add_argument("--seed", type=int, default=42, help="seed, set once for all prompts (default 42)")
    p.add_argument("--mode", choices=["true_uncond", "empty_token"], default="true_uncond",
                   help="unconditional pass: noise text at t_text=1000 (reference) or the empty prompt")
    p.add_argument("--device", default="auto",
                   help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--dtype", choices=PRECISIONS, default="reference",
                   help="reference (default): float32 weights under float16 autocast on CUDA, float32 on the "
                        "CPU, as the reference code; auto: bfloat16 on CUDA, float32 on the CPU "
                        "(models/device.py); or weights and autocast in the named dtype")
    p.add_argument("--ext", choices=["png", "jpg"], default="png", help="image format (default png)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def save_image(image, path: Path) -> None:
    """Write atomically: a temporary file beside `path`, then a rename."""
    options = {"format": "JPEG", "quality": 95} if path.suffix == ".jpg" else {"format": "PNG"}
    atomic_write(path, lambda tmp: image.save(tmp, **options))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n < 1 or args.steps < 1:
        parser.error("--n and --steps must be at least 1")

    import torch
    from tqdm.auto import tqdm

    from .device import pick_device, pick_dtype
    from .execution import Execution
    from .paths import output_dir
    from .pipeline import UniDiffuserT2I

    device = pick_device(args.device)
    reference = args.dtype == "reference"
    dtype = torch.float32 if reference else pick_dtype(args.dtype, device)
    out = output_dir(args.out, "--out", create=False)  # checked before loading, created after
    t0 = time.perf_counter()
    pipe = UniDiffuserT2I.from_pretrained(args.weights, device=device, dtype=dtype)
    if reference:
        pipe.execution = Execution.reference(device)
    t_loaded = time.perf_counter()

    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(args.seed)
    written = []
    bar = tqdm(list(enumerate(args.prompt)), desc="prompts", unit="prompt", disable=args.quiet)
    for i, prompt in bar:
        bar.set_postfix_str(prompt[:40])
        images = pipe([prompt], n_per_prompt=args.n, steps=args.steps, scale=args.cfg, mode=args.mode,
                      generator=generator, progress=not args.quiet)[0]
        for k, image in enumerate(images):
            path = out / f"{i}-{k:03d}.{args.ext}"
            save_image(image, path)
            written.append(path)
    t_done = time.perf_counter()
    n_images = len(written)
    print(f"{n_images} images ({len(args.prompt)} prompts x {args.n}, {pipe.image_size}x{pipe.image_size}) "
          f"written to {out}; {args.steps} steps, cfg {args.cfg} ({args.mode}), seed {args.seed}, "
          f"{pipe.device} {pipe.execution.describe()}; load {t_loaded - t0:.1f} s, "
          f"generation {t_done - t_loaded:.1f} s ({(t_done - t_loaded) / max(n_images, 1):.2f} s/image)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
