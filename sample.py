"""Generate images of a personalised identity: the competition's sampling command.

    python sample.py --restore_path OUT --prompt_path PROMPTS.json --output_path DIR

Writes 3 images per prompt as <prompt index>-<k:03>.jpg (512x512) and prints
`finetuned parameters: N`, the number of backbone parameters that differ from the original
weight files (0 for this method: the backbone is never changed).

The record's embeddings must come from the face model the identity module was pretrained with
(their `face_model` blocks, personalize.face_model): a mismatch stops before any work, naming both
models and the pack to rerun train.py with; --allow-face-model-mismatch goes on (experiments only).

On CUDA it asks PyTorch's allocator for expandable segments (less memory reserved at the same
speed) unless PYTORCH_CUDA_ALLOC_CONF is set; set it empty to keep PyTorch's default.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from encoder.config import id_start_value
from models.errors import number


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--restore_path", required=True, help="identity record folder written by train.py")
    p.add_argument("--prompt_path", required=True, help='JSON list of prompts, e.g. ["a boy", "a boy at sea"]')
    p.add_argument("--output_path", required=True, help="folder for the images (created if missing)")
    p.add_argument("--seed", type=int, default=42, help="base seed; prompt i uses seed + i (default 42)")
    p.add_argument("--steps", type=number(int, 1, 1000), default=30, help="DPM-Solver++ steps, 1 to 1000 (default 30)")
    p.add_argument("--cfg", type=number(float, 0, 100), default=7.0,
                   help="text guidance scale, reference form, 0 to 100 (default 7)")
    p.add_argument("--id-scale", type=number(float, 0, 10), default=1.0,
                   help="identity strength, 0 to 10 (0 = plain UniDiffuser; default 1)")
    p.add_argument("--id-guidance", type=number(float, 0, 100), default=None,
                   help="separate identity guidance scale, 0 to 100 (adds a third network pass); "
                        "default: same as --cfg")
    p.add_argument("--id-start", type=id_start_value, default=None,
                   help="use the identity only once the noise level is at most this, 0.01 to 1 (1 = pure noise: "
                        "every step); e.g. 0.7 lets the prompt lay out the image and its colours first, which "
                        "keeps more faces and edits in the identity world (docs/identity_world_eval.md). Default: "
                        "the identity module's own (its config.json `sampling` block), else 1")
    p.add_argument("--photo-tokens", choices=("mean", "each"), default="mean",
                   help="mean: the identity tokens of the photos' mean embedding, as pretrained (default); each: "
                        "every photo's own tokens side by side (an ablation; needs an unrefined record)")
    p.add_argument("--n", type=number(int, 1), default=3, help="images per prompt, at least 1 (default 3)")
    p.add_argument("--encoder", default=None,
                   help="identity-module checkpoint folder (default: checkpoints/faceid_encoder)")
    p.add_argument("--weights", default=None,
                   help="UniDiffuser weights folder (default: $UNIDIFFUSER_WEIGHTS or checkpoints/)")
    p.add_argument("--allow-untrained-encoder", action="store_true",
                   help="testing only: run with an untrained identity module when none is found")
    p.add_argument("--allow-face-model-mismatch", action="store_true",
                   help="experiments only: use a record whose embeddings come from another face model than the "
                        "identity module's (refused otherwise)")
    p.add_argument("--no-resume", action="store_true", help="regenerate prompts whose images exist")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    p.add_argument("--dtype", default="auto",
                   help="bf16, fp16, fp32, auto (bf16 on CUDA, fp32 on CPU) or fastest (bf16 also on CPUs with "
                        "native bfloat16, where it is faster than fp32)")
    p.add_argument("--no-fast", action="store_true",
                   help="on CUDA, run the reference-like path (autocast) instead of the fast path "
                        "(pure bf16, both guidance passes in one batch, fused identity tokens)")
    p.add_argument("--compile", default="none",
                   help="torch.compile mode for the fast path (e.g. 'default'): pays off only for long prompt "
                        "files, since compiling costs time at every process start (docs/performance.md; default none)")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="on the fast path, launch the network's kernels from Python on every call instead of "
                        "replaying one captured CUDA graph per batch shape (slower; for debugging)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


class StageClock:
    """Wall time per stage; from process start (interpreter start-up counted in the first stage)
    when `from_process_start`, else from now."""

    def __init__(self, from_process_start: bool):
        self.stages: dict[str, float] = {}
        self._last = time.perf_counter()
        self._first = self._last - (_since_process_start() if from_process_start else 0.0)

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = now - (self._first if not self.stages else self._last)
        self._last = now

    def report(self) -> str:
        total = sum(self.stages.values())
        largest = max(self.stages, key=self.stages.get)
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.stages.items())
        return f"{total:.1f} s ({parts}; largest: {largest})"


def _since_process_start() -> float:
    """Seconds since this process started (Linux /proc; 0 where unavailable)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # numbers checked while parsing (models.errors.number)
    clock = StageClock(from_process_start=argv is None)  # a command line, not a call from Python
    import torch  # noqa: F401  (heavy imports after --help)

    from encoder.identity import checkpoint_hash, sampling_defaults
    from models.device import pick_device, pick_dtype, prefer_expandable_segments
    from models.paths import output_dir
    from personalize.face_model import check_record, module_face_model
    from personalize.generate import (
        GenerateOptions,
        find_identity_module,
        generate_prompts,
        identity_conditioning,
        load_pipeline,
    )
    from personalize.param_count import count_finetuned_parameters
    from personalize.prompts import load_prompts
    from personalize.record import IdentityRecord

    clock.lap("imports")
    prefer_expandable_segments()  # before the first CUDA allocation
    # everything that can be wrong with the inputs is found before the backbone is loaded
    record = IdentityRecord.load(args.restore_path)
    prompts = load_prompts(args.prompt_path)
    encoder = find_identity_module(args.encoder, allow_untrained=args.allow_untrained_encoder)
    id_start = sampling_defaults(encoder)["id_start"] if args.id_start is None else args.id_start
    for warning in check_record(module_face_model(encoder), record.face_model, encoder=encoder,
                                record_dir=args.restore_path, allow=args.allow_face_model_mismatch):
        print(f"warning: {warning}", file=sys.stderr)
    output_dir(args.output_path, "--output_path")
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    clock.lap("inputs")
    pipe = load_pipeline(args.weights, device, dtype, fast=not args.no_fast,
                         compile_mode=None if args.compile == "none" else args.compile,
                         cuda_graphs=not args.no_cuda_graphs)
    clock.lap("backbone weights")
    net, tokens, source = identity_conditioning(pipe, encoder, record, per_photo=args.photo_tokens == "each")
    clock.lap("identity module")
    opts = GenerateOptions(n_per_prompt=args.n, steps=args.steps, cfg=args.cfg, id_scale=args.id_scale,
                           id_guidance=args.id_guidance, id_start=id_start, seed=args.seed,
                           resume=not args.no_resume)
    fingerprint = {"record": record.fingerprint(), "encoder": source if encoder is None else checkpoint_hash(encoder),
                   "weights": {k: str(v) for k, v in pipe.weight_files.items()}, "dtype": str(dtype),
                   **({"photo_tokens": "each"} if args.photo_tokens == "each" else {})}
    summary = generate_prompts(pipe, net, tokens, prompts, args.output_path, opts, progress=not args.quiet,
                               fingerprint=fingerprint)
    clock.lap("sampling")
    changed = count_finetuned_parameters(pipe, pipe.weight_files)
    clock.lap("parameter check")
    print(f"identity: {args.restore_path} ({len(record.photos)} photos, class word '{record.class_word}'), "
          f"encoder: {source}")
    if id_start < 1:
        origin = "the identity module's default; --id-start 1 uses it at every step" if args.id_start is None \
            else "--id-start"
        print(f"identity from noise level {id_start:g} down ({origin})")
    times = summary["seconds_per_prompt"]
    detail = ""
    if len(times) > 1:
        detail = (f" (first prompt {times[0]:.2f} s, includes warm-up and any compilation; then "
                  f"{sum(times[1:]) / (len(times) - 1):.2f} s per prompt)")
    print(f"{summary['prompts_written']} prompts generated, {summary['prompts_skipped']} already done; "
          f"{args.n} images each in {args.output_path}; sampling {summary['seconds']:.1f} s{detail}")
    print(f"time: {clock.report()}")
    print(f"finetuned parameters: {changed}")
    return 0


if __name__ == "__main__":
    from models.errors import run_cli

    sys.exit(run_cli(main))
