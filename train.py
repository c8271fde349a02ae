"""Personalise: detect, align and embed the faces of one person's photos; no backbone weight changes.

    python train.py -d PHOTOS -o OUT
    accelerate launch --mixed_precision fp16 --num_processes 1 train.py -d PHOTOS -o OUT

Writes an identity record into OUT (identity.safetensors + identity.json): per-photo ArcFace
embeddings and their mean, the photos used and skipped (with reasons), the class word, the
identity-module checkpoint's hash and the face model of the embeddings. The face pack is the one
the identity module was pretrained with (its `face_model`), unless --face-pack names one; a pack
whose recogniser differs from the module's is refused (--allow-face-model-mismatch for
experiments). `--refine-steps N` then tunes the identity tokens for N steps of the denoising loss on
the photos (backbone frozen). sample.py reads OUT.
"""

from __future__ import annotations

import argparse
import sys
import time

from models.errors import number


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--data", required=True, help="folder of photos of one person (3 to 10 is typical)")
    p.add_argument("-o", "--output", required=True, help="folder for the identity record")
    p.add_argument("--face-pack", default=None,
                   help="insightface pack folder (default: the pack the identity module was pretrained with, "
                        "from the weights folder; for a module that records none, antelopev2 or buffalo_l)")
    p.add_argument("--allow-face-model-mismatch", action="store_true",
                   help="experiments only: use a face pack whose recogniser differs from the identity module's")
    p.add_argument("--encoder", default=None,
                   help="identity-module checkpoint folder (default: checkpoints/faceid_encoder, if present)")
    p.add_argument("--weights", default=None,
                   help="weights folder: the face pack is looked for there; UniDiffuser for --refine-steps "
                        "(default: $UNIDIFFUSER_WEIGHTS or checkpoints/)")
    p.add_argument("--min-face-size", type=number(int, 1), default=32, help="smallest face side in pixels (default 32)")
    p.add_argument("--min-det-score", type=number(float, 0, 1), default=0.5,
                   help="lowest detection score, 0 to 1 (default 0.5)")
    p.add_argument("--refine-steps", type=number(int, 0), default=0,
                   help="steps of identity-token refinement on the photos (default 0: none)")
    p.add_argument("--refine-lr", type=number(float, 0, 1), default=1e-3,
                   help="refinement learning rate (default 1e-3)")
    p.add_argument("--refine-batch", type=number(int, 1), default=4, help="refinement batch size (default 4)")
    p.add_argument("--seed", type=int, default=0, help="refinement seed (default 0)")
    p.add_argument("--allow-untrained-encoder", action="store_true",
                   help="testing only: refine against an untrained identity module when none is found")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # numbers checked while parsing (models.errors.number)
    t0 = time.perf_counter()
    from encoder.face_analysis import FacePolicy
    from models.device import pick_device
    from models.paths import output_dir
    from personalize.extract import face_setup, personalize_photos, summary_table

    output_dir(args.output, "-o", create=False)  # checked now, created only once there is a record to write
    device = pick_device(args.device)
    policy = FacePolicy(min_face_size=args.min_face_size, min_det_score=args.min_det_score)
    setup = face_setup(encoder=args.encoder, face_pack=args.face_pack, weights=args.weights, device=device,
                       policy=policy, allow_mismatch=args.allow_face_model_mismatch, announce=print)
    for warning in setup.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    t_loaded = time.perf_counter()
    record = personalize_photos(args.data, setup, progress=not args.quiet)
    t_extracted = time.perf_counter()
    if args.refine_steps > 0:
        from personalize.refine import RefineOptions, refine_record

        refine_record(record, args.data, setup.analyzer, weights=args.weights, encoder=args.encoder,
                      device=device, allow_untrained=args.allow_untrained_encoder,
                      opts=RefineOptions(steps=args.refine_steps, lr=args.refine_lr,
                                         batch_size=args.refine_batch, seed=args.seed),
                      progress=not args.quiet)
    record.save(args.output)
    t_end = time.perf_counter()
    print(summary_table(record))
    print(f"\n{len(record.photos)} photos used, {len(record.skipped)} skipped; class word "
          f"'{record.class_word}' ({record.class_word_source}); encoder: "
          f"{record.encoder['path'] if record.encoder else 'none recorded'}")
    print(f"record written to {args.output}; face models loaded in {t_loaded - t0:.2f} s, photos processed in "
          f"{t_extracted - t_loaded:.2f} s, total {t_end - t0:.2f} s")
    return 0


if __name__ == "__main__":
    from models.errors import run_cli

    sys.exit(run_cli(main))
