"""python -m personalize.app: a web page for personalising, served on localhost (Gradio).

    python -m personalize.app                        # http://127.0.0.1:7860
    python -m personalize.app --port 8000 --weights DIR --device cuda

Drop 1 to 10 photos of one person (or pick a demo identity) and see which faces were used or skipped
and why; type prompts (one per line) or load a prompt file; set the identity scale, guidance, steps,
seed and number of images; get a gallery, and download the images, the identity record and a contact
sheet. Nothing here is a second pipeline: the photos go through train.py's functions
(personalize.extract.face_setup / personalize_photos, the record saved and read back as sample.py
reads it) and the images through sample.py's (personalize.generate.load_pipeline /
identity_conditioning / generate_prompts); the sheet is personalize.contact_sheet's.

Which weights: --weights DIR, else $UNIDIFFUSER_WEIGHTS; else checkpoints/ when every real weight is
there; else, when none is, the identity world's demo (checkpoints/world, or $UNIDIFFUSER_DEMO_WORLD:
only rendered faces are recognised; the page offers demo identities). A folder with a world-CLIP
(world_clip/) is run as the demo world. Some real weights but not all stop the command with
what is missing: it never falls back to the demo silently. The page says which world it runs.

Bad input is shown on the page with the commands' messages (no usable face, an unreadable file, a
bad prompt file; a prompt longer than the text context is a warning), never a traceback. One queue:
one model call at a time, whoever asks. Uploads are limited (MAX_PHOTOS files of MAX_FILE_MB each),
and every file the page receives or writes lives in one temporary folder, removed when the server
stops (a session's part when its tab closes).

The page talks to nothing but the browser on localhost: Gradio's analytics and version check are off
(GRADIO_ANALYTICS_ENABLED=False before gradio is imported), the theme uses the system's fonts, and
there is no share link, run history, monitoring or MCP server.
"""

# No `from __future__ import annotations`: Gradio reads the handlers' gr.Request / gr.Progress annotations.
import argparse
import contextlib
import functools
import html
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from models.check_weights import MAIN_JOB, demo_world, presence
from models.errors import UserError, number
from models.paths import ENV_VAR, KNOWN_WEIGHTS, REPO_ROOT, WeightsError, find_weights, missing_weights

# Before gradio is imported anywhere (it is imported lazily, in build_page): no analytics, no version check.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

logger = logging.getLogger(__name__)

MAX_PHOTOS = 10
MAX_FILE_MB = 20
MAX_PROMPTS = 50
SYSTEM_FONTS = ("system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif")
MONO_FONTS = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace")
THUMB = 192  # side of the face thumbnails
CSS = "#faces .grid-wrap, #gallery .grid-wrap { min-height: 140px; }"  # galleries as tall as their images


# ----------------------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class Weights:
    root: Path
    demo: bool  # the identity world: rendered faces only
    why: str


def _short(path: Path) -> str:
    """`path` relative to the repository when inside it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def is_world(root: Path) -> bool:
    """Whether a weights folder is the identity world's (its text encoder is the world-CLIP)."""
    return (Path(root) / "world_clip").is_dir()


def _absent(root: Path) -> list[str]:
    return [name for name in MAIN_JOB if missing_weights([name], root)]


def pick_weights(explicit: str | None = None, checkpoints: str | Path | None = None) -> Weights:
    """The weights folder the page runs (see the module docstring). Raises WeightsError.

    Without --weights or $UNIDIFFUSER_WEIGHTS, the main job's rule (scripts/run.sh, eval.demo): the real
    weights when all are found, the demo world when none is, else an error naming what is missing.
    """
    checkpoints = Path(checkpoints) if checkpoints else REPO_ROOT / "checkpoints"
    world = demo_world(checkpoints=checkpoints)
    if explicit:
        root, why = Path(explicit).expanduser(), "given with --weights"
    elif os.environ.get(ENV_VAR):
        root, why = Path(os.environ[ENV_VAR]).expanduser(), f"from ${ENV_VAR}"
    else:
        state = presence(MAIN_JOB, checkpoints)
        if state == "all":
            root, why = checkpoints, f"every real weight found in {_short(checkpoints)}"
        elif state == "some":
            names = ", ".join(KNOWN_WEIGHTS[n][1] for n in _absent(checkpoints))
            raise WeightsError(f"{checkpoints} holds some real weights but not all: missing {names}",
                               hint="python -m models.check_weights says where to get each; or run the demo "
                                    f"world with --weights {world}")
        else:
            root, why = world, f"no real weights in {_short(checkpoints)}"
    if not root.is_dir():
        raise WeightsError(f"weights folder {root} ({why}) does not exist")
    absent = _absent(root)
    if absent and is_world(root):
        names = ", ".join(KNOWN_WEIGHTS[n][1] for n in absent)
        raise WeightsError(f"the identity world in {root} ({why}) is not complete: missing {names}",
                           hint="its backbone and identity module are trained by scripts/world.sh "
                                "(checkpoints/world/README.md)")
    if absent:
        first = missing_weights([absent[0]], root)[0]
        more = f" (and {len(absent) - 1} more: {', '.join(absent[1:])})" if len(absent) > 1 else ""
        raise WeightsError(f"{root} ({why}) cannot run the page: {first}{more}",
                           hint="python -m models.check_weights lists every missing file")
    return Weights(root=root, demo=is_world(root), why=why)


# --------------------------------------------------------------------------------- demo identities
@dataclass(frozen=True)
class DemoIdentity:
    name: str
    photos: Path
    prompts: Path | None


def demo_identities(folder: str | Path) -> list[DemoIdentity]:
    """The photo folders directly inside `folder` (as data_prep.faceworld render writes them), each with its
    prompt file `eval_prompts/<name>.json` or `<name>.json` when there is one."""
    from encoder.photos import scan_folder

    folder = Path(folder)
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not scan_folder(sub)[0]:
            continue
        prompts = next((p for p in (folder / "eval_prompts" / f"{sub.name}.json", folder / f"{sub.name}.json")
                        if p.is_file()), None)
        found.append(DemoIdentity(sub.name, sub, prompts))
    return found


def render_demo(out: Path, world: Path) -> list[DemoIdentity]:
    """Demo identities drawn by the renderer (test split, the demo's seed) into `out`, in the renderer version the
    models of `world` were trained on."""
    from data_prep.faceworld import DEMO_IDENTITIES, DEMO_PHOTOS, DEMO_SEED
    from data_prep.faceworld.folders import write_folders
    from data_prep.faceworld.render import folder_version

    write_folders(out, seed=DEMO_SEED, identities=DEMO_IDENTITIES, photos=DEMO_PHOTOS, progress=False,
                  version=folder_version(world))
    return demo_identities(out)


# ------------------------------------------------------------------------------------ the studio
class _Relay(logging.Handler):
    """Hands each warning logged while it is attached to `fn` (the page shows it)."""

    def __init__(self, fn: Callable[[str], object]):
        super().__init__(logging.WARNING)
        self.fn = fn

    def emit(self, record: logging.LogRecord) -> None:
        self.fn(record.getMessage())


@contextlib.contextmanager
def relay_warnings(name: str, fn: Callable[[str], object]) -> Iterator[None]:
    log = logging.getLogger(name)
    handler = _Relay(fn)
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)


@contextlib.contextmanager
def named_paths(names: dict[str | Path, str]) -> Iterator[None]:
    """UserErrors raised inside name the page's temporary paths as the user knows them."""
    try:
        yield
    except UserError as e:
        message, hint = str(e), e.hint
        for path, name in sorted(names.items(), key=lambda kv: -len(str(kv[0]))):
            message = message.replace(str(path), name)
            hint = hint.replace(str(path), name) if hint else hint
        raise UserError(message, hint=hint) from e


def checked(value, what: str, kind: type, low: float | None = None, high: float | None = None):
    """A number from the page checked as the commands check theirs (models.errors.number)."""
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        return number(kind, low, high)(str(value))
    except argparse.ArgumentTypeError as e:
        raise UserError(f"{what}: {e}") from None


def parse_prompts(text: str | None) -> list[str]:
    prompts = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not prompts:
        raise UserError("there is no prompt to generate", hint="type prompts, one per line, or load a prompt file")
    if len(prompts) > MAX_PROMPTS:
        raise UserError(f"{len(prompts)} prompts: the page generates at most {MAX_PROMPTS} at a time",
                        hint="split the list, or run sample.py on a prompt file for longer ones")
    return prompts


def _photo_image(path: str | Path):
    from PIL import Image

    from encoder.photos import load_rgb

    return Image.fromarray(load_rgb(path))


def face_thumbnails(record) -> list[tuple[object, str]]:
    """(thumbnail, caption) per photo: the used ones with their face box, the skipped ones in grey (or a
    tile naming the file when it is no image at all), each caption saying why."""
    from PIL import Image, ImageDraw, ImageOps

    from encoder.photos import PhotoError

    def fit(image):
        scale = THUMB / max(image.size)
        resample = Image.NEAREST if scale >= 1 else Image.LANCZOS
        return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                            resample), scale

    items = []
    for p in record.photos:
        thumb, scale = fit(_photo_image(p.file))
        draw = ImageDraw.Draw(thumb)
        draw.rectangle([v * scale for v in p.box], outline=(0, 220, 60), width=max(2, THUMB // 64))
        w, h = p.box[2] - p.box[0], p.box[3] - p.box[1]
        items.append((thumb, f"{Path(p.file).name}: used (score {p.det_score:.2f}, face {w:.0f}x{h:.0f}px)"))
    for s in record.skipped:
        try:
            thumb = ImageOps.grayscale(fit(_photo_image(s["file"]))[0]).convert("RGB")
        except PhotoError:
            thumb = Image.new("RGB", (THUMB, THUMB), (225, 225, 225))
            ImageDraw.Draw(thumb).text((8, THUMB // 2 - 6), Path(s["file"]).name[:28], fill=(60, 60, 60))
        items.append((thumb, f"{Path(s['file']).name}: skipped ({s['reason']})"))
    return items


def _zip(path: Path, files: dict[str, Path | str]) -> Path:
    """A zip of {name inside: file path or text}."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, item in files.items():
            if isinstance(item, Path):
                z.write(item, name)
            else:
                z.writestr(name, item)
    return path


class Studio:
    """The models, loaded once, and the page's two jobs (no Gradio here): photos -> identity record
    (train.py's functions) and record + prompts -> images (sample.py's), plus the downloads."""

    def __init__(self, weights: Weights, *, device: str = "auto", dtype: str = "auto",
                 log: Callable[[str], object] = print):
        from models.device import pick_device, pick_dtype
        from personalize.extract import face_setup
        from personalize.generate import load_pipeline

        self.weights = weights
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.encoder = find_weights("identity", None, weights.root)
        self.setup = face_setup(encoder=str(self.encoder), weights=str(weights.root), device=self.device,
                                announce=log)
        for warning in self.setup.warnings:
            log(f"warning: {warning}")
        self.pipe = load_pipeline(weights.root, self.device, self.dtype)
        log(f"weights: {weights.root} ({weights.why}); identity module {self.encoder}; {self.device}, "
            f"{str(self.dtype).removeprefix('torch.')}; images {self.pipe.image_size}x{self.pipe.image_size}")

    def personalize(self, photo_dir: Path, record_dir: Path, *, progress: bool = True):
        """train.py -d photo_dir -o record_dir (no refinement); returns the record."""
        from personalize.extract import personalize_photos

        record = personalize_photos(photo_dir, self.setup, progress=progress)
        record.save(record_dir)
        return record

    def generate(self, record_dir: Path, prompts: list[str], opts, out_dir: Path, *,
                 warn: Callable[[str], object] = print, progress: bool = True) -> list[list[Path]]:
        """sample.py --restore_path record_dir into out_dir; the image paths of each prompt. The warnings
        the command prints (a prompt cut to the text context, a face-model note) go to `warn`."""
        from personalize.face_model import check_record, module_face_model
        from personalize.generate import generate_prompts, identity_conditioning, image_paths
        from personalize.record import IdentityRecord

        record = IdentityRecord.load(record_dir)
        for warning in check_record(module_face_model(self.encoder), record.face_model, encoder=self.encoder,
                                    record_dir=record_dir):
            warn(warning)
        with relay_warnings("models.pipeline", warn):
            self.pipe.encode_text(prompts)  # warns now about prompts cut to the context (features are kept)
        net, tokens, _ = identity_conditioning(self.pipe, self.encoder, record)
        generate_prompts(self.pipe, net, tokens, prompts, out_dir, opts, progress=progress, step_progress=progress)
        return [image_paths(out_dir, i, opts.n_per_prompt) for i in range(len(prompts))]

    def downloads(self, record_dir: Path, prompts: list[str], images: list[list[Path]], out_dir: Path,
                  title: str) -> list[Path]:
        """images.zip (the images as sample.py names them, and prompts.json), identity.zip (the record, as
        train.py writes it) and contact_sheet.png, in out_dir."""
        from PIL import Image

        from personalize.contact_sheet import save_contact_sheet
        from personalize.record import IdentityRecord

        record = IdentityRecord.load(record_dir)
        refs = [_photo_image(p.file) for p in record.photos]
        rows = []
        for prompt, paths in zip(prompts, images):
            row = []
            for path in paths:
                with Image.open(path) as im:
                    row.append(im.convert("RGB"))
            rows.append((prompt, row))
        sheet = save_contact_sheet(out_dir / "contact_sheet.png", refs, rows, title=title)
        listing = json.dumps(prompts, indent=1, ensure_ascii=False) + "\n"
        images_zip = _zip(out_dir / "images.zip", {"prompts.json": listing,
                                                   **{p.name: p for paths in images for p in paths}})
        record_zip = _zip(out_dir / "identity.zip", {p.name: p for p in sorted(record_dir.iterdir()) if p.is_file()})
        return [images_zip, record_zip, sheet]


# -------------------------------------------------------------------------------------- the page
def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).strip("._") or "photo"


def copy_uploads(files: list[str], folder: Path) -> Path:
    """The uploaded files into `folder` under their own names (made safe and unique); checks the count."""
    if len(files) > MAX_PHOTOS:
        raise UserError(f"{len(files)} files were dropped: the page takes at most {MAX_PHOTOS} photos of one person",
                        hint="keep the clearest, front-facing ones (3 to 10 is typical)")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for f in files:
        name = _safe_name(f)
        target, k = folder / name, 1
        while target.exists():
            target, k = folder / f"{Path(name).stem}-{k}{Path(name).suffix}", k + 1
        shutil.copyfile(f, target)
    return folder


def banner(studio: Studio) -> str:
    w = studio.weights
    size = studio.pipe.image_size
    if w.demo:
        return (f"**Demo world**: this page runs the *identity world*, a miniature of the whole method trained "
                f"here from scratch (weights `{_short(w.root)}`: {w.why}; {size}x{size} images). "
                "**Only rendered faces are recognised**: real photos find no face. Pick a demo identity, or drop "
                "renders made by `python -m data_prep.faceworld render`. With the real weights in `checkpoints/` "
                "(checkpoints/README.md) the page runs them instead.")
    return (f"**Real weights** in `{_short(w.root)}` ({w.why}): UniDiffuser v1 and the identity module "
            f"`{_short(studio.encoder)}`, on {studio.device}; {size}x{size} images.")


def page_theme():
    """Gradio's default theme on the system's fonts: nothing to fetch."""
    import gradio as gr

    return gr.themes.Default(font=list(SYSTEM_FONTS), font_mono=list(MONO_FONTS))


def build_page(studio: Studio, workdir: Path, demos: list[DemoIdentity]):
    """The Gradio page (a gr.Blocks) over `studio`; per-session files under workdir/<session>/."""
    import gradio as gr

    from encoder.config import ID_START_MIN
    from encoder.identity import sampling_defaults
    from personalize.extract import summary_rows
    from personalize.generate import GenerateOptions
    from personalize.prompts import load_prompts

    demo_by_name = {d.name: d for d in demos}
    bars = [gr.Progress(track_tqdm=True) for _ in range(3)]  # the progress bars of the three model calls

    def on_page(fn):
        """User errors shown on the page with the commands' wording; anything else as a short line (the
        traceback goes to the server's console, never to the page)."""
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except UserError as e:
                text = html.escape(str(e)) + (f"<br>hint: {html.escape(e.hint)}" if e.hint else "")
                raise gr.Error(text, duration=None, print_exception=False) from None
            except Exception as e:  # a bug: say so in one line
                logger.exception("unexpected error in %s", fn.__name__)
                raise gr.Error(f"unexpected error ({html.escape(type(e).__name__)}); the server's console has "
                               "the details: please report it", duration=None, print_exception=False) from None
        return wrapped

    def session_dir(request: gr.Request) -> Path:
        return workdir / _safe_name(request.session_hash or "local")

    def warn(message: str) -> None:
        gr.Warning(html.escape(message), duration=20)

    def identity_view(record, record_dir: Path, name: str):
        used, skipped = len(record.photos), len(record.skipped)
        status = (f"**{used} photo{'s' * (used != 1)} used, {skipped} skipped**; class word "
                  f"'{record.class_word}' ({record.class_word_source}). Identity record ready: type prompts and "
                  "press Generate.")
        state = {"record": str(record_dir), "name": name}
        return state, face_thumbnails(record), [list(r) for r in summary_rows(record)], status

    def cleared():
        return None, None, None, "", None, None, ""

    def personalize(photo_dir: Path, name: str, request: gr.Request, shown: str):
        hint = " (this page runs the demo world: only rendered faces are recognised)" if studio.weights.demo else ""
        record_dir = session_dir(request) / "identity"
        shutil.rmtree(record_dir, ignore_errors=True)
        with named_paths({photo_dir: shown}):
            try:
                record = studio.personalize(photo_dir, record_dir)
            except UserError as e:
                if hint and "no usable face" in str(e):
                    raise UserError(str(e) + hint, hint=e.hint) from e
                raise
        return identity_view(record, record_dir, name)

    @on_page
    def on_photos(files, request: gr.Request, progress=bars[0]):
        if not files:
            return cleared()[:4]
        folder = copy_uploads(files if isinstance(files, list) else [files], session_dir(request) / "photos" / "photos")
        return personalize(folder, "photos", request, "the uploaded photos")

    @on_page
    def on_demo(name, request: gr.Request, progress=bars[1]):
        if not name:
            return (*cleared()[:4], gr.update())
        demo = demo_by_name[name]
        view = personalize(demo.photos, name, request, f"the demo identity {name}")
        prompts = gr.update()
        if demo.prompts is not None:
            prompts = "\n".join(load_prompts(demo.prompts))
        return (*view, prompts)

    @on_page
    def on_prompt_file(path):
        if not path:
            return gr.update()
        with named_paths({path: Path(path).name}):
            return "\n".join(load_prompts(path))

    @on_page
    def on_generate(state, text, id_scale, id_start, cfg, steps, n, seed, request: gr.Request,
                    progress=bars[2]):
        if not state:
            raise UserError("there is no identity yet",
                            hint="drop photos of one person" + (" or pick a demo identity" if demos else "") +
                                 ", then generate")
        prompts = parse_prompts(text)
        opts = GenerateOptions(n_per_prompt=checked(n, "images per prompt", int, 1, 64),
                               steps=checked(steps, "steps", int, 1, 1000),
                               cfg=checked(cfg, "guidance", float, 0, 100),
                               id_scale=checked(id_scale, "identity scale", float, 0, 10),
                               id_start=checked(id_start, "identity start", float, ID_START_MIN, 1),
                               seed=checked(seed, "seed", int), resume=False)
        run = session_dir(request) / "run"
        shutil.rmtree(run, ignore_errors=True)
        record_dir = Path(state["record"])
        images = studio.generate(record_dir, prompts, opts, run / "images", warn=warn)
        files = studio.downloads(record_dir, prompts, images, run, title=state["name"])
        gallery = [(str(p), f"{i}: {prompt}" + (f" ({k + 1}/{opts.n_per_prompt})" if opts.n_per_prompt > 1 else ""))
                   for i, (prompt, paths) in enumerate(zip(prompts, images)) for k, p in enumerate(paths)]
        command = (f"python sample.py --restore_path identity --prompt_path prompts.json --output_path out "
                   f"--seed {opts.seed} --steps {opts.steps} --cfg {opts.cfg:g} --id-scale {opts.id_scale:g} "
                   f"--id-start {opts.id_start:g} --n {opts.n_per_prompt}")
        status = (f"{len(prompts)} prompt{'s' * (len(prompts) != 1)} x {opts.n_per_prompt} images. The same with "
                  f"the command line, from identity.zip and images.zip's prompts.json: `{command}`")
        return gallery, [str(f) for f in files], status

    def on_unload(request: gr.Request):
        shutil.rmtree(session_dir(request), ignore_errors=True)

    with gr.Blocks(title="UniDiffuser FaceID", analytics_enabled=False, delete_cache=(1800, 3600)) as page:
        gr.Markdown("# UniDiffuser FaceID: personalise with a few photos, no fine-tuning")
        gr.Markdown(banner(studio), elem_id="world")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=2):
                gr.Markdown("### 1. Photos of one person")
                photos = gr.File(label=f"photos: 1 to {MAX_PHOTOS} (jpg, png, webp, ...; up to {MAX_FILE_MB} MB "
                                       "each)", file_count="multiple", type="filepath", elem_id="photos")
                demo_pick = gr.Dropdown(choices=list(demo_by_name), value=None, label="or a demo identity",
                                        visible=bool(demos), elem_id="demo-identity")
                faces = gr.Gallery(label="faces: the green box is the face used; skipped photos are grey",
                                   columns=4, fit_columns=False, preview=False, object_fit="contain", interactive=False,
                                   buttons=["fullscreen"], elem_id="faces")
                table = gr.Dataframe(headers=["photo", "status", "detail"], interactive=False, wrap=True,
                                     elem_id="face-table")
                status = gr.Markdown(elem_id="identity-status")
            with gr.Column(scale=3):
                gr.Markdown("### 2. Prompts")
                prompts = gr.Textbox(label="prompts, one per line", lines=4, elem_id="prompts",
                                     placeholder="a photo of a girl\na girl wearing a red hat, on the beach")
                prompt_file = gr.File(label="or load a prompt file (a JSON list of prompts, as sample.py reads)",
                                      file_types=[".json"], type="filepath", elem_id="prompt-file")
                with gr.Row():
                    id_scale = gr.Slider(0, 3, value=1.0, step=0.05, label="identity scale (--id-scale)",
                                         elem_id="id-scale")
                    id_start = gr.Slider(0.05, 1, value=sampling_defaults(studio.encoder)["id_start"], step=0.05,
                                         label="identity from noise level (--id-start; 1: every step)",
                                         elem_id="id-start")
                    cfg = gr.Slider(0, 20, value=7.0, step=0.5, label="guidance (--cfg)", elem_id="cfg")
                with gr.Row():
                    steps = gr.Slider(1, 100, value=30, step=1, label="steps (--steps)", elem_id="steps")
                    n = gr.Slider(1, 8, value=3, step=1, label="images per prompt (--n)", elem_id="n")
                    seed = gr.Number(value=42, precision=0, label="seed (--seed)", elem_id="seed")
                go = gr.Button("Generate", variant="primary", elem_id="generate")
                gallery = gr.Gallery(label="images", columns=4, fit_columns=False, preview=False, object_fit="contain",
                                     buttons=["download", "fullscreen"],
                                     interactive=False, elem_id="gallery")
                downloads = gr.File(label="downloads: the images, the identity record, the contact sheet",
                                    file_count="multiple", interactive=False, elem_id="downloads")
                run_status = gr.Markdown(elem_id="run-status")

        identity_outputs = [state, faces, table, status]
        reset = [*identity_outputs, gallery, downloads, run_status]  # a new identity: its images are not these
        model = dict(concurrency_id="model", concurrency_limit=1)  # one model call at a time, page-wide
        # change: files added, one removed or all cleared (dropping more files adds them to the list)
        photos.change(cleared, outputs=reset, queue=False).then(
            on_photos, inputs=[photos], outputs=identity_outputs, **model)
        demo_pick.input(cleared, outputs=reset, queue=False).then(
            on_demo, inputs=[demo_pick], outputs=[*identity_outputs, prompts], **model)
        prompt_file.upload(on_prompt_file, inputs=[prompt_file], outputs=[prompts])
        go.click(on_generate, inputs=[state, prompts, id_scale, id_start, cfg, steps, n, seed],
                 outputs=[gallery, downloads, run_status], **model)
        page.unload(on_unload)
    return page


# -------------------------------------------------------------------------------------- command
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None,
                   help=f"weights folder (default: ${ENV_VAR}, else checkpoints/ with the real weights, else the "
                        "identity world's demo in checkpoints/world)")
    p.add_argument("--demo", default=None,
                   help="folder of demo identities (photo folders + eval_prompts/), offered in the demo world "
                        "(default: checkpoints/demo when there, else a few rendered at start)")
    p.add_argument("--port", type=number(int, 1, 65535), default=7860, help="port on 127.0.0.1 (default 7860)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    p.add_argument("--dtype", default="auto",
                   help="bf16, fp16, fp32, auto (bf16 on CUDA, fp32 on CPU) or fastest (bf16 also on CPUs with "
                        "native bfloat16, where it is faster than fp32)")
    return p


def _stop(signum, frame):  # SIGTERM: leave as Ctrl-C does, so the temporary folder is removed
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    weights = pick_weights(args.weights)  # before anything heavy
    workdir = Path(tempfile.mkdtemp(prefix="faceid-app-"))
    os.environ["GRADIO_TEMP_DIR"] = str(workdir / "uploads")  # Gradio's upload cache: inside, removed with it
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        demos: list[DemoIdentity] = []
        if weights.demo:
            if args.demo:
                demos = demo_identities(args.demo)
            elif (REPO_ROOT / "checkpoints" / "demo").is_dir():
                demos = demo_identities(REPO_ROOT / "checkpoints" / "demo")
            else:
                demos = render_demo(workdir / "demo", weights.root)
        studio = Studio(weights, device=args.device, dtype=args.dtype)
        page = build_page(studio, workdir / "sessions", demos)
        page.queue(default_concurrency_limit=1, max_size=32)
        try:
            page.launch(server_name="127.0.0.1", server_port=args.port, share=False, inbrowser=False,
                        max_file_size=f"{MAX_FILE_MB}mb", footer_links=[], run_history=False,
                        enable_monitoring=False, mcp_server=False, ssr_mode=False, pwa=False, show_error=False,
                        theme=page_theme(), css=CSS)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM before Gradio's own wait took it: a server's normal end
            page.close()
        except OSError as e:
            raise UserError(f"cannot serve on 127.0.0.1:{args.port} ({e})",
                            hint="pass another --port, or stop what uses this one") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    from models.errors import run_cli

    sys.exit(run_cli(main))
