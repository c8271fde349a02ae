"""The pretraining identity diagnostic (pretrain.diagnostic) for any identity modules on any backbones,
over all timesteps and at fixed ones: does the loss rank modules the way their images do?

    python -m data_prep --source faceworld --split val --identities 96 --photos 4 --out /tmp/valshards \
        --weights checkpoints/world --face-pack checkpoints/world/faces --size 64 --resolution 64 \
        --min-image-side 64 --min-face-size 12 --shard-size 384
    python -m eval.identity_diagnostic --shards /tmp/valshards \
        --backbone committed=checkpoints/world --backbone e=/tmp/wn \
        --module committed=checkpoints/world/faceid_encoder:1.67 --module retrained=/tmp/faceid_encoder \
        --timesteps 100,500,900 --json out.json

For every backbone x module it reports id_gain (loss with another person's face minus loss with the
right person's), generic_gain and the losses, on the same held-out samples and draws, once with the
training's timesteps (uniform) and once per --timesteps value (every sample at that timestep).
A module's `:SCALE` multiplies its gates (a folded module's raw scale 1 is 1 / its fold). The
objective is the one in --config (default pretrain/configs/world.json), condition dropout off.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import torch

from encoder.identity import IdentityModule
from eval.named import split_named
from models import load_uvit
from models.atomic import write_json_atomic
from models.errors import UserError, run_cli
from models.paths import find_weights, read_model_configs
from models.uvit import UViTConfig
from pretrain.config import PretrainConfig
from pretrain.diagnostic import IdentityDiagnostic


def run(shards: Path, backbones: dict[str, Path], modules: dict[str, tuple[Path, float]], timesteps: list[int],
        config: PretrainConfig, device: torch.device) -> dict:
    files = sorted(shards.glob("*.tar"))
    if not files:
        raise UserError(f"no shards (*.tar) in {shards}; write them with `python -m data_prep` (see --help)")
    log = logging.getLogger("eval.identity_diagnostic")
    results = {}
    for bname, folder in backbones.items():
        configs = read_model_configs(folder)
        if "uvit" not in configs:
            raise UserError(f"{folder}: model_configs.json has no \"uvit\" entry; give a weights folder with one")
        ucfg = UViTConfig.from_dict(configs["uvit"])
        uvit = load_uvit(find_weights("uvit", None, folder), ucfg, device=device, dtype=torch.float32).eval()
        diagnostic = IdentityDiagnostic.create(config, ucfg, files, device, log)
        if diagnostic is None:
            raise UserError(f"no held-out samples with identities in {shards}")
        for mname, (path, scale) in modules.items():
            module = IdentityModule.load(path, uvit_config=ucfg).float().to(device).eval()
            with torch.no_grad():
                module.gate.mul_(scale)
            row = {"uniform" if n is None else str(n): diagnostic(uvit, module, timestep=n)
                   for n in [None, *timesteps]}
            results[f"{mname} on {bname}"] = {"module": str(path), "scale": scale, "backbone": str(folder), **row}
            print(f"{mname} on {bname}: " + ", ".join(f"{k} {v['id_gain']:+.4f} +- {v['id_gain_se']:.4f}"
                                                      for k, v in row.items()), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.identity_diagnostic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=Path, required=True, help="shards with identity labels (held-out people)")
    p.add_argument("--backbone", action="append", required=True, help="NAME=weights folder (repeatable)")
    p.add_argument("--module", action="append", required=True, help="NAME=module folder[:SCALE] (repeatable)")
    p.add_argument("--timesteps", default="", help="fixed timesteps 1..1000, comma-separated (default: none)")
    p.add_argument("--samples", type=int, default=128, help="held-out samples (default 128)")
    p.add_argument("--config", type=Path, default=Path("pretrain/configs/world.json"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    backbones = {name: Path(v) for name, v in (split_named(s, "--backbone") for s in args.backbone)}
    modules = {}
    for name, value in (split_named(s, "--module") for s in args.module):
        path, _, scale = value.partition(":")
        modules[name] = (Path(path), float(scale) if scale else 1.0)
    timesteps = [int(x) for x in args.timesteps.split(",") if x.strip()]
    if any(not 1 <= n <= 1000 for n in timesteps):
        raise UserError(f"--timesteps must lie in 1..1000, got {timesteps}")
    config = dataclasses.replace(PretrainConfig.from_file(args.config), val_samples=args.samples,
                                 batch_size=min(64, args.samples))
    results = run(args.shards, backbones, modules, timesteps, config, torch.device(args.device))
    if args.json:
        from eval.world import provenance

        command = "python -m eval.identity_diagnostic " + " ".join(sys.argv[1:] if argv is None else argv)
        write_json_atomic(args.json, {"format": "identity-diagnostic", "shards": str(args.shards),
                                      "samples": args.samples, "timesteps": timesteps, "results": results,
                                      "command": command, **provenance()}, indent=1)
        print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
