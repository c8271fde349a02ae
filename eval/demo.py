"""python -m eval.demo: the main job's embedded demo, in the identity world (issue 17).

    python -m eval.demo [--world checkpoints/world] [--data checkpoints/demo] [--out outputs/demo]
                        [--steps 20] [--dtype fastest] [--device auto]
    python -m eval.demo --make-data checkpoints/demo        (re-make the committed demo folder)

`bash scripts/run.sh` runs it when no real weights are present at all (models.check_weights.presence
says "none"). On the world's committed weights (checkpoints/world, or $UNIDIFFUSER_DEMO_WORLD, or --world)
it does what the competition workflow does, with the same commands, flags and output layout:

1. `scripts/train.sh` (train.py per identity) on the demo's photo folders, into <out>/identities/<name>;
2. `scripts/sample.sh` (sample.py per prompt file) on each identity's <name>.json, into <out>/samples/<name>/
   as <prompt index>-<k:03>.jpg (64 x 64, the world's size; it prints `finetuned parameters: 0`);
3. text only: the same prompts through the plain pipeline (eval.world's text-only method: sample.py's
   generation code without identity tokens), into <out>/text_only/<name>/;
4. scores of both with part 2's scorer (eval/world_scores.py, as eval.world computes them): identity
   similarity with the EVALUATION recogniser against 5 renders of the person that were never photos
   (no face found = 0), edit success (attribute classifier) on the edit prompts, copy-paste;
5. a contact sheet per identity (personalize/contact_sheet.py: the photos, then one row per prompt with
   its 3 images), <out>/sheets/<name>.png; the table in <out>/scores.md and <out>/scores.json.

The demo data (checkpoints/demo/, the renderer's folder layout, see `make_demo_data`): the first two
test identities of renderer seed 777 (eval.world's test seed), 5 photos each (PNG), and per person 4
prompts: 2 reproduction prompts and 2 edits, the first of them a held-out attribute pair. Its
faceworld.json (the renderer's side file) holds what scoring needs (identity indices, the prompts'
attributes); methods never read it. `--data` takes any folder `python -m data_prep.faceworld render`
wrote, so the same demo runs on identities of another seed.

Rerun-safe: train.py rewrites its records, sample.py and text only skip prompts whose images exist;
when the world's weights, the data or the settings change, the previous images are removed first
(<out>/run.json records what made them). Every file is written atomically.

Where the demo world is (`models.check_weights.demo_world`) and what the main job needs (`MAIN_JOB`) are
shared with the web page (personalize/app.py), as is the contact sheet.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from data_prep.faceworld import DEMO_IDENTITIES, DEMO_PHOTOS, DEMO_SEED
from models.check_weights import DEMO_WORLD_ENV, demo_world

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "checkpoints" / "demo"
OUT = Path("outputs/demo")
# the committed demo data: eval.world's test seed, the first identities of the renderer's test split
RENDER_EDITS = 3  # edit prompts drawn per person; kept: KEEP_EDITS (0: a held-out pair, 2: an ordinary edit)
KEEP_SIM, KEEP_EDITS = 2, (0, 2)
# sampling: sample.py's seed and guidance, 3 images per prompt (the competition's), fewer steps than its
# 30 and bfloat16 on the CPU (about 2.5x float32's speed there) so that the demo fits in 2 minutes
STEPS, DTYPE, CFG, N, SEED, REFS = 20, "fastest", 7.0, 3, 42, 5
METHODS = {"encoder": "identity module", "text_only": "text only"}
# metric -> the prompts its number is taken on (eval.world.HEADLINE's layouts)
METRICS = {"identity_similarity": "all", "identity_similarity_found": "all", "edit_success": "edit",
           "copy_paste": "all", "face_found": "all"}
HEADERS = {"identity_similarity": "identity similarity", "identity_similarity_found": "(of faces found)",
           "edit_success": "edit success (edits)", "copy_paste": "copy-paste", "face_found": "faces found"}
DATA_README = """# The main job's demo identities

Made by `python -m eval.demo --make-data checkpoints/demo`: the first {identities} test identities of renderer
seed {seed} (`data_prep.faceworld`, split `test`), {photos} photos each, in the renderer's folder layout:

- `<name>/000.png ...` the photos;
- `eval_prompts/<name>.json` every prompt of the person; `<name>_sim.json` / `<name>_edit.json` the same
  prompts in the later competition layout (reproduction, editing);
- `faceworld.json` for scoring only: identity indices, each photo's and prompt's attributes.

Per person: the renderer's first {sim} reproduction prompts and its edit prompts {edits} of {render_edits}
(the first a held-out attribute pair). `bash scripts/run.sh` runs them through the world in
`checkpoints/world/` when no real weights are present (`python -m eval.demo`); see docs/demo.md.
"""


# ------------------------------------------------------------------------------------ which world
@dataclass(frozen=True)
class WeightsChoice:
    """What the main job runs on: kind "real" (every weight it needs is found: `folder` is the weights
    folder), "demo" (none is: `folder` is the demo world) or "incomplete" (some are: the main job stops;
    `python -m models.check_weights` says what is missing)."""

    kind: str
    folder: Path
    note: str


def choose_weights(root: str | os.PathLike | None = None, world: str | os.PathLike | None = None) -> WeightsChoice:
    """The main job's decision (scripts/run.sh makes the same one with `models.check_weights --presence`)."""
    from models.check_weights import MAIN_JOB, presence
    from models.paths import weights_dir

    state, folder = presence(MAIN_JOB, root), weights_dir(root)
    if state == "all":
        return WeightsChoice("real", folder, f"real weights in {folder}")
    if state == "none":
        return WeightsChoice("demo", demo_world(world), no_weights_note(folder, demo_world(world)))
    return WeightsChoice("incomplete", folder, f"some of the weights the main job needs are missing from {folder}: "
                         "python -m models.check_weights lists them with where to get each")


def no_weights_note(weights: Path, world: Path) -> str:
    """The one line the main job prints when it runs the demo for want of real weights."""
    return (f"no real weights in {_short(weights)}/: running the embedded demo world ({_short(world)}, rendered "
            f"identities); for your own photos put the real weights there (checkpoints/README.md says where to "
            f"get each; python -m models.check_weights lists what is missing)")


def _short(path: Path) -> str:
    """`path` relative to the repository when inside it (what a user typed), else as given."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# -------------------------------------------------------------------------------------- the data
@dataclass
class DemoIdentity:
    """One demo person: folder name, renderer identity index, class word, photo files, prompts
    [{text, layout ("sim" or "edit"), wanted (attributes the prompt states), held_out}]."""

    name: str
    identity: int
    class_word: str
    photos: list[Path]
    prompts: list[dict] = field(default_factory=list)

    @property
    def texts(self) -> list[str]:
        return [p["text"] for p in self.prompts]

    def person(self):
        """The eval.world Person of this identity (what part 2's scoring takes)."""
        from eval.world import Person

        return Person(self.name, self.identity, self.class_word, list(self.prompts))


def read_side_file(data: Path) -> dict:
    from data_prep.faceworld.folders import SIDE_FILE
    from models.errors import UserError

    path = data / SIDE_FILE
    if not path.is_file():
        raise UserError(f"{data} is not a rendered identity folder: it has no {SIDE_FILE}",
                        hint="pass a folder written by `python -m data_prep.faceworld render`, or the default "
                             "checkpoints/demo")
    return json.loads(path.read_text())


def demo_identities(data: str | os.PathLike | None = None) -> list[DemoIdentity]:
    """The identities of a demo folder (default checkpoints/demo; any `data_prep.faceworld render` folder):
    photos from <data>/<name>/, prompts (reproduction, then edit: each person's <name>.json) and their
    attributes from the side file. A prompt file that disagrees with the side file is an error."""
    from data_prep.faceworld.folders import PROMPTS_DIR
    from models.errors import UserError

    data = Path(data) if data else DEMO_DATA
    side = read_side_file(data)
    people = []
    for rec in side["people"]:
        prompts = [{"text": p["text"], "layout": "sim", "wanted": p["attributes"]} for p in rec["prompts"]["sim"]]
        prompts += [{"text": p["text"], "layout": "edit", "wanted": p["attributes"], "held_out": p.get("held_out", [])}
                    for p in rec["prompts"]["edit"]]
        photos = [data / p["file"] for p in rec["photos"]]
        missing = [p for p in photos if not p.is_file()]
        if missing:
            raise UserError(f"{data}: {len(missing)} photos of {rec['name']} are missing (first: {missing[0]})",
                            hint="render the folder again")
        prompt_file = data / PROMPTS_DIR / f"{rec['name']}.json"
        if prompt_file.is_file() and json.loads(prompt_file.read_text()) != [p["text"] for p in prompts]:
            raise UserError(f"{prompt_file} does not hold the prompts of {data}/faceworld.json",
                            hint="render the folder again (the side file must describe the prompt files)")
        people.append(DemoIdentity(rec["name"], int(rec["identity"]), rec["class_word"], photos, prompts))
    return people


def make_demo_data(out: str | os.PathLike, *, world: str | os.PathLike | None = None, seed: int = DEMO_SEED,
                   identities: int = DEMO_IDENTITIES, photos: int = DEMO_PHOTOS, progress: bool = False) -> dict:
    """Render the demo folder into `out` (replaced whole): `python -m data_prep.faceworld render --seed
    <seed> --identities <identities> --photos <photos> --edits 3 --format png` in the renderer version the
    models of `world` (default: demo_world()) were trained on, then each person's prompts cut to the first
    KEEP_SIM reproduction prompts and edits KEEP_EDITS (prompt files and side file rewritten to match). Returns
    the side file's content."""
    from data_prep.faceworld.folders import PROMPTS_DIR, SIDE_FILE, write_folders
    from data_prep.faceworld.render import folder_version
    from models.atomic import replace_folder, write_json_atomic, write_text_atomic

    out = Path(out)
    tmp, aside = out.with_name(f".{out.name}.tmp"), out.with_name(f".{out.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    side = write_folders(tmp, seed=seed, identities=identities, photos=photos, split="test", edits=RENDER_EDITS,
                         fmt="png", progress=progress, version=folder_version(demo_world(world)))
    for rec in side["people"]:
        sim = rec["prompts"]["sim"][:KEEP_SIM]
        edit = [rec["prompts"]["edit"][i] for i in KEEP_EDITS]
        rec["prompts"] = {"sim": sim, "edit": edit}
        files = {"": sim + edit, "_sim": sim, "_edit": edit}
        for suffix, prompts in files.items():  # the renderer's formatting (indent 1, no final newline)
            write_text_atomic(tmp / PROMPTS_DIR / f"{rec['name']}{suffix}.json",
                              json.dumps([p["text"] for p in prompts], indent=1))
    side["command"] = f"python -m eval.demo --make-data {out}"
    write_json_atomic(tmp / SIDE_FILE, side, indent=1, sort_keys=True)
    write_text_atomic(tmp / "README.md", DATA_README.format(
        identities=identities, seed=seed, photos=photos, sim=KEEP_SIM, edits=" and ".join(map(str, KEEP_EDITS)),
        render_edits=RENDER_EDITS))
    replace_folder(tmp, out, aside)
    return side


# -------------------------------------------------------------------------------------- the world
def check_world(world: Path) -> None:
    """Every part the demo uses is in `world`, or a UserError naming what is missing and how to get it."""
    from models.check_weights import MAIN_JOB
    from models.errors import UserError
    from models.paths import missing_weights
    from pretrain.world.attributes import EXPORT_DIR

    missing = [m.split(" (looked for")[0] for m in missing_weights(MAIN_JOB, world)]
    missing += [f"{what} ({world / sub}/)" for sub, what in (("eval_faces", "the evaluation recogniser"),
                                                             (EXPORT_DIR, "the attribute classifier"))
                if not (world / sub).is_dir()]
    if missing:
        raise UserError(f"the demo world {world} lacks {len(missing)} part(s): {'; '.join(missing)}",
                        hint="checkpoints/world/ is committed with every part (git pull; checkpoints/world/"
                             "README.md); `bash scripts/world.sh` trains them all from a seed")


def world_fingerprint(world: Path) -> dict:
    """{relative path: sha256} of every file of the world folder (a few tens of MB: well under a second)."""
    from models.paths import files_sha256

    return files_sha256(world, [p for p in sorted(world.rglob("*")) if p.is_file() and p.suffix != ".md"])


# -------------------------------------------------------------------------------------- running
def stream(argv: list[str], env: dict, log: Path, echo: bool = True) -> tuple[int, str]:
    """Run a command from the repository root, its output passed through as it comes (progress bars
    included; not with echo=False) and appended to `log`; returns (exit status, output)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    chunks = []
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(argv)}\n".encode())
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        while chunk := os.read(proc.stdout.fileno(), 65536):
            if echo:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            f.write(chunk)
            chunks.append(chunk)
        code = proc.wait()
    return code, b"".join(chunks).decode(errors="replace")


@dataclass(frozen=True)
class Settings:
    steps: int = STEPS
    dtype: str = DTYPE
    device: str = "auto"
    cfg: float = CFG
    n: int = N
    seed: int = SEED
    refs: int = REFS


def _fresh_start(out: Path, key: dict) -> bool:
    """Remove what an earlier run made from other weights, data or settings; record this run's key.
    Returns whether earlier outputs were kept."""
    from models.atomic import write_json_atomic

    path = out / "run.json"
    try:
        same = json.loads(path.read_text()) == json.loads(json.dumps(key))
    except (OSError, ValueError):
        same = False
    if not same:
        for sub in ("identities", "prompts", "samples", "text_only", "sheets", "scores.json", "scores.md"):
            target = out / sub
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        write_json_atomic(path, key, indent=1)
    return same


def _run_script(script: str, args: list[str], env: dict, log: Path, what: str, echo: bool = True) -> str:
    from models.errors import UserError

    code, text = stream(["bash", f"scripts/{script}", *args], env, log, echo=echo)
    if code:
        if not echo:  # held back while text only ran: its end names the failure
            print("\n".join(text.splitlines()[-15:]), flush=True)
        raise UserError(f"scripts/{script} failed ({what}; exit {code})",
                        hint=f"its table above names the failure; the whole output is in {log}")
    return text


def side_by_side_threads(device) -> int | None:
    """Text only's threads when it should run beside the workflow's scripts: half the cores of a CPU of at least
    2 (the scripts keep torch's default, all of them, as they would alone); None: one after the other (CUDA, or
    one core). One process's threads do not scale to the last core, so the two side by side, oversubscribed,
    finish sooner (docs/demo.md)."""
    cores = os.cpu_count() or 1
    return cores // 2 if device.type == "cpu" and cores >= 2 else None


class _Workflow(threading.Thread):
    """scripts/train.sh then scripts/sample.sh in the background, their output held back (in the logs, and
    printed when they are done), timed each: text only runs meanwhile."""

    def __init__(self, run):
        super().__init__(daemon=True)
        self.run_scripts, self.result, self.error = run, None, None

    def run(self):
        try:
            self.result = self.run_scripts()
        except BaseException as e:  # re-raised in the main thread by join_result
            self.error = e

    def join_result(self):
        self.join()
        if self.error is not None:
            raise self.error
        return self.result


def score_identity(scorer, renderer, person: DemoIdentity, folders: dict[str, Path], settings: Settings) -> dict:
    """{method: score_images(...) of its images} for one person (eval.world's scoring of a unit)."""
    import numpy as np
    from PIL import Image

    from eval.world import image_features, read_images, reference_renders, score_images

    refs = scorer.faces_of(reference_renders(renderer, person.identity, settings.refs))
    cond = scorer.faces_of([np.asarray(Image.open(p).convert("RGB")) for p in person.photos])
    p = person.person()
    out = {}
    for method, folder in folders.items():
        images = read_images(folder, range(len(p.prompts)), settings.n)
        out[method] = score_images(image_features(scorer, images, p, settings.n), p, settings.n, cond, refs)
    return out


def summarise(scores: dict[str, dict[str, dict]]) -> dict:
    """{method: {"per_identity": {name: {metric: value}}, "mean": {metric: mean over identities}}} of
    METRICS, each on its layout's prompts."""
    import numpy as np

    result = {}
    for method in METHODS:
        per = {name: {m: s[method]["means"][layout][m] for m, layout in METRICS.items()} for name, s in scores.items()}
        mean = {}
        for m in METRICS:
            vals = [v[m] for v in per.values() if v[m] is not None]
            mean[m] = float(np.mean(vals)) if vals else None
        result[method] = {"per_identity": per, "mean": mean}
    return result


def identity_above_text_only(summary: dict) -> dict[str, bool | None]:
    """{identity: whether the identity module's identity similarity over the images with a face is
    above text only's} (None where either is undefined: no face found, or no reference render had
    one). Over faces found, because an image without a face scores 0, which in this world is above
    the usual cosine of a wrong face: finding fewer faces would otherwise look like identity."""
    enc, text = (summary[m]["per_identity"] for m in ("encoder", "text_only"))
    out = {}
    for name in enc:
        a, b = enc[name]["identity_similarity_found"], text[name]["identity_similarity_found"]
        out[name] = None if a is None or b is None else bool(a > b)
    return out


def markdown_table(summary: dict) -> str:
    def cell(v):
        return "-" if v is None else f"{v:.3f}"

    names = list(next(iter(summary.values()))["per_identity"])
    lines = ["| identity | method | " + " | ".join(HEADERS[m] for m in METRICS) + " |",
             "|---|---|" + "---:|" * len(METRICS)]
    for name in [*names, "mean"]:
        for method, label in METHODS.items():
            row = summary[method]["mean"] if name == "mean" else summary[method]["per_identity"][name]
            lines.append(f"| {name} | {label} | " + " | ".join(cell(row[m]) for m in METRICS) + " |")
    return "\n".join(lines)


def run_demo(world: Path, data: Path, out: Path, settings: Settings = Settings(), progress: bool = True) -> dict:
    """The whole demo (see the module docstring); returns what scores.json holds."""
    import torch
    from PIL import Image

    from data_prep.faceworld.render import FaceWorld, folder_version
    from eval.world import generate_text_only, plain_pipeline
    from eval.world_scores import WorldScorer
    from models.atomic import write_json_atomic, write_text_atomic
    from models.device import fastest_dtype_name, pick_device, pick_dtype
    from models.errors import UserError
    from models.paths import output_dir
    from personalize.contact_sheet import save_contact_sheet
    from personalize.generate import GenerateOptions

    t0 = time.perf_counter()
    world, data, out = world.resolve(), data.resolve(), output_dir(out, "--out").resolve()
    people = demo_identities(data)
    side = read_side_file(data)
    check_world(world)
    version = folder_version(world)  # the renders the world's models were trained on
    if side.get("renderer") != version:
        raise UserError(f"{data} holds renders of {side.get('renderer')}, but the world's models in {world} were "
                        f"trained on {version}",
                        hint=f"render the demo folder for this world: python -m eval.demo --world {world} "
                             f"--make-data {data}")
    device = pick_device(settings.device)
    if settings.dtype == "fastest":  # bf16 where it is native (CUDA, AVX512-BF16 CPUs), else fp32
        settings = replace(settings, dtype=fastest_dtype_name(device))
    dtype = pick_dtype(settings.dtype, device)
    key = {"world": world_fingerprint(world), "data": side, "settings": settings.__dict__, "device": device.type}
    _fresh_start(out, key)
    seconds: dict[str, float] = {}

    def lap(stage: str, since: float) -> float:
        now = time.perf_counter()
        seconds[stage] = round(now - since, 2)
        return now

    # the competition workflow, by its own scripts: one <name>.json prompt file per identity
    for person in people:
        write_text_atomic(out / "prompts" / f"{person.name}.json", json.dumps(person.texts, indent=1))
    env = {**os.environ, "UNIDIFFUSER_WEIGHTS": str(world), "TRAIN_DATA": str(data),
           "IDENTITIES": str(out / "identities"), "EVAL_PROMPTS": str(out / "prompts"),
           "OUTPUTS": str(out / "samples"), "PY": sys.executable}
    quiet = [] if progress else ["--quiet"]
    sample_args = ["--steps", str(settings.steps), "--dtype", settings.dtype, "--cfg", str(settings.cfg),
                   "--seed", str(settings.seed), "--n", str(settings.n), "--device", settings.device, *quiet]
    threads = side_by_side_threads(device)

    stage_lines = [f"[demo] 1/5 train.py: {len(people)} identities ({', '.join(p.name for p in people)})",
                   f"[demo] 2/5 sample.py: {sum(len(p.prompts) for p in people)} prompts x {settings.n} images, "
                   f"{settings.steps} steps, {settings.dtype}",
                   "[demo] 3/5 text only: the same prompts through the plain pipeline (no identity)"]

    def workflow() -> str:  # side by side, its lines are printed before it starts and its output after it ends
        t = time.perf_counter()
        if not threads:
            print(stage_lines[0], flush=True)
        _run_script("train.sh", ["--device", settings.device, *quiet], env, out / "logs" / "train.log", "train.py",
                    echo=not threads)
        t = lap("train.py", t)
        if not threads:
            print(stage_lines[1], flush=True)
        text = _run_script("sample.sh", sample_args, env, out / "logs" / "sample.log", "sample.py", echo=not threads)
        lap("sample.py", t)
        return text

    def text_only():
        t = time.perf_counter()
        print(stage_lines[2], flush=True)
        pipe = plain_pipeline(world, device, dtype)
        opts = GenerateOptions(n_per_prompt=settings.n, steps=settings.steps, cfg=settings.cfg, seed=settings.seed)
        for person in people:
            if threads and scripts.error is not None:
                break  # the workflow failed: its error is raised below, without finishing this
            generate_text_only(pipe, person.texts, out / "text_only" / person.name, opts, world, progress=progress)
        lap("text only", t)

    if threads:
        print("\n".join(stage_lines[:2]), flush=True)
        print(f"[demo] steps 1-2 run beside step 3 (text only, {threads} thread(s)) on this CPU; their output is "
              f"shown when they are done (and in {out / 'logs'})", flush=True)
        scripts = _Workflow(workflow)
        scripts.start()
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            text_only()
        finally:
            torch.set_num_threads(before)
        text = scripts.join_result()
        print("\n".join(line for line in text.splitlines() if "\r" not in line), flush=True)  # no progress bars
    else:
        text = workflow()
        text_only()
    counts = [int(line.rsplit(":", 1)[1]) for line in text.splitlines()
              if line.startswith("finetuned parameters:")]
    t = time.perf_counter()

    print("[demo] 4/5 scores: identity similarity (evaluation recogniser), edit success, copy-paste", flush=True)
    from tqdm.auto import tqdm

    scorer = WorldScorer.from_world(world, device)
    renderer = FaceWorld(int(side["seed"]), int(side.get("size", 64)), device, version=version)
    scores = {}
    for person in tqdm(people, desc="scoring", unit="identity", disable=not progress):
        folders = {"encoder": out / "samples" / person.name, "text_only": out / "text_only" / person.name}
        scores[person.name] = score_identity(scorer, renderer, person, folders, settings)
    summary = summarise(scores)
    t = lap("scores", t)

    print("[demo] 5/5 contact sheets", flush=True)
    sheets = []
    for person in people:
        rows = [(prompt, [Image.open(out / "samples" / person.name / f"{i}-{k:03}.jpg") for k in range(settings.n)])
                for i, prompt in enumerate(person.texts)]
        sheets.append(save_contact_sheet(out / "sheets" / f"{person.name}.png",
                                         [Image.open(p) for p in person.photos], rows, title=person.name))
    lap("contact sheets", t)
    seconds["total"] = round(time.perf_counter() - t0, 2)

    table = markdown_table(summary)
    size = Image.open(out / "samples" / people[0].name / "0-000.jpg").size
    result = {
        "format": "faceid-demo", "version": 1, "world": str(world), "data": str(data),
        "renderer": {"seed": side["seed"], "split": side["split"], "version": side["renderer"],
                     "identities": {p.name: p.identity for p in people}},
        "settings": {**settings.__dict__, "device": str(device), "torch_dtype": str(dtype),
                     "torch_threads": torch.get_num_threads(),
                     "text_only_threads_beside_scripts": threads},
        "prompts": {p.name: p.prompts for p in people},
        "metrics": {m: f"mean over the {'edit' if layout == 'edit' else 'sim and edit'} prompts' images"
                    for m, layout in METRICS.items()},
        "scores": summary,
        "identity_above_text_only": identity_above_text_only(summary),
        "finetuned_parameters": int(sum(counts)) if counts else None,
        "image_size": list(size),
        "files": {"sheets": [str(s) for s in sheets], "samples": str(out / "samples"),
                  "text_only": str(out / "text_only"), "identities": str(out / "identities"),
                  "scores_json": str(out / "scores.json"), "scores_md": str(out / "scores.md")},
        "seconds": seconds,
        "per_prompt": scores,
    }
    write_json_atomic(out / "scores.json", result, indent=1)
    write_text_atomic(out / "scores.md", f"# Demo scores ({len(people)} identities of renderer seed {side['seed']}, "
                      f"{settings.n} images per prompt, {settings.steps} steps)\n\n{table}\n")
    return result


def print_summary(result: dict) -> None:
    files, secs = result["files"], result["seconds"]
    print()
    print(markdown_table(result["scores"]))
    print()
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in secs.items() if k != "total")
    print(f"demo done in {secs['total']:.1f} s ({stages})")
    print(f"images: {result['image_size'][0]} x {result['image_size'][1]}; finetuned parameters (sum of sample.py's "
          f"counts): {result['finetuned_parameters']}")
    print(f"contact sheets: {'  '.join(_short(Path(s)) for s in files['sheets'])}")
    print(f"scores: {_short(Path(files['scores_md']))}  {_short(Path(files['scores_json']))}")
    print(f"images: {_short(Path(files['samples']))}/<name>/ (identity module, sample.py's names), "
          f"{_short(Path(files['text_only']))}/<name>/ (text only)")


# -------------------------------------------------------------------------------------- the CLI
def build_parser() -> argparse.ArgumentParser:
    from models.errors import number

    p = argparse.ArgumentParser(prog="python -m eval.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default=None,
                   help=f"world weights folder (default ${DEMO_WORLD_ENV} or checkpoints/world)")
    p.add_argument("--data", type=Path, default=DEMO_DATA,
                   help="rendered identities: a folder `python -m data_prep.faceworld render` wrote "
                        "(default checkpoints/demo)")
    p.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    p.add_argument("--steps", type=number(int, 1, 1000), default=STEPS, help=f"sampling steps (default {STEPS})")
    p.add_argument("--dtype", default=DTYPE, help="sampling dtype: bf16, fp32, ..., or fastest (default: bf16 on "
                                                 "CUDA and on CPUs with native bfloat16, else fp32)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--make-data", type=Path, default=None, metavar="DIR",
                   help="instead: render the demo folder into DIR (checkpoints/demo is made so) and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.make_data:
        side = make_demo_data(args.make_data, world=args.world, progress=not args.no_progress)
        print(f"{args.make_data}: {', '.join(p['name'] for p in side['people'])} (renderer seed {side['seed']}, "
              f"split {side['split']})")
        return 0
    from models.check_weights import MAIN_JOB, presence
    from models.paths import weights_dir

    world = demo_world(args.world)
    if presence(MAIN_JOB) == "none":
        print(no_weights_note(weights_dir(), world), flush=True)
    else:
        print(f"running the demo on the embedded world ({_short(world)}); the main job uses the weights in "
              f"{_short(weights_dir())}/", flush=True)
    result = run_demo(world, args.data, args.out, Settings(steps=args.steps, dtype=args.dtype, device=args.device),
                      progress=not args.no_progress)
    print_summary(result)
    return 0


if __name__ == "__main__":
    # Before torch starts OpenMP, here and in the scripts' processes: spinning threads lose 5x on a 2-core
    # machine when another process holds a core (docs/demo.md, "Time"). A setting of the user's is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from models.errors import run_cli

    sys.exit(run_cli(main))
