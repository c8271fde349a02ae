"""python -m eval.world_reconstruction: how much of a person the world's backbone keeps when it is given
the person (issue 16's ceiling target: what any identity module could reach on this backbone).

    python -m eval.world_reconstruction --seed S [--identities 32] [--t 0.2,0.4,0.6,0.8,1] [--steps 30]
        [--guidance 7] [--final-denoise] [--world checkpoints/world] [--device cpu|cuda] [--json PATH]
        [--sheet PNG]

For each test identity of renderer seed S, render 0 (a portrait) is the source, its caption stating a random
subset of its attributes as training captions do, and renders 1..R are the references. At each time t
the source is noised to t and sampled back down by the project's solver, text-guided by its own caption
(models.sampling.resample_joint: SDEdit, at a full run's grid density). The outputs are scored by
eval.world's judges (eval.world_scores): identity similarity to the references with the evaluation
recogniser (0 where no face is found), faces found, and whether the attribute classifier finds every
attribute the caption states. t = 0 is the source render itself (the renders' own similarity, as
eval.world's ceiling), and t = 1 is almost plain text-to-image with the caption.

A second table, `denoising`, is the backbone's one-step error on the same sources at network timesteps n:
the noise MSE, and the mean squared error in image units ([-1, 1]) of its clean-image prediction next to
that of the noisy input itself (x_n / alpha_n). A denoiser that keeps the image removes most of the input's
error at every n.

A third table, `band_energy`, splits the outputs' energy (and the renders', t = 0) by orthonormal Haar band,
2 px up to the whole image plus its mean colour: where samples carry more than the renders (grain, blocks) or
less (blur), at the scales a pixel space's level gains act on (models.pixel_space).

Where identity similarity falls between t = 0 and the smallest t, the backbone cannot draw this person's
details even when they are almost given. An identity module gives the same backbone far less than a lightly
noised photo of the person, so this curve is a practical bound on what the module can reach.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from models.pixels import to_signed

RESULTS = Path("eval/results/world_reconstruction.json")
TIMES = (0.2, 0.4, 0.6, 0.8, 1.0)
DENOISING_TIMESTEPS = (5, 20, 50, 100, 200, 400, 700, 1000)


def render_people(seed: int, identities: int, references: int, size: int):
    """(sources, references): RenderBatch of render 0 per test identity (a training-style caption), and
    of renders 1..references per identity (identity-major)."""
    from data_prep.faceworld.attributes import split_range
    from data_prep.faceworld.render import FaceWorld

    lo, _ = split_range("test")
    ids = lo + np.arange(identities, dtype=np.int64)
    world = FaceWorld(seed, size)
    sources = world.render(ids, np.zeros(identities, np.int64), mode="portrait")
    refs = world.render(np.repeat(ids, references), np.tile(np.arange(1, references + 1), identities),
                        mode="portrait")
    return sources, refs


@torch.no_grad()
def conditioning(pipe, clip, images: torch.Tensor, captions: list[str]):
    """(pixels [N, 3, H, W] in [-1, 1], latents z0, image-CLIP features [N, 1, D], text features) of the
    renders uint8 [N, H, W, 3] with their captions, on the pipeline's device."""
    pixels = to_signed(images).to(pipe.device)
    z0 = pipe.autoencoder.encode(pixels.to(pipe.dtype)).float()
    return pixels, z0, clip.encode_image(pixels).float()[:, None], pipe.encode_text(captions)


@torch.no_grad()
def reconstruct(pipe, z0: torch.Tensor, clip0: torch.Tensor, text: torch.Tensor, t: float, *, steps: int,
                guidance: float, seed: int, batch: int = 64, final_denoise: bool = False) -> np.ndarray:
    """The sources (their `conditioning`) noised to t and sampled back with their captions -> uint8
    [N, H, W, 3]."""
    from models.sampling import resample_joint

    generator = torch.Generator().manual_seed(seed)
    out = []
    for lo in range(0, len(z0), batch):
        part = slice(lo, lo + batch)
        eps_fn = pipe.eps_fn(text[part], scale=guidance, mode="true_uncond", generator=generator)
        with pipe.execution.autocast():
            z, _ = resample_joint(eps_fn, z0[part], clip0[part], t_start=t, steps=steps, schedule=pipe.schedule,
                                  generator=generator, final_denoise=final_denoise)
        out.append(pipe.decode(z).float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def denoising_error(pipe, pixels: torch.Tensor, z0: torch.Tensor, clip0: torch.Tensor, text: torch.Tensor,
                    timesteps=DENOISING_TIMESTEPS, *, seed: int) -> dict:
    """{n: {eps_mse, x0_mse, input_mse}}: one prediction of the backbone (own caption, clean text) on the
    sources (their `conditioning`) noised to network timestep n; errors of images in [-1, 1]."""
    from pretrain.world.evaluate import predict_clean

    generator = torch.Generator().manual_seed(seed)
    out = {}
    for t in timesteps:
        root_ab = float(pipe.schedule.alphas_cumprod[t]) ** 0.5
        eps_z = torch.randn(z0.shape, generator=generator).to(pipe.device)
        eps_c = torch.randn(clip0.shape, generator=generator).to(pipe.device)
        z_n, clip_n = pipe.schedule.add_noise(z0, eps_z, t), pipe.schedule.add_noise(clip0, eps_c, t)
        pred, x0 = predict_clean(pipe, z_n, clip_n, text, t)
        x0 = pipe.autoencoder.decode(x0).float()
        noisy = pipe.autoencoder.decode(z_n / root_ab).float()
        out[str(t)] = {"eps_mse": float(((pred - eps_z) ** 2).mean()),
                       "x0_mse": float(((x0 - pixels) ** 2).mean()),
                       "input_mse": float(((noisy - pixels) ** 2).mean())}
    return out


def score(scorer, images: np.ndarray, ref_faces, references: int, wanted: list[dict]) -> dict:
    """Identity (per identity, with its bootstrap interval), faces found and attribute success of images
    [N] (image i shows identity i; ref_faces hold `references` renders of each identity in order)."""
    from eval.world_scores import bootstrap_interval, identity_similarity
    from pretrain.world.attributes import attributes_found

    faces = scorer.faces_of(list(images))
    sims = [float(identity_similarity(faces.select(slice(i, i + 1)),
                                      ref_faces.select(slice(i * references, (i + 1) * references)))[0])
            for i in range(len(images))]
    predicted = scorer.attributes_of(list(images))
    per_attribute = defaultdict(list)
    every = []
    for p, w in zip(predicted, wanted):
        found = attributes_found(p, w)
        every.append(all(found.values()))
        for name, ok in found.items():
            per_attribute[name].append(ok)
    sims_arr = np.asarray(sims)
    return {"identity_similarity": bootstrap_interval(sims),
            "identity_similarity_found": float(sims_arr[faces.found].mean()) if faces.found.any() else None,
            "face_found": float(faces.found.mean()),
            "attribute_success": float(np.mean(every)),
            "per_attribute": {k: float(np.mean(v)) for k, v in sorted(per_attribute.items())}}


def evaluate(world: Path, seed: int, *, identities: int, references: int, times, steps: int, guidance: float,
             device: torch.device, final_denoise: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    """(result, {t: images}) for the command; t "0" is the source renders."""
    from data_prep.faceworld.attributes import parse_caption
    from eval.world_scores import WorldScorer
    from models.pipeline import UniDiffuserT2I
    from models.world_clip import load_world_clip

    pipe = UniDiffuserT2I.from_pretrained(world, device=device,
                                          dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    final_denoise = final_denoise or pipe.final_denoise  # the world's own sampler policy, or asked for
    _, clip = load_world_clip(world / "world_clip", device=device, dtype=torch.float32)
    scorer = WorldScorer.from_world(world, device)
    sources, refs = render_people(seed, identities, references, pipe.image_size)
    captions = list(sources.captions)
    wanted = [parse_caption(c) for c in captions]
    ref_faces = scorer.faces_of(list(refs.images.cpu().numpy()))
    pixels, z0, clip0, text = conditioning(pipe, clip, sources.images.cpu(), captions)
    images = {"0": sources.images.cpu().numpy()}
    for t in times:
        t0 = time.perf_counter()
        images[f"{t:g}"] = reconstruct(pipe, z0, clip0, text, t, steps=steps, guidance=guidance, seed=seed,
                                       final_denoise=final_denoise)
        print(f"[reconstruction] t = {t:g}: sampled in {time.perf_counter() - t0:.1f} s", flush=True)
    by_t = {key: score(scorer, imgs, ref_faces, references, wanted) for key, imgs in images.items()}
    denoising = denoising_error(pipe, pixels, z0, clip0, text, seed=seed)
    return {"final_denoise": final_denoise, "by_t": by_t, "denoising": denoising,
            "band_energy": {key: band_energy(imgs) for key, imgs in images.items()},
            "references_found": float(ref_faces.found.mean())}, images


def band_energy(images: np.ndarray) -> dict[str, float]:
    """{band: mean energy per image}: the sum of squares of each orthonormal Haar band (models.pixel_space) of
    uint8 images [N, H, W, 3] on the [-1, 1] scale; bands "2", "4", .. H px of detail, then "mean" (the
    image's mean colour). Next to the renders' own, it shows at which scales samples carry too much (noise,
    blocks) or too little (blur), the scales a pixel space's level gains act on."""
    from models.pixel_space import haar_bands

    x = to_signed(torch.from_numpy(images))
    levels = int(np.log2(x.shape[-1]))
    names = [*(str(2 ** (j + 1)) for j in range(levels)), "mean"]
    return {name: float((band ** 2).sum(dim=(1, 2, 3)).mean()) for name, band in zip(names, haar_bands(x, levels + 1))}


def contact_sheet(images: dict[str, np.ndarray], rows: int) -> np.ndarray:
    """uint8 [rows * H, len(images) * W, 3]: one identity a row, t = 0 (the source) and each t a column."""
    cols = [np.concatenate(list(imgs[:rows]), axis=0) for imgs in images.values()]
    return np.concatenate(cols, axis=1)


def main(argv: list[str] | None = None) -> int:
    from eval.world import provenance, weights_sha256
    from models.atomic import atomic_write, write_json_atomic
    from models.errors import UserError

    p = argparse.ArgumentParser(prog="python -m eval.world_reconstruction", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, required=True, help="renderer seed of the test identities")
    p.add_argument("--identities", type=int, default=32, help="test identities (default 32)")
    p.add_argument("--references", type=int, default=4, help="reference renders per identity (default 4)")
    p.add_argument("--t", default=",".join(f"{t:g}" for t in TIMES),
                   help="comma-separated times in (0, 1] the source is noised to (default 0.2,0.4,0.6,0.8,1)")
    p.add_argument("--steps", type=int, default=30,
                   help="a full run's solver steps (a run from t takes about t x steps)")
    p.add_argument("--guidance", type=float, default=7.0, help="text guidance (default 7, true_uncond)")
    p.add_argument("--final-denoise", action="store_true",
                   help="end each run with one more evaluation that returns its clean-image prediction "
                        "(models.dpm_solver.sample's final_denoise; on anyway where the world's "
                        "model_configs.json asks for it)")
    p.add_argument("--world", type=Path, default=Path("checkpoints/world"), help="world weights folder")
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--json", type=Path, default=RESULTS, help=f"result file (default {RESULTS})")
    p.add_argument("--sheet", type=Path, default=None, help="also write a contact sheet PNG (8 identities x t)")
    args = p.parse_args(argv)
    try:
        times = tuple(float(t) for t in args.t.split(",") if t.strip())
    except ValueError:
        raise UserError(f"--t must be comma-separated numbers, got {args.t!r}") from None
    if not times or any(not 0 < t <= 1 for t in times):
        raise UserError(f"--t: every time must lie in (0, 1], got {args.t!r}")
    if args.identities < 2 or args.references < 1 or args.steps < 1:
        raise UserError("--identities must be 2 or more, --references and --steps 1 or more")
    if not (args.world / "models").is_dir():
        raise UserError(f"{args.world} is not a world folder (no models/); see checkpoints/world/README.md")
    from data_prep.faceworld.render import use_folder_version

    use_folder_version(args.world)  # test identities drawn as the world's models saw renders
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    result, images = evaluate(args.world, args.seed, identities=args.identities, references=args.references,
                              times=times, steps=args.steps, guidance=args.guidance, device=device,
                              final_denoise=args.final_denoise)
    result = {"format": "world-reconstruction", "version": 1, "world": str(args.world),
              "world_sha256": weights_sha256(args.world), "renderer_seed": args.seed, "split": "test",
              "identities": args.identities, "references": args.references, "steps": args.steps,
              "guidance": args.guidance, **result,
              "seconds": round(time.perf_counter() - t0, 1),
              "command": shlex.join(["python", "-m", "eval.world_reconstruction",
                                     *(sys.argv[1:] if argv is None else argv)]),
              **provenance()}
    write_json_atomic(args.json, result)
    if args.sheet:
        from PIL import Image

        sheet = contact_sheet(images, min(8, args.identities))
        atomic_write(args.sheet, lambda tmp: Image.fromarray(sheet).save(tmp, format="PNG"))
    print("t      identity [95 %]           faces   attributes")
    for key, row in result["by_t"].items():
        iv = row["identity_similarity"]
        print(f"{key:<6} {iv['mean']:+.3f} [{iv['lo']:+.3f}, {iv['hi']:+.3f}]   {row['face_found']:.2f}    "
              f"{row['attribute_success']:.2f}")
    print("n      noise MSE   clean-image MSE   noisy input's MSE")
    for key, row in result["denoising"].items():
        print(f"{key:<6} {row['eps_mse']:.4f}      {row['x0_mse']:.4f}            {row['input_mse']:.4f}")
    bands = list(next(iter(result["band_energy"].values())))
    print("band energy per image, by t (Haar bands in px; 0 is the renders):")
    print("t      " + " ".join(f"{b:>7}" for b in bands))
    for key, row in result["band_energy"].items():
        print(f"{key:<6} " + " ".join(f"{row[b]:7.1f}" for b in bands))
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    from models.errors import run_cli as run_user_cli

    sys.exit(run_user_cli(main))
