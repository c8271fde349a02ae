"""Score generated images the way the competition's preliminary round did.

    python -m eval.score --outputs outputs/ --prompts eval_prompts/ --train-data train_data/ --json results.json

For every prompt file `<prompts>/<task>.json` it scores `<outputs>/<task>/<i>-<k:03>.jpg` (k = 0..2)
against the photos in `<train-data>/<identity>/` (`<task>` is `<identity>`, `<identity>_sim` or
`<identity>_edit`). Prints per-prompt and per-identity tables, the summary numbers (face /
clip_img / text for `<name>.json`; the five numbers for `_sim` / `_edit`) and the extra identity
metrics (eval/metrics.py), and writes all of it to the JSON file atomically.

Weights are local files only: OpenAI CLIP ViT-B/32 (`ViT-B-32.pt`) and insightface's `buffalo_l`
pack, found in --weights (or $UNIDIFFUSER_WEIGHTS, or checkpoints/) unless given by --clip / --face-pack.
With `--weights checkpoints/world` (the identity world) CLIP-I and CLIP-T come from its world-CLIP
(models/image_text.py).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from models.device import pick_device
from models.errors import run_cli
from models.paths import output_file


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.score", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outputs", default="outputs", help="folder of <task>/ image folders (default outputs/)")
    p.add_argument("--prompts", default="eval_prompts", help="folder of <task>.json prompt files")
    p.add_argument("--train-data", default="train_data", help="folder of <identity>/ photo folders")
    p.add_argument("--json", default=None, help="write the full report here (atomically)")
    p.add_argument("--tasks", default=None, help="comma-separated prompt-file stems to score (default: all)")
    p.add_argument("--clip", default=None, help="OpenAI CLIP ViT-B/32 weights file (default: <weights>/ViT-B-32.pt)")
    p.add_argument("--face-pack", default=None, help="insightface buffalo_l folder (default: <weights>/buffalo_l)")
    p.add_argument("--weights", default=None, help="weights folder (default: $UNIDIFFUSER_WEIGHTS or checkpoints/)")
    p.add_argument("--device", default="auto", help="device for CLIP: cuda, cpu or auto (default)")
    p.add_argument("--face-select", default="insightface", choices=["insightface", "first", "largest"],
                   help="which face of a multi-face image counts (default: as insightface's get(max_num=1))")
    p.add_argument("--exif", action="store_true", help="apply EXIF orientation (the competition did not)")
    p.add_argument("--allow-missing", action="store_true", help="score a missing output folder as 0")
    p.add_argument("--no-metrics", action="store_true", help="skip the extra identity metrics")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.json:
        output_file(args.json, "--json")
    t0 = time.perf_counter()

    from eval.competition_faces import CompetitionFaceConfig
    from eval.competition_scorer import CompetitionScorer, ScoreConfig
    from eval.metrics import metrics_table, report_metrics
    from eval.tables import per_prompt_table, per_task_table, summary_table
    from models.atomic import write_json_atomic

    device = pick_device(args.device)
    scorer, info = CompetitionScorer.from_weights(
        clip_path=args.clip, face_pack=args.face_pack, weights_root=args.weights, device=device,
        providers=None if device.type == "cuda" else ["CPUExecutionProvider"],
        face_config=CompetitionFaceConfig(select=args.face_select), config=ScoreConfig(exif_transpose=args.exif))
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    report = scorer.score_tree(args.outputs, args.prompts, args.train_data, tasks=tasks,
                               allow_missing=args.allow_missing, progress=not args.quiet)
    report.models = {"clip": info["clip"], "face_pack": info["face_pack"], "face_select": args.face_select,
                     "device": str(device)}
    if info["face_pack_note"]:
        report.warnings.insert(0, info["face_pack_note"])
    data = report.to_json()
    metrics = None if args.no_metrics else report_metrics(report)
    data["metrics"] = metrics
    data["command"] = shlex.join([sys.executable, "-m", "eval.score", *(sys.argv[1:] if argv is None else argv)])
    data["seconds"] = round(time.perf_counter() - t0, 2)

    print("\nper prompt (mean of its images)\n" + per_prompt_table(report))
    print("\nper identity and task (mean of its prompts)\n" + per_task_table(report))
    if metrics is not None:
        print("\nidentity metrics\n" + metrics_table(metrics))
    print("\nsummary\n" + summary_table(report))
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        write_json_atomic(args.json, data)
        print(f"\nreport written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
