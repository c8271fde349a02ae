"""python -m data_prep: a face-caption corpus -> webdataset shards of precomputed features.

    python -m data_prep --source folder --input photos/ --out shards/ --weights checkpoints/
    accelerate launch --num_processes 8 -m data_prep --source wds --input 'laion-face/{00000..00999}.tar' ...
    python -m data_prep cluster --shards shards/ --threshold 0.5   # identity labels by face clustering
    python -m data_prep --source faceworld --seed 0 --identities 10000 --photos 20 --resolution 64 \
        --min-image-side 64 --min-face-size 12 --out shards/ --weights world/

Every rank takes its share of the shards (rank r: shards r, r + n, ...); a rerun skips finished
shards. See docs/pretraining.md for the shard format and the manifest.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import timedelta

import torch

from data_prep.format import ARRAY_MEMBERS
from data_prep.process import REASONS, FrozenModels, PrepConfig, SampleProcessor
from data_prep.shards import MANIFEST, check_settings, run_shards, write_manifest
from data_prep.sources import FolderSource, HFDiskSource, SourceError, TarSource
from encoder.face_analysis import describe_face_model
from models.errors import run_cli
from models.paths import output_dir


def build_parser() -> argparse.ArgumentParser:
    d = PrepConfig()
    p = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("source")
    src.add_argument("--source", required=True, choices=["folder", "hf", "wds", "faceworld"],
                     help="folder: images + <stem>.txt captions (or --captions JSONL); hf: a datasets dataset "
                          "saved with save_to_disk; wds: img2dataset-style webdataset tars; faceworld: rendered "
                          "portraits (data_prep/faceworld, docs/faceworld.md)")
    src.add_argument("--input",
                     help="folder / dataset folder / tars (a folder of .tar, a glob or a brace pattern); "
                          "not used by the faceworld source")
    src.add_argument("--captions", help="folder source: a JSONL file of {\"file\", \"caption\", \"identity\"}")
    src.add_argument("--identity-from-folder", action="store_true",
                     help="folder source: the image's parent folder names the person")
    src.add_argument("--image-column", default="image", help="hf source: image column (default image)")
    src.add_argument("--caption-column", default="text", help="hf source: caption column (default text)")
    src.add_argument("--identity-column", help="hf source: identity label column")
    src.add_argument("--split", help="hf source: split of a DatasetDict (default train); faceworld source: "
                                     "identity split train / val / test (default train)")
    src.add_argument("--caption-key", default="caption", help="wds source: caption field of <key>.json "
                     "when there is no <key>.txt (default caption)")
    src.add_argument("--identity-key", help="wds source: identity field of <key>.json")
    src.add_argument("--limit", type=int, help="only the first N items of the source")
    fw = p.add_argument_group("faceworld source (renders; items = identities x photos)")
    fw.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    fw.add_argument("--identities", type=int, default=1000, help="people (default 1000)")
    fw.add_argument("--photos", type=int, default=10, help="renders per person (default 10)")
    fw.add_argument("--first-identity", type=int, default=0, help="skip this many people of the split (default 0)")
    fw.add_argument("--size", type=int, default=64, help="render side in pixels, 64 or 128 (default 64)")
    fw.add_argument("--face-boxes", choices=["render", "detector"], default="render",
                    help="render: the renderer's own face box and landmarks (default); detector: the face "
                         "pack's detector finds the faces")

    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, help="output folder for shards and manifest.json")
    out.add_argument("--shard-size", type=int, default=1000,
                     help="input items per shard (a shard holds those that pass the filters; default 1000)")
    out.add_argument("--save-jpg", action="store_true", help="also store each crop as <key>.jpg")

    f = p.add_argument_group("filters and crop")
    f.add_argument("--resolution", type=int, default=d.resolution, help=f"crop side (default {d.resolution})")
    f.add_argument("--min-image-side", type=int, default=d.min_image_side)
    f.add_argument("--min-face-size", type=int, default=d.min_face_size, help="face box side in the photo, px")
    f.add_argument("--min-det-score", type=float, default=d.min_det_score)
    f.add_argument("--max-other-face", type=float, default=d.max_other_face,
                   help="reject when another face has more than this fraction of the main face's area")
    f.add_argument("--min-face-visible", type=float, default=d.min_face_visible)
    f.add_argument("--min-face-fraction", type=float, default=d.min_face_fraction,
                   help="face side / crop side")

    m = p.add_argument_group("models")
    m.add_argument("--weights", help="weights folder (default: $UNIDIFFUSER_WEIGHTS or checkpoints/)")
    m.add_argument("--face-pack", help="insightface pack folder (default: antelopev2/buffalo_l in the weights folder)")
    m.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="precision of the frozen models (default float32)")
    m.add_argument("--batch-size", type=int, default=32, help="crops per model batch (default 32)")
    m.add_argument("--threads", type=int, default=4,
                   help="photos decoded and face-analysed at once per process (default 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def build_source(args):
    if args.source == "faceworld":
        from data_prep.faceworld.render import use_folder_version
        from data_prep.faceworld.source import FaceworldSource

        if args.weights:  # a world's models: their shards are renders of the version they were trained on
            use_folder_version(args.weights)
        return FaceworldSource(args.seed, args.identities, args.photos, split=args.split or "train",
                               first=args.first_identity, size=args.size)
    if not args.input:
        raise SourceError(f"--source {args.source} needs --input")
    if args.source == "folder":
        return FolderSource(args.input, captions_jsonl=args.captions, identity_from_folder=args.identity_from_folder)
    if args.source == "hf":
        return HFDiskSource(args.input, image_column=args.image_column, caption_column=args.caption_column,
                            identity_column=args.identity_column, split=args.split)
    return TarSource(args.input, caption_key=args.caption_key, identity_key=args.identity_key)


def settings_of(args, source, prep: PrepConfig, fingerprints: dict) -> dict:
    """What has to be equal between a run and its rerun (see data_prep.shards.check_settings)."""
    items = min(len(source), args.limit) if args.limit else len(source)
    return {"source": {k: v for k, v in source.describe().items() if k != "damaged_tars"}, "items": items,
            "shard_size": args.shard_size, "prep": prep.to_dict(), "models": fingerprints}


def feature_shapes(models: FrozenModels, prep: PrepConfig) -> dict:
    side = prep.resolution // models.downsample
    z = models.autoencoder.config.embed_dim
    shapes = {"moments": [2 * z, side, side], "text": [models.text_encoder.max_length, models.text_encoder.text_dim],
              "clip": [models.image_clip.embed_dim], "arcface": [512], "arcface_flip": [512], "arcface_aug": [512],
              "box": [4]}
    return {k: {"shape": v, "dtype": str(ARRAY_MEMBERS[k].__name__)} for k, v in shapes.items()}


def face_providers(local_rank: int, device: torch.device) -> list | None:
    """onnxruntime CUDA on this rank's GPU when available (onnxruntime-gpu), else the default."""
    import onnxruntime

    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": local_rank}), "CPUExecutionProvider"]
    return None


def run(args, models: FrozenModels | None = None) -> dict | None:
    """The whole command; `models` can be injected (tests). Returns the manifest on the main process."""
    from accelerate import PartialState

    # Ranks finish their shards at different times and then wait for each other: a long timeout keeps
    # the process group from giving up on the slowest one.
    state = PartialState(timeout=timedelta(hours=72))
    prep = PrepConfig(resolution=args.resolution, min_image_side=args.min_image_side,
                      min_face_size=args.min_face_size, min_det_score=args.min_det_score,
                      max_other_face=args.max_other_face, min_face_visible=args.min_face_visible,
                      min_face_fraction=args.min_face_fraction, save_jpg=args.save_jpg)
    source = build_source(args)
    if args.source == "faceworld":
        from data_prep.faceworld.source import check_prep

        check_prep(source, prep)
    if models is None:
        models = FrozenModels.from_weights(args.weights, face_pack=args.face_pack, device=state.device,
                                           dtype=getattr(torch, args.dtype), policy=prep.face_policy(),
                                           face_providers=face_providers(state.local_process_index, state.device))
    if args.source == "faceworld" and args.face_boxes == "render":
        from data_prep.faceworld.source import with_rendered_faces

        models = with_rendered_faces(models, source)
    settings = settings_of(args, source, prep, models.fingerprints())
    out = output_dir(args.out, "--out")
    check_settings(out, settings, state.is_main_process)
    state.wait_for_everyone()
    processor = SampleProcessor(models, prep, threads=args.threads)
    t0 = time.time()
    summary = run_shards(source, processor, out, shard_size=args.shard_size, batch_size=args.batch_size,
                         rank=state.process_index, world=state.num_processes, limit=args.limit,
                         progress=not args.no_progress and state.is_local_main_process)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    manifest = write_manifest(out, settings, feature_shapes(models, prep), time.time() - t0,
                              face_model=models.face_model)
    print_summary(manifest, summary, out)
    return manifest


def print_summary(manifest: dict, summary, out) -> None:
    t = manifest["totals"]
    rate = summary.input / summary.seconds if summary.seconds > 0 else 0.0
    print(f"\n{out}/{MANIFEST}: {len(manifest['shards'])} shards, {t['written']} of {t['input']} items kept "
          f"({t['written'] / max(t['input'], 1):.1%})")
    print(f"face model: {describe_face_model(manifest['face_model'])}")
    print(f"this run (main rank): {len(summary.done)} shards written, {len(summary.skipped)} already done, "
          f"{summary.input} items in {summary.seconds:.1f} s ({rate:.1f} items/s)")
    for reason, n in sorted(t["rejected"].items(), key=lambda kv: -kv[1]):
        print(f"  {n:8d}  {reason:20s} {REASONS.get(reason, '')}")
    if not manifest["complete"]:
        print(f"INCOMPLETE: {len(manifest['missing'])} shards missing (e.g. {manifest['missing'][0]}); "
              "rerun the same command to finish them.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cluster"]:
        from data_prep.cluster import main as cluster_main

        return cluster_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.shard_size < 1 or args.batch_size < 1:
        parser.error("--shard-size and --batch-size must be at least 1")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
