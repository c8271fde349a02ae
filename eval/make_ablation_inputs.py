"""Regenerate the ablation notebook's inputs: one result JSON per (identity, settings).

Real runs (GPU, weights): for every identity-module checkpoint (which fixes K and the injection
mode), refinement step count, identity scale and guidance scale, run train.py and sample.py, score
the images with the competition's scorer and the extra metrics, and write the result:

    python -m eval.make_ablation_inputs --identity train_data/boy1 --prompts eval_prompts/boy1.json \\
        --encoders checkpoints/faceid_k4 checkpoints/faceid_k16 --id-scales 0.5 1 1.5 --cfgs 5 7 9 \\
        --refine-steps 0 20 --out eval/results/ablation
    (--dry-run prints the commands; finished results are kept and skipped unless --force)

From scorer reports already made (`python -m eval.score --json`), with a manifest
[{"settings": {"num_tokens": 4, "injection": "extra_tokens", "id_scale": 1, "cfg": 7,
"refine_steps": 0}, "score_json": "results.json", "task": "boy1"}, ...]:

    python -m eval.make_ablation_inputs --from-json manifest.json --out eval/results/ablation

Synthetic numbers (clearly marked; for tests and for trying the notebook without a GPU):

    python -m eval.make_ablation_inputs --synthetic --out /tmp/ablation --num-tokens 4 16 --id-scales 0.5 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eval.ablation import AXES, AblationError, make_result, result_from_score_report
from models.atomic import write_json_atomic
from models.device import pick_device
from models.errors import UserError, run_cli
from models.paths import output_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
Runner = Callable[[list[str]], None]


@dataclass(frozen=True)
class GridPoint:
    encoder: str | None  # identity-module checkpoint folder (real runs); None for synthetic
    num_tokens: int
    injection: str
    id_scale: float
    cfg: float
    refine_steps: int

    def settings(self) -> dict[str, Any]:
        s = {"num_tokens": self.num_tokens, "injection": self.injection, "id_scale": self.id_scale,
             "cfg": self.cfg, "refine_steps": self.refine_steps}
        if self.encoder is not None:
            s["encoder"] = self.encoder
        return s

    def tag(self) -> str:
        enc = f"{Path(self.encoder).name}_" if self.encoder else ""
        return (f"{enc}k{self.num_tokens}_{self.injection}_r{self.refine_steps}_s{self.id_scale:g}"
                f"_cfg{self.cfg:g}")

    def record_tag(self) -> str:
        """What train.py's output depends on: the encoder and the refinement steps."""
        return f"{Path(self.encoder).name if self.encoder else 'none'}_r{self.refine_steps}"


def encoder_settings(encoder: str | Path) -> tuple[int, str]:
    """(K, injection mode) from an identity-module checkpoint's config.json."""
    cfg = Path(encoder) / "config.json"
    try:
        c = json.loads(cfg.read_text())["config"]
        return int(c["num_tokens"]), str(c["injection"])
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise AblationError(f"{cfg}: cannot read the identity module's num_tokens / injection ({e}); "
                            "pass identity-module checkpoint folders to --encoders") from e


def grid(encoders: Sequence[str], id_scales: Sequence[float], cfgs: Sequence[float],
         refine_steps: Sequence[int]) -> list[GridPoint]:
    """Every combination, encoders outermost (K and injection read from each checkpoint)."""
    out = []
    for enc in encoders:
        k, inj = encoder_settings(enc)
        for r, s, c in itertools.product(refine_steps, id_scales, cfgs):
            out.append(GridPoint(str(enc), k, inj, float(s), float(c), int(r)))
    return out


# ------------------------------------------------------------------------------------- real runs
def train_command(identity_dir: Path, record: Path, point: GridPoint, weights: str | None,
                  extra: Sequence[str] = ()) -> list[str]:
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), "-d", str(identity_dir), "-o", str(record),
           "--refine-steps", str(point.refine_steps), "--quiet"]
    if point.encoder:
        cmd += ["--encoder", point.encoder]
    if weights:
        cmd += ["--weights", weights]
    return cmd + list(extra)


def sample_command(record: Path, prompts: Path, images: Path, point: GridPoint, weights: str | None,
                   extra: Sequence[str] = ()) -> list[str]:
    cmd = [sys.executable, str(REPO_ROOT / "sample.py"), "--restore_path", str(record), "--prompt_path",
           str(prompts), "--output_path", str(images), "--id-scale", f"{point.id_scale:g}", "--cfg",
           f"{point.cfg:g}", "--quiet"]
    if point.encoder:
        cmd += ["--encoder", point.encoder]
    if weights:
        cmd += ["--weights", weights]
    return cmd + list(extra)


def run_command(cmd: list[str]) -> None:
    """Run one step in the repository root; a failure stops the grid with the command shown."""
    print("$ " + shlex.join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise UserError(f"step failed with exit status {done.returncode}: {shlex.join(cmd)}",
                        hint="its own message is printed above; settings already done are kept on a rerun")


def run_grid(points: Sequence[GridPoint], identity_dir: Path, prompts: Path, out: Path, work: Path, scorer: Any,
             *, weights: str | None = None, train_extra: Sequence[str] = (), sample_extra: Sequence[str] = (),
             runner: Runner = run_command, force: bool = False, dry_run: bool = False) -> list[Path]:
    """Train, sample, score and write one result per grid point; returns the result files written.

    scorer: a CompetitionScorer (None with dry_run). Results that exist are skipped unless force.
    """
    from eval.competition_scorer import load_prompt_list
    from eval.metrics import task_metrics

    identity = identity_dir.name
    prompt_list = load_prompt_list(prompts)
    refs = None
    written, trained = [], set()
    for i, p in enumerate(points):
        result = out / f"{identity}__{p.tag()}.json"
        if result.exists() and not force and not dry_run:
            print(f"[{i + 1}/{len(points)}] {p.tag()}: kept {result}")
            continue
        record = work / identity / p.record_tag() / "record"
        images = work / identity / p.record_tag() / f"s{p.id_scale:g}_cfg{p.cfg:g}" / prompts.stem
        t0 = time.perf_counter()
        cmds = []
        if p.record_tag() not in trained and (force or not (record / "identity.json").is_file()):
            cmds.append(train_command(identity_dir, record, p, weights, train_extra))
        trained.add(p.record_tag())
        cmds.append(sample_command(record, prompts, images, p, weights, sample_extra))
        if dry_run:
            print("\n".join(shlex.join(c) for c in cmds))
            continue
        for c in cmds:
            runner(c)
        if refs is None:
            refs = scorer.references(identity_dir, identity)
        task = scorer.score_task(images, prompt_list, refs, task=prompts.stem, prompt_file=str(prompts))
        m = task_metrics(task, refs)
        metrics = {"detection_rate": m["detection_rate"], "diversity_clip": m["diversity_clip"],
                   "diversity_face": m["diversity_face"],
                   "copy_paste_gap": (m["copy_paste"] or {}).get("gap")}
        data = make_result(identity, p.settings(), {k: task.mean(k) for k in ("face", "clip_img", "text")}, metrics,
                           "scored", images=str(images), prompts=str(prompts),
                           seconds=round(time.perf_counter() - t0, 2), commands=[shlex.join(c) for c in cmds])
        written.append(write_json_atomic(result, data))
        print(f"[{i + 1}/{len(points)}] {p.tag()}: face {task.mean('face'):.4f} text {task.mean('text'):.4f}"
              f" -> {result}", flush=True)
    return written


# ------------------------------------------------------------------------------- other sources
def from_manifest(manifest: Path, out: Path) -> list[Path]:
    """Result files from scorer reports listed in a manifest (see the module docstring)."""
    try:
        entries = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AblationError(f"manifest {manifest}: {e}") from e
    if not isinstance(entries, list):
        raise AblationError(f"manifest {manifest} must be a JSON list of {{'settings', 'score_json'}} objects")
    written = []
    for i, e in enumerate(entries):
        try:
            path = Path(e["score_json"])
            path = path if path.is_absolute() else manifest.parent / path
            report = json.loads(path.read_text())
            data = result_from_score_report(report, e["settings"], e.get("identity"), e.get("task"),
                                            e.get("source", "scored"))
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as err:
            raise AblationError(f"manifest {manifest}, entry {i}: {type(err).__name__}: {err}") from err
        data["score_json"] = str(path)
        tag = GridPoint(None, **{a: data["settings"][a] for a in AXES}).tag()
        written.append(write_json_atomic(out / f"{data['identity']}__{tag}.json", data))
    return written


def synthetic_results(identities: Sequence[str], num_tokens: Sequence[int], injections: Sequence[str],
                      id_scales: Sequence[float], cfgs: Sequence[float], refine_steps: Sequence[int],
                      seed: int = 0) -> list[dict]:
    """Made-up but plausible numbers on a grid (marked source "synthetic"): identity rises with the
    scale, K and refinement; prompt following falls with the scale."""
    rng = np.random.default_rng(seed)
    out = []
    for ident, k, inj, s, c, r in itertools.product(identities, num_tokens, injections, id_scales, cfgs,
                                                    refine_steps):
        face = (0.12 + 0.4 * (1 - np.exp(-s * k / 6)) + 0.03 * min(r, 50) / 50 + 0.02 * (inj == "extra_tokens")
                - 0.004 * (c - 7) + rng.normal(0, 0.01))
        text = 0.31 - 0.035 * s + 0.004 * (c - 7) - 0.006 * k / 16 - 0.01 * min(r, 50) / 50 + rng.normal(0, 0.004)
        scores = {"face": float(face), "clip_img": float(0.5 + 0.25 * face + rng.normal(0, 0.01)), "text": float(text)}
        metrics = {"detection_rate": float(min(1.0, 0.75 + 0.3 * face)), "diversity_clip": float(0.3 - 0.06 * s),
                   "diversity_face": float(0.35 - 0.2 * face), "copy_paste_gap": float(0.04 + 0.03 * min(r, 50) / 50)}
        settings = {"num_tokens": int(k), "injection": inj, "id_scale": float(s), "cfg": float(c),
                    "refine_steps": int(r)}
        out.append(make_result(ident, settings, scores, metrics, source="synthetic"))
    return out


def write_synthetic(out: Path, **grid_args: Any) -> list[Path]:
    written = []
    for data in synthetic_results(**grid_args):
        tag = GridPoint(None, **data["settings"]).tag()
        written.append(write_json_atomic(out / f"{data['identity']}__{tag}.json", data))
    return written


# -------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.make_ablation_inputs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the result JSONs (the notebook's input)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--identity", help="photo folder of one identity (real runs)")
    mode.add_argument("--from-json", help="manifest of existing scorer reports with their settings")
    mode.add_argument("--synthetic", action="store_true", help="write made-up numbers (marked synthetic)")
    p.add_argument("--prompts", help="prompt file for real runs (e.g. eval_prompts/boy1.json)")
    p.add_argument("--encoders", nargs="+", default=[], help="identity-module checkpoints (each fixes K, injection)")
    p.add_argument("--id-scales", nargs="+", type=float, default=[1.0])
    p.add_argument("--cfgs", nargs="+", type=float, default=[7.0])
    p.add_argument("--refine-steps", nargs="+", type=int, default=[0])
    p.add_argument("--num-tokens", nargs="+", type=int, default=[4, 8, 16], help="synthetic only")
    p.add_argument("--injections", nargs="+", default=["extra_tokens", "text_slots"], help="synthetic only")
    p.add_argument("--identities", nargs="+", default=["boy1", "girl1"], help="synthetic only")
    p.add_argument("--seed", type=int, default=0, help="synthetic only")
    p.add_argument("--work", default="runs/ablation", help="identity records and images of real runs")
    p.add_argument("--weights", help="UniDiffuser weights folder for train.py / sample.py and the scorer")
    p.add_argument("--clip", help="OpenAI CLIP ViT-B/32 weights for the scorer")
    p.add_argument("--face-pack", help="insightface buffalo_l folder for the scorer")
    p.add_argument("--device", default="auto", help="scorer device (cuda, cpu, auto)")
    p.add_argument("--sample-args", default="", help="extra sample.py arguments, one quoted string")
    p.add_argument("--train-args", default="", help="extra train.py arguments, one quoted string")
    p.add_argument("--force", action="store_true", help="redo settings whose result exists")
    p.add_argument("--dry-run", action="store_true", help="print the commands of real runs and stop")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = output_dir(args.out, "--out", create=False)
    if args.synthetic:
        files = write_synthetic(out, identities=args.identities, num_tokens=args.num_tokens,
                                injections=args.injections, id_scales=args.id_scales, cfgs=args.cfgs,
                                refine_steps=args.refine_steps, seed=args.seed)
        print(f"{len(files)} SYNTHETIC results written to {out}")
        return 0
    if args.from_json:
        files = from_manifest(Path(args.from_json), out)
        print(f"{len(files)} results written to {out}")
        return 0
    if not args.prompts or not args.encoders:
        raise AblationError("real runs need --prompts and --encoders (identity-module checkpoint folders)")
    points = grid(args.encoders, args.id_scales, args.cfgs, args.refine_steps)
    scorer = None
    if not args.dry_run:

        from eval.competition_scorer import CompetitionScorer

        device = pick_device(args.device)
        scorer, _ = CompetitionScorer.from_weights(clip_path=args.clip, face_pack=args.face_pack,
                                                   weights_root=args.weights, device=device)
    files = run_grid(points, Path(args.identity), Path(args.prompts), out, Path(args.work), scorer,
                     weights=args.weights, train_extra=shlex.split(args.train_args),
                     sample_extra=shlex.split(args.sample_args), force=args.force, dry_run=args.dry_run)
    print(f"{len(files)} results written to {out} ({len(points)} settings in the grid)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
