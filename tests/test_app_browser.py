"""The web page (`python -m personalize.app`) in a real browser: Debian's Chromium, headless, driven by
Playwright (the system browser through executable_path; Playwright downloads none), against the app
served on a free localhost port with the demo world.

The server runs as users start it, in a subprocess, under an audit hook that logs every connection or
name lookup beyond localhost; the browser aborts and logs every request beyond localhost. Either log
not empty fails. Under CI (CI=true) a missing Chromium or Playwright fails instead of skipping.

Weights: $APP_TEST_WEIGHTS when set; else checkpoints/world when its backbone and identity module are
there (the demo world users get); else a stand-in world made here (tests/tiny_world.py's random
backbone, the committed world face pack, a random identity module with opened gates).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI") == "true"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
STEPS = "2"  # sampling steps in the test: the page is under test, not the images

# The server's audit hook: every socket connection or name lookup beyond localhost goes to $APP_GUARD_LOG.
GUARD = r"""
import os, runpy, sys

def local(host):
    host = host.decode() if isinstance(host, bytes) else str(host)
    return host in ("", "localhost", "::1", "None") or host.startswith("127.")

def hook(event, args):
    if event in ("socket.connect", "socket.sendto") and isinstance(args[1], tuple) and not local(args[1][0]):
        outside = f"{event} {args[1]}"
    elif event == "socket.getaddrinfo" and not local(args[0]):
        outside = f"{event} {args[0]}"
    else:
        return
    with open(os.environ["APP_GUARD_LOG"], "a") as log:
        log.write(outside + "\n")

sys.addaudithook(hook)
sys.argv = ["personalize.app", *sys.argv[1:]]
runpy.run_module("personalize.app", run_name="__main__", alter_sys=True)
"""


def _missing(what: str, how: str):
    message = f"{what} is not installed ({how}); the browser test needs it"
    if IN_CI:
        pytest.fail(message + " - CI installs it (.ci/run), so this is a broken set-up")
    pytest.skip(message)


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        _missing("Chromium", "apt-get install -y chromium")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from models.check_weights import MAIN_JOB as NEEDED
    from models.paths import missing_weights

    if os.environ.get("APP_TEST_WEIGHTS"):
        return Path(os.environ["APP_TEST_WEIGHTS"])
    committed = ROOT / "checkpoints" / "world"
    if not missing_weights(NEEDED, committed):
        return committed
    import torch

    from encoder.config import IdentityConfig
    from encoder.identity import IdentityModule
    from models.uvit import UViTConfig
    from tests.tiny_world import make_tiny_world

    root = make_tiny_world(tmp_path_factory.mktemp("world") / "world")
    shutil.copytree(committed / "faces", root / "faces")
    uvit = UViTConfig.from_dict(json.loads((root / "model_configs.json").read_text())["uvit"])
    module = IdentityModule(IdentityConfig.for_uvit(uvit, num_tokens=2, hidden_dim=16))
    with torch.no_grad():
        module.gate.fill_(0.5)
    module.save(root / "faceid_encoder")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Renders of one test identity (the demo folder too), and a folder of files with no face."""
    from PIL import Image

    from data_prep.faceworld.folders import write_folders

    tmp = tmp_path_factory.mktemp("photos")
    side = write_folders(tmp / "demo", seed=777, identities=1, photos=3, progress=False)
    name = side["people"][0]["name"]
    empty = tmp / "no_faces"
    empty.mkdir()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(empty / "wall.png")
    (empty / "notes.jpg").write_text("not an image")
    return {"demo": tmp / "demo", "person": tmp / "demo" / name, "name": name, "no_faces": empty}


class Server:
    """`python -m personalize.app` on a free port, its temporary files under its own TMPDIR."""

    def __init__(self, world: Path, demo: Path, tmp: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.tmpdir = tmp / "server_tmp"
        self.tmpdir.mkdir()
        self.guard = tmp / "outside.log"
        self.log = tmp / "server.log"
        env = {**os.environ, "TMPDIR": str(self.tmpdir), "APP_GUARD_LOG": str(self.guard), "PYTHONUNBUFFERED": "1"}
        env.pop("UNIDIFFUSER_WEIGHTS", None)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", GUARD, "--weights", str(world), "--demo", str(demo), "--port", str(self.port),
                 "--device", "cpu"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the app exited ({self.proc.returncode}) before serving:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url, timeout=5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"the app did not answer on {self.url} in 240 s:\n{self.output()}") from None
                time.sleep(0.5)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def outside(self) -> list[str]:
        return self.guard.read_text().splitlines() if self.guard.exists() else []

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(world, photos, tmp_path_factory):
    srv = Server(world, photos["demo"], tmp_path_factory.mktemp("server"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    chromium = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright", "bash scripts/setup.sh installs it")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    """A fresh page (a new session) on the app; requests beyond localhost are aborted and fail the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    outside = []

    def local_only(route):
        if urlparse(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", local_only)
    pg = context.new_page()
    pg.on("request", lambda r: outside.append(r.url) if r.url.startswith(("http:", "https:", "ws:", "wss:"))
          and urlparse(r.url).hostname not in LOCAL_HOSTS else None)
    pg.set_default_timeout(120_000)
    pg.goto(server.url)
    pg.wait_for_selector("#generate")
    yield pg
    context.close()
    assert not outside, f"the page asked for something beyond localhost: {outside}"


def _toasts(pg) -> str:
    return "\n".join(pg.locator(".toast-body").all_inner_texts())


def _set_slider(pg, elem_id: str, value: str) -> None:
    box = pg.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.press("Enter")


def test_upload_generate_and_download(page, photos, world, tmp_path):
    from encoder.identity import sampling_defaults

    pg = page
    banner = pg.inner_text("#world")
    assert "Demo world" in banner and "Only rendered faces are recognised" in banner
    assert pg.locator("#demo-identity").is_visible()

    shots = sorted(photos["person"].glob("*.jpg"))
    pg.locator("#photos input[type=file]").set_input_files([str(p) for p in shots])
    pg.wait_for_selector(f"#identity-status :text('{len(shots)} photos used')")
    assert pg.locator("#faces img").count() == len(shots)
    assert pg.locator("#face-table").inner_text().count("used") == len(shots)

    prompt_file = photos["demo"] / "eval_prompts" / f"{photos['name']}_sim.json"  # loading a prompt file
    pg.locator("#prompt-file input[type=file]").set_input_files(str(prompt_file))
    first = json.loads(prompt_file.read_text())[0]
    pg.wait_for_function("t => document.querySelector('#prompts textarea').value.startsWith(t)", arg=first)
    pg.fill("#prompts textarea", first)  # one prompt
    _set_slider(pg, "steps", STEPS)
    pg.click("#generate")
    pg.wait_for_selector("#downloads a[download='images.zip']")
    assert pg.locator("#gallery img").count() == 3
    assert "Error" not in _toasts(pg)
    start = sampling_defaults(Path(world) / "faceid_encoder")["id_start"]  # the slider starts at the module's default
    assert f"--id-start {start:g} " in pg.locator("#run-status").inner_text()

    with pg.expect_download() as info:
        pg.click("#downloads a[download='images.zip']")
    zipped = tmp_path / "images.zip"
    info.value.save_as(zipped)
    with zipfile.ZipFile(zipped) as z:
        assert sorted(z.namelist()) == ["0-000.jpg", "0-001.jpg", "0-002.jpg", "prompts.json"]
        assert json.loads(z.read("prompts.json")) == [first]
    with pg.expect_download() as info:
        pg.click("#downloads a[download='identity.zip']")
    info.value.save_as(tmp_path / "identity.zip")
    with zipfile.ZipFile(tmp_path / "identity.zip") as z:
        assert sorted(z.namelist()) == ["identity.json", "identity.safetensors"]
        assert len(json.loads(z.read("identity.json"))["photos"]) == len(shots)
    assert pg.locator("#downloads a[download='contact_sheet.png']").count() == 1


def test_bad_input_is_shown_on_the_page(page, photos):
    pg = page
    pg.locator("#photos input[type=file]").set_input_files([str(p) for p in sorted(photos["no_faces"].iterdir())])
    pg.wait_for_selector(".toast-body:has-text('no usable face photo')")
    text = _toasts(pg)
    assert "no usable face photo in the uploaded photos" in text
    assert "notes.jpg: not an image file" in text and "wall.png: no face" in text
    assert "only rendered faces are recognised" in text
    assert "Traceback" not in pg.inner_text("body")
    assert pg.locator("#faces img").count() == 0

    pg.click("#generate")  # nothing to generate from: said so
    pg.wait_for_selector(".toast-body:has-text('there is no identity yet')")

    pg.reload()  # a new session: a prompt longer than the text context is a warning, the images still come
    pg.wait_for_selector("#generate")
    pg.locator("#photos input[type=file]").set_input_files([str(p) for p in sorted(photos["person"].glob("*.jpg"))])
    pg.wait_for_selector("#identity-status :text('photos used')")
    pg.fill("#prompts textarea", "a photo of a girl wearing a red hat " * 6)
    _set_slider(pg, "steps", "1")
    _set_slider(pg, "n", "1")
    pg.click("#generate")
    pg.wait_for_selector(".toast-body:has-text('is longer than the text encoder')")
    pg.wait_for_selector("#downloads a[download='images.zip']")
    assert pg.locator("#gallery img").count() == 1


def test_server_talked_to_nothing_else_and_left_no_files(server):
    assert server.outside() == [], f"the app's process reached beyond localhost: {server.outside()}"
    deadline = time.monotonic() + 60  # a closed tab's session folder goes once Gradio sees the tab gone
    while (sessions := [p for p in server.tmpdir.glob("faceid-app-*/sessions/*")]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert sessions == [], f"session folders left after their tabs closed: {sessions}"
    assert server.stop() == 0, server.output()
    # torchinductor_<user>: PyTorch's compile cache, which sample.py leaves there too (not the page's files)
    left = sorted(str(p.relative_to(server.tmpdir)) for p in server.tmpdir.rglob("*")
                  if not p.relative_to(server.tmpdir).parts[0].startswith("torchinductor_"))
    assert left == [], f"temporary files left after the app stopped: {left[:10]}"
    assert "Traceback" not in server.output(), server.output()
