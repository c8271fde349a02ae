"""python -m eval.identity_grid: how strongly to sample the identity module (issue 16's identity scale x
guidance ablation), chosen on validation identities.

    python -m eval.identity_grid --seed S [--identities 8] [--id-scales 1,2,4] [--id-guidances none,7,15]
        [--refine-steps 0,50] [--settings 1:none:0,2:none:0,...] [--device cpu|cuda]
        [--json eval/results/identity_grid.json] [--plot PNG]

Renders validation identities (renderer split `val`: nobody's test identities), runs text only once and
the identity module once per (refinement steps, identity scale, identity guidance) setting through the
same machinery as `python -m eval.world` (train.py once per identity and refinement setting, with
`--refine-steps`; then sample.py with `--id-scale` and `--id-guidance`), and reports for each setting the
paired differences against text only over identities (identity similarity, over all images and over the
images with a face found; edit success; faces found; world-CLIP text similarity). Identity guidance "none"
is sample.py's default: the identity rides on the text guidance (two network passes); a number g adds the
third pass, eps = uncond + (1 + cfg)(text - uncond) + (1 + g)(cond - text).

The chosen setting (`best`) has the largest paired identity similarity among the settings whose edit success
and faces found both stay at least `KEEP` of text only's. `--choose-by` says which identity similarity: over
all images (default; an image without a face scores 0, as in the test evaluation's headline and the
competition), or over the images with a face found (the rule before, which a setting that loses the faces it
draws worst can win). An evaluation on test identities then runs the chosen setting with
`python -m eval.world ... --id-scale A --id-guidance G [--id-start S] [--refine-steps N]`.
Work folder (default runs/identity_grid/seed<S>): eval.world's layout, one method name per setting, so a
rerun resumes.

Choosing between modules (checkpoints of one run exported with `python -m pretrain.export`, or variants):
`--encoder NAME=DIR` given several times runs every setting for every module against the same text-only
images, and `best` names the module too (`--export` then folds the scale into that module). Sampling is
the judge here because pretraining's id_gain can rank modules the other way round
(`docs/identity_world_eval.md`, section 4).

    python -m eval.identity_grid --seed 101 --settings 1:none:0 --encoder s2000=DIR --encoder s4000=DIR ...
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import shlex
import sys
from pathlib import Path

import torch

from encoder.config import ID_START_MIN, id_start_value
from eval.named import split_named
from eval.world import Evaluation, Plan, _nanmean, headline_values, paired, prepare_data, provenance, weights_sha256
from eval.world_scores import bootstrap_interval

RESULTS = Path("eval/results/identity_grid.json")
EXPORT_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
KEEP = 0.9  # a setting must keep this fraction of text only's edit success and faces found
REPORTED = ("identity_similarity", "identity_similarity_found", "edit_success", "face_found", "clip_text")


def parse_guidance(text: str) -> float | None:
    return None if text.strip().lower() in ("none", "-", "") else float(text)


def guidance_text(guidance: float | None) -> str:
    return "none" if guidance is None else f"{guidance:g}"


def parse_settings(text: str) -> list[tuple[int, float, float | None]]:
    """--settings "1:none:0,2:none:0,1:20:0" -> [(refine steps, identity scale, identity guidance), ...]."""
    out = []
    for item in (x for x in text.split(",") if x.strip()):
        parts = item.split(":")
        if len(parts) != 3:
            raise ValueError(f"{item!r} is not scale:guidance:refine")
        out.append((int(parts[2]), float(parts[0]), parse_guidance(parts[1])))
    return out


SETTING_KEYS = ("module", "encoder", "id_scale", "id_guidance", "id_start", "refine_steps", "photo_tokens")  # `best`


def flags(setting: dict) -> str:
    """The command-line flags of a setting (a row or `best`): sample.py's and train.py's."""
    out = f"--id-scale {setting['id_scale']:g}"
    if setting["id_guidance"] is not None:
        out += f" --id-guidance {setting['id_guidance']:g}"
    if setting.get("id_start", 1.0) != 1.0:
        out += f" --id-start {setting['id_start']:g}"
    if setting.get("photo_tokens", "mean") != "mean":
        out += f" --photo-tokens {setting['photo_tokens']}"
    return out + (f" --refine-steps {setting['refine_steps']}" if setting.get("refine_steps") else "")


def label(scale: float, guidance: float | None, refine: int = 0, photo_tokens: str = "mean",
          module: str | None = None, id_start: float = 1.0) -> str:
    """The method name of one setting (its units and images in the work folder); a named module's
    settings are its own methods."""
    return ("encoder_" + (f"{module}_" if module else "") + f"scale{scale:g}_guidance{guidance_text(guidance)}"
            + (f"_refine{refine}" if refine else "") + ("" if photo_tokens == "mean" else f"_{photo_tokens}")
            + ("" if id_start == 1.0 else f"_start{id_start:g}"))


def parse_modules(values: list[str] | None, world: Path) -> list[tuple[str | None, Path]]:
    """--encoder values -> [(name, folder)]: none given is the world's module; one may go unnamed (its
    methods keep the plain names); several need distinct names, NAME=DIR (letters, digits, '.', '-')."""
    from models.errors import UserError

    modules = [] if values else [(None, world / "faceid_encoder")]
    for value in values or ():
        name, folder = split_named(value, "--encoder", name_required=False)
        modules.append((name, Path(folder)))
    names = [name for name, _ in modules]
    if len(modules) > 1 and (None in names or len(set(names)) < len(names)):
        raise UserError("--encoder given several times: name each module once, --encoder NAME=DIR")
    for _, folder in modules:
        if not (folder / "identity.safetensors").is_file():
            raise UserError(f"--encoder {folder}: no identity module there (identity.safetensors missing); "
                            "export one with `python -m pretrain.export CHECKPOINT --like MODULE --out DIR`")
    return modules


CHOOSE_BY = {"identity_similarity": "identity similarity", "identity_similarity_found":
             "identity similarity over faces found"}


def rule_text(metric: str) -> str:
    return (f"largest paired {CHOOSE_BY[metric]}, keeping >= {KEEP:g} of text only's edit success and faces "
            "found (validation identities)")


def pick_best(rows: list[dict], metric: str = "identity_similarity") -> dict | None:
    """The row with the largest paired `metric` (a CHOOSE_BY key) among those that keep KEEP of text only's
    edit success and faces found (None when no row does)."""
    def keeps(row):
        ratios = [row["ratio_to_text_only"][m] for m in ("edit_success", "face_found")]
        return all(r is not None and r >= KEEP for r in ratios)

    ok = [r for r in rows if keeps(r) and r["paired"][metric]["mean"] is not None]
    return max(ok, key=lambda r: r["paired"][metric]["mean"], default=None)


def export_best(best: dict | None, encoder: Path, target: Path, chosen_by: Path,
                dtype: torch.dtype = torch.float32, rule: str = rule_text("identity_similarity")) -> Path:
    """The module at `encoder` with the chosen identity scale folded into its gates
    (`IdentityModule.fold_scale_`), written to `target` (weights stored as `dtype`) with a `strength` block in
    its config.json (the scale folded in all: scales folded earlier multiply; the weights it came from; the
    results that chose it) and a `sampling` block with the chosen identity start, sample.py's default for it."""
    from encoder.identity import IdentityModule, checkpoint_hash, read_metadata
    from models.errors import UserError

    if best is None:
        raise UserError("--export: no setting kept the floors, so there is no chosen scale to export")
    if best["id_guidance"] is not None or best.get("refine_steps"):
        raise UserError(f"--export: the chosen setting ({flags(best)}) needs identity guidance or refinement at "
                        "sampling time, which the module does not carry; pass it to sample.py / train.py instead")
    meta = read_metadata(encoder)
    source = checkpoint_hash(encoder)
    module = IdentityModule.load(encoder).fold_scale_(best["id_scale"])
    extra = {k: v for k, v in meta.items() if k not in ("format", "version", "config")}
    before = float(meta.get("strength", {}).get("folded_id_scale", 1.0))
    extra["strength"] = {"folded_id_scale": before * best["id_scale"], "this_fold": best["id_scale"],
                         "source_sha256": source, "chosen_by": str(chosen_by),
                         "rule": rule}
    # the chosen identity start travels as the module's sampling default (encoder.identity.sampling_defaults);
    # the grid passes every setting's start explicitly, so a source module's own default was not what it measured
    extra["sampling"] = {"id_start": float(best.get("id_start", 1.0))}
    return module.save(target, extra, dtype=dtype)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.identity_grid", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, required=True, help="renderer seed of the validation identities")
    p.add_argument("--identities", type=int, default=8, help="validation identities (default 8)")
    p.add_argument("--photos", type=int, default=3, help="photos per identity (default 3)")
    p.add_argument("--id-scales", default="1,2,4", help="identity scales, comma-separated (default 1,2,4)")
    p.add_argument("--id-guidances", default="none,7,15",
                   help="identity guidance scales, comma-separated; none = the text guidance, two passes "
                        "(default none,7,15)")
    p.add_argument("--refine-steps", default="0",
                   help="train.py --refine-steps values, comma-separated (default 0: no refinement)")
    p.add_argument("--settings", default=None,
                   help="explicit settings instead of the product of the three lists: scale:guidance:refine, "
                        "comma-separated (e.g. 1:none:0,2:none:0,1:20:0,1:none:50)")
    p.add_argument("--photo-tokens", choices=("mean", "each"), default="mean",
                   help="every setting's sample.py --photo-tokens: the mean embedding's tokens (default) or each "
                        "photo's (the mean-pooled against per-photo tokens ablation; refinement 0 only)")
    p.add_argument("--id-start", default="1",
                   help="sample.py --id-start values, comma-separated, each run with every setting: the identity "
                        "only at noise levels t <= this, 0.01 to 1 (default 1: every step); e.g. 1,0.7")
    p.add_argument("--prompts", type=int, default=3, help="prompts of each layout per identity (default 3)")
    p.add_argument("--n", type=int, default=3, help="images per prompt (default 3)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    p.add_argument("--cfg", type=float, default=7.0, help="text guidance scale (default 7)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    p.add_argument("--world", type=Path, default=Path("checkpoints/world"), help="world weights folder")
    p.add_argument("--encoder", action="append", default=None, metavar="[NAME=]DIR",
                   help="identity module (default <world>/faceid_encoder); several, each NAME=DIR, to choose "
                        "between modules on the same text-only images")
    p.add_argument("--out", type=Path, default=None, help="work folder (default runs/identity_grid/seed<S>)")
    p.add_argument("--json", type=Path, default=RESULTS, help=f"results JSON (default {RESULTS})")
    p.add_argument("--plot", type=Path, default=None, help="also write the plot (PNG) here")
    p.add_argument("--choose-by", choices=tuple(CHOOSE_BY), default="identity_similarity",
                   help="which paired identity similarity picks `best` among the settings that keep edits and "
                        "faces: over all images, a lost face scoring 0 (default), or over the faces found")
    p.add_argument("--export", type=Path, default=None,
                   help="write the identity module with the chosen identity scale folded into its gates to this "
                        "folder (its --id-scale 1 is then the chosen setting); the chosen setting must use no "
                        "separate identity guidance and no refinement")
    p.add_argument("--export-dtype", choices=("fp16", "fp32"), default="fp16",
                   help="how --export stores the weights (default fp16: half the size, what the world ships; "
                        "the module still runs in float32)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    from data_prep.faceworld.render import use_folder_version
    from models.atomic import write_json_atomic
    from models.device import pick_device
    from models.errors import UserError
    from models.paths import file_sha256
    from models.pipeline import folder_sampler_policy

    args = build_parser().parse_args(argv)
    use_folder_version(args.world)  # validation identities drawn as the world's models saw renders
    argv_list = sys.argv[1:] if argv is None else list(argv)
    try:
        settings = parse_settings(args.settings) if args.settings else [
            (r, s, g) for r, s, g in itertools.product([int(x) for x in args.refine_steps.split(",") if x.strip()],
                                                       [float(x) for x in args.id_scales.split(",") if x.strip()],
                                                       [parse_guidance(x) for x in args.id_guidances.split(",")])]
    except ValueError as e:
        raise UserError(f"--settings / --id-scales / --id-guidances / --refine-steps: {e} (numbers, comma-separated; "
                        "'none' for guidance; --settings as scale:guidance:refine,...)") from e
    levels = f"noise levels in [{ID_START_MIN:g}, 1], comma-separated"
    try:  # sample.py's --id-start rule, for each value of the list
        starts = [id_start_value(x) for x in args.id_start.split(",") if x.strip()]
    except argparse.ArgumentTypeError as e:
        raise UserError(f"--id-start: {e} ({levels})") from None
    if not starts:
        raise UserError(f"--id-start: no value in {args.id_start!r} ({levels})")
    if args.photo_tokens == "each" and (args.export or any(refine for refine, _, _ in settings)):
        raise UserError("--photo-tokens each: refined tokens and exported modules are the pooled photos'; "
                        "run it without refinement and without --export")
    modules = parse_modules(args.encoder, args.world)
    if len(modules) > 1 and any(refine for refine, _, _ in settings):
        raise UserError("several --encoder modules with refinement: refined records belong to one module; "
                        "compare modules without --refine-steps")
    plan = Plan(seed=args.seed, identities=args.identities, photos=(args.photos,), methods=("encoder", "text_only"),
                prompts=args.prompts, seeds=1, n=args.n, steps=args.steps, cfg=args.cfg, split="val",
                command_timing=0)
    out = args.out or Path("runs/identity_grid") / f"seed{plan.seed}"
    k, progress = args.photos, not args.no_progress
    people = prepare_data(plan, out, progress=progress)
    ev = Evaluation(plan, out, args.world, pick_device(args.device), modules[0][1], None, progress=progress)
    ev.run_text_only(people)
    text = headline_values(out, "text_only", k, people, 1)
    text_means = {m: _nanmean(text[m].values()) for m in REPORTED}
    rows, hashes = [], {encoder: file_sha256(encoder / "identity.safetensors") for _, encoder in modules}
    for (module, encoder), (refine, scale, guidance), start in itertools.product(modules, settings, starts):
        name = label(scale, guidance, refine, args.photo_tokens, module, start)
        ev.encoder = encoder
        ev.plan = dataclasses.replace(plan, id_scale=scale, id_guidance=guidance, refine_steps=refine,
                                      photo_tokens=args.photo_tokens, id_start=start)
        print(f"[identity_grid] {name}: {len(people)} identities", flush=True)
        ev.run_encoder(people, method=name)
        values = headline_values(out, name, k, people, 1)
        means = {m: _nanmean(values[m].values()) for m in REPORTED}
        rows.append({"module": module, "encoder": str(encoder),
                     "encoder_sha256": hashes[encoder],
                     "id_scale": scale, "id_guidance": guidance, "refine_steps": refine,
                     "photo_tokens": args.photo_tokens, "id_start": start, "method": name,
                     "means": means,
                     "ratio_to_text_only": {m: (None if means[m] is None or not text_means[m]
                                                else means[m] / text_means[m]) for m in REPORTED},
                     "paired": {m: v for m, v in paired(values, text).items() if m in REPORTED},
                     "copy_paste": bootstrap_interval(list(values["copy_paste"].values()))})
    best = pick_best(rows, args.choose_by)
    result = {"format": "identity-grid", "version": 1, "rows": rows, "text_only": text_means,
              "best": None if best is None else {key: best[key] for key in SETTING_KEYS},
              "rule": rule_text(args.choose_by),
              "validation": {"seed": plan.seed, "split": "val", "identities": plan.identities, "photos": k,
                             "prompts": {"sim": plan.prompts, "edit": plan.prompts}, "images_per_prompt": plan.n,
                             "sampling_steps": plan.steps, "cfg": plan.cfg},
              "work_folder": str(out), "world_sha256": weights_sha256(args.world, modules[0][1]),
              "sampler": folder_sampler_policy(args.world),
              "commands": {"grid": shlex.join(["python", "-m", "eval.identity_grid", *argv_list])}, **provenance()}
    write_json_atomic(args.json, result, indent=1)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        from models.atomic import atomic_write

        figure = plot(result)
        atomic_write(args.plot, lambda path: figure.savefig(path, format="png", dpi=110))
        print(f"plot written to {args.plot}")
    print(table(result))
    if args.export:
        folder = export_best(result["best"], Path(result["best"]["encoder"]) if result["best"] else modules[0][1],
                             args.export, args.json, dtype=EXPORT_DTYPES[args.export_dtype],
                             rule=rule_text(args.choose_by))
        print(f"identity module at the chosen setting written to {folder} (its defaults are {flags(result['best'])})")
    print(f"written to {args.json}")
    return 0


def table(result: dict) -> str:
    """The grid as a text table: paired differences against text only, with their intervals."""
    def cell(iv):
        return "-" if iv["mean"] is None else f"{iv['mean']:+.3f} [{iv['lo']:+.3f}, {iv['hi']:+.3f}]"

    names = [r.get("module") or "" for r in result["rows"]]
    width = max(map(len, ["module", *names])) if any(names) else 0  # a module column only when modules are named

    def first(module: str) -> str:
        return f"{module:<{width}} " if width else ""

    head = first("module") + (f"{'id scale':>8} {'id guid':>7} {'refine':>6} {'start':>5}  {'identity - text':>26}  "
                              f"{'found - text':>26}  {'edit - text':>26}  faces")
    lines = [head]
    for r in result["rows"]:
        p, faces = r["paired"], r["means"]["face_found"]
        lines.append(f"{first(r.get('module') or '')}{r['id_scale']:>8g} {guidance_text(r['id_guidance']):>7} "
                     f"{r.get('refine_steps', 0):>6} {r.get('id_start', 1.0):>5g}  "
                     f"{cell(p['identity_similarity']):>26}  {cell(p['identity_similarity_found']):>26}  "
                     f"{cell(p['edit_success']):>26}  {'-' if faces is None else f'{faces:.2f}'}")
    best = result["best"]
    lines.append("best: none keeps the floors" if best is None else
                 f"best: {flags(best)}" + (f" with module {best['module']} ({best['encoder']})" if best.get("module")
                                           else ""))
    return "\n".join(lines)


PLOTTED = (("identity_similarity_found", "identity similarity (faces found)"),
           ("identity_similarity", "identity similarity (no face = 0)"),
           ("edit_success", "edit success"), ("face_found", "faces found"))


def plot(result: dict):
    """Each setting's paired difference against text only (mean and 95 % interval over identities), one
    panel per metric. Returns a matplotlib Figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    rows = result["rows"]
    names = [(f"{r['module']}: " if r.get("module") else "") + f"{r['id_scale']:g} / {guidance_text(r['id_guidance'])}"
             + (f" / {r['refine_steps']}" if r.get("refine_steps") else "") for r in rows]
    xs = np.arange(len(rows))
    fig, panels = plt.subplots(1, len(PLOTTED), figsize=(3.6 * len(PLOTTED), 3.6), sharex=True)
    for ax, (metric, title) in zip(panels, PLOTTED):
        ivs = [r["paired"][metric] for r in rows]
        mean = np.array([np.nan if iv["mean"] is None else iv["mean"] for iv in ivs])
        lo = np.array([np.nan if iv["lo"] is None else iv["lo"] for iv in ivs])
        hi = np.array([np.nan if iv["hi"] is None else iv["hi"] for iv in ivs])
        ax.errorbar(xs, mean, yerr=[mean - lo, hi - mean], fmt="o", capsize=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(xs, names, rotation=60, fontsize=8)
        ax.grid(alpha=0.3)
    panels[0].set_ylabel("minus text only (per identity)")
    fig.supxlabel("identity scale / identity guidance [/ refinement steps]", fontsize=9)
    v = result["validation"]
    fig.suptitle(f"identity module's sampling strength: {v['identities']} validation identities (seed {v['seed']}), "
                 f"{v['photos']} photos, {v['sampling_steps']} steps, cfg {v['cfg']:g}", fontsize=10)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    from models.errors import run_cli as run_user_cli

    sys.exit(run_user_cli(main))
