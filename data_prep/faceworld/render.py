"""The batched renderer: (seed, identity index, render index[, attributes]) -> portrait + labels.

    world = FaceWorld(seed=0, size=64, device="cpu")
    batch = world.render([12, 12, 40], [0, 1, 0])                  # sampled attributes and captions
    batch = world.render([12], [7], [{"hat": "cap", "hat_color": "red", "scene": "snow"}])
    batch.images            uint8 [B, H, W, 3] (torch, on the renderer's device)
    batch.captions, batch.class_words, batch.attributes, batch.boxes [B, 4], batch.landmarks [B, 5, 2]

How a batch is drawn (all per pixel, every item in one pass, analytic shapes with soft edges):
background scene -> hair behind the head -> neck and clothes -> face outline -> on a window around
each face: ears (behind the face), moles, freckles, blush, nose, facial hair, mouth, eyes, brows,
glasses -> hair in front -> hat -> light (a directional + ambient shading of the person on a
head-shaped normal field, the scene's light colour) -> white balance and exposure -> style (photo
grain; painting: softened, posterised colours, brush strokes, canvas; sketch: pencil lines, hatching
and a pale wash on paper) -> uint8.
Pose is a map of the pixel grid, not a resampling of pixels: each pixel is taken back through the
head's position, scale and roll into the head frame, and through yaw and pitch on an ellipsoid into
the face frame, where the features are evaluated (geometry.py).

Determinism: every number comes from counter-based hashes of (seed, identity, render) and every
pixel operation is elementwise, so an item's pixels do not depend on the batch it is drawn in.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_prep.faceworld import geometry as geo
from data_prep.faceworld.attributes import ATTRIBUTES, caption, sample_attributes, split_of
from data_prep.faceworld.hashing import STREAM_CAPTION, hash_bits
from data_prep.faceworld.identity import HAIR_COLORS, HAIR_STYLES, IRIS_COLORS, MAX_MOLES, SKIN_TONES, identity_params
from data_prep.faceworld.scenes import PAINTERS, SCENE_LIGHT
from data_prep.faceworld.shapes import (
    NOISE_CHANNELS,
    NOISE_TILES,
    blob_d,
    ellipse_d,
    hash01,
    noise_bank,
    noise_index,
    paint,
    soft,
    tri,
)
from models.errors import UserError

# A new version whenever the pixels of some (seed, identity, render) change; older ones stay drawable, since the
# committed world was trained and measured on them. faceworld-3: heads a quarter larger, expressions drawn
# broadly (wider smiles with the teeth showing, a round open mouth, wide eyes and high brows when surprised),
# glasses frames 1.4 times as thick: the details the prompt names are bigger than the backbone's 4 px patches.
VERSIONS = {
    "faceworld-2": geo.SUBTLE,
    "faceworld-3": geo.Look(head_scale=1.25, eye_h=(-0.55, 1.0), brow_raise=(0.03, 0.30), mouth_w=(0.55, -0.35),
                            mouth_lift=0.22, mouth_open=(0.30, 0.70), frame=0.07),
}
DEFAULT_VERSION = "faceworld-2"
VERSION_ENV = "FACEWORLD_VERSION"  # names the version of every FaceWorld built without one (workers inherit it)


class RendererVersionError(UserError, ValueError):
    """An unknown renderer version."""


def renderer_version(version: str | None = None) -> str:
    """The version in force: `version`, else $FACEWORLD_VERSION, else DEFAULT_VERSION."""
    name = version or os.environ.get(VERSION_ENV) or DEFAULT_VERSION
    if name not in VERSIONS:
        source = "version" if version else f"${VERSION_ENV}"
        raise RendererVersionError(f"unknown renderer version {name!r} (from {source})",
                                   hint=f"known versions: {', '.join(VERSIONS)}")
    return name


VERSION_FILE = "renderer.json"  # in a folder of models trained on renders (a world): the version they saw


def folder_version(folder: str | os.PathLike) -> str:
    """The renderer version of a folder of models trained on renders (<folder>/renderer.json; without one, the
    version in force)."""
    import json

    path = Path(folder) / VERSION_FILE
    return renderer_version(json.loads(path.read_text())["version"]) if path.is_file() else renderer_version()


def use_folder_version(folder: str | os.PathLike) -> str:
    """folder_version(folder), made the process's: $FACEWORLD_VERSION is set to it when it is not the default, so
    that every FaceWorld built without a version, render workers included, draws what those models saw. Refused
    (RendererVersionError) when $FACEWORLD_VERSION asks for another version than the folder's."""
    if not (Path(folder) / VERSION_FILE).is_file():
        return renderer_version()
    version = folder_version(folder)
    asked = os.environ.get(VERSION_ENV)
    if asked and asked != version:
        raise RendererVersionError(f"the models in {folder} were trained on renders of {version}; "
                                   f"${VERSION_ENV} asks for {asked}",
                                   hint=f"unset ${VERSION_ENV}, or train into another folder")
    if version != DEFAULT_VERSION:
        os.environ[VERSION_ENV] = version
    return version


def record_folder_version(folder: str | os.PathLike) -> Path:
    """<folder>/renderer.json naming the version in force, written (atomically) when the folder has none: what
    a stage's export leaves beside its models (use_folder_version has checked an existing one)."""
    import json

    from models.atomic import atomic_write

    path = Path(folder) / VERSION_FILE
    if not path.is_file():
        text = json.dumps({"version": renderer_version()}) + "\n"
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


SIZES = (64, 128)
HAT_COLORS = {"red": (0.82, 0.10, 0.10), "blue": (0.12, 0.28, 0.85), "green": (0.10, 0.58, 0.20),
              "yellow": (0.97, 0.85, 0.12), "black": (0.07, 0.07, 0.08), "white": (0.95, 0.95, 0.95)}
CLOTHING_COLORS = {"red": (0.82, 0.12, 0.12), "orange": (0.96, 0.50, 0.08), "yellow": (0.96, 0.86, 0.18),
                   "green": (0.12, 0.58, 0.22), "blue": (0.13, 0.30, 0.85), "purple": (0.50, 0.18, 0.70),
                   "black": (0.08, 0.08, 0.09), "white": (0.94, 0.94, 0.94)}
FRAME_COLORS = np.array([[0.05, 0.05, 0.05], [0.35, 0.20, 0.10], [0.80, 0.65, 0.25]])
_FAR = 100.0  # a position no pixel is near


@dataclass(frozen=True)
class Render:
    """One render. image: uint8 [H, W, 3]; box: float32 [4] (x1, y1, x2, y2); landmarks: float32 [5, 2]
    (image-left eye, image-right eye, nose tip, image-left and image-right mouth corner), pixels."""

    image: np.ndarray
    caption: str
    class_word: str
    identity: int
    render: int
    attributes: dict
    box: np.ndarray
    landmarks: np.ndarray


@dataclass
class RenderBatch:
    """B renders. images: uint8 [B, H, W, 3] on the renderer's device; boxes [B, 4], landmarks [B, 5, 2]
    float32 numpy in pixels; identities, renders: int64 [B]."""

    images: torch.Tensor
    identities: np.ndarray
    renders: np.ndarray
    class_words: list[str]
    attributes: list[dict]
    captions: list[str]
    boxes: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.identities)

    def item(self, i: int) -> Render:
        return Render(self.images[i].cpu().numpy(), self.captions[i], self.class_words[i], int(self.identities[i]),
                      int(self.renders[i]), self.attributes[i], self.boxes[i], self.landmarks[i])

    def __iter__(self):
        return (self.item(i) for i in range(len(self)))


def caption_rngs(seed: int, identities: np.ndarray, renders: np.ndarray) -> list[np.random.Generator]:
    """The generators the renders' captions are phrased with (counter-based, like everything else)."""
    keys = hash_bits(seed, STREAM_CAPTION, identities, renders, 1)[:, 0]
    return [np.random.Generator(np.random.Philox(key=int(k))) for k in keys]


def draw_attributes(seed: int, identities: np.ndarray, renders: np.ndarray,
                    attributes: Sequence[Mapping | None] | None = None, mode: str = "world",
                    every_pair: bool = False) -> list[dict]:
    """The items' attribute values: those in attributes[i] as given, the others drawn (training identities never
    get a HELD_OUT pair that was not asked for, unless `every_pair`); what FaceWorld.render draws and captions."""
    avoid = np.array([not every_pair and split_of(int(i)) == "train" for i in identities], dtype=bool)
    return sample_attributes(seed, identities, renders, avoid_held_out=avoid, mode=mode,
                             overrides=None if attributes is None else list(attributes))


def captions_of(seed: int, identities: np.ndarray, renders: np.ndarray, attrs: Sequence[Mapping],
                class_words: Sequence[str], mention=None) -> list[str]:
    """The items' captions, as FaceWorld.render phrases them (mention: see attributes.caption)."""
    rngs = caption_rngs(seed, identities, renders)
    return [caption(a, w, rng, mention) for a, w, rng in zip(attrs, class_words, rngs)]


# ------------------------------------------------------------------------------------------- hair
def hair_layout(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-item hair shape numbers (head units, [B] arrays) from the style and its parameters."""
    style = p["hair_style"].astype(int)
    fh, fw = p["face_h"], p["face_w"]
    hv, fr, hl = p["hair_volume"], p["fringe"], p["hair_len"]
    b = len(style)
    z = np.zeros(b)
    L = {"density": np.ones(b), "vol_top": 0.12 + 0.4 * hv, "vol_side": 0.02 + 0.2 * hv, "bottom": -0.05 * fh,
         "flare": z.copy(), "hairline": p["hairline"] * fh, "temple": 0.35 + z, "part_tilt": z.copy(),
         "bangs": np.full(b, -_FAR), "bangs_jag": 0.03 + z, "curtain": np.full(b, _FAR), "curtain_bottom": z.copy(),
         "top_jag": z.copy(), "wave": z.copy(), "curl": z.copy()}
    blob = {k: np.full(b, v) for k, v in (("b1x", _FAR), ("b1y", _FAR), ("b1rx", 0.01), ("b1ry", 0.01),
                                          ("b2x", _FAR), ("b2y", _FAR), ("b2rx", 0.01), ("b2ry", 0.01))}
    brow_top = p["eye_y"] - p["brow_dy"] - 0.06

    def where(name: str, s: str, value) -> None:
        target = blob if name in blob else L
        target[name] = np.where(style == HAIR_STYLES.index(s), value, target[name])

    where("density", "bald", 0.0)
    where("density", "buzz", 0.8)
    where("vol_top", "buzz", 0.07)
    where("vol_side", "buzz", 0.0)
    # short styles: fringe for some
    for s in ("short", "spiky"):
        where("bangs", s, np.where(fr > 0.6, L["hairline"] + 0.22, -_FAR))
    where("part_tilt", "side part", 0.22 * np.sign(p["hair_part"]))
    where("bangs", "side part", np.maximum(L["hairline"] + 0.28, brow_top - 0.1))
    where("bangs_jag", "side part", 0.0)
    where("vol_top", "afro", 0.35 + hv)
    where("vol_side", "afro", 0.28 + hv)
    where("bottom", "afro", 0.25 * fh)
    where("curl", "afro", 1.0)
    where("wave", "afro", 0.05)
    where("vol_top", "spiky", 0.2 + hv)
    where("top_jag", "spiky", 0.16)
    for s in ("bob", "long", "long wavy", "pigtails"):
        where("bangs", s, np.where(fr > 0.45, brow_top, -_FAR))
    where("vol_side", "bob", 0.12 + 0.3 * hv)
    where("bottom", "bob", (0.6 + 0.35 * hl) * fh)
    where("curtain", "bob", (0.74 + 0.12 * hl) * fw)
    where("curtain_bottom", "bob", (0.6 + 0.35 * hl) * fh)
    for s, flare, wave in (("long", 0.15, 0.0), ("long wavy", 0.3, 0.07)):
        where("vol_side", s, 0.1 + 0.3 * hv + wave)
        where("bottom", s, fh + 0.7 + 1.4 * hl)
        where("flare", s, flare)
        where("wave", s, wave)
        where("curtain", s, (0.76 + 0.12 * hl) * fw)
        where("curtain_bottom", s, 0.95 * fh)
    for s in ("ponytail", "bun", "pigtails"):
        where("vol_top", s, 0.12 + 0.1 * hv)
        where("vol_side", s, 0.02)
        where("bottom", s, 0.05 * fh)
    side = np.where(p["hair_part"] >= 0, 1.0, -1.0)
    where("b1x", "ponytail", side * (fw + 0.12))
    where("b1y", "ponytail", 0.25 * fh + 0.3 * hl)
    where("b1rx", "ponytail", 0.2 + 0.1 * hv)
    where("b1ry", "ponytail", 0.5 + 0.3 * hl)
    where("b1x", "bun", 0.15 * p["hair_part"])
    where("b1y", "bun", -fh - 0.22)
    where("b1rx", "bun", 0.3 + 0.15 * hv)
    where("b1ry", "bun", 0.26 + 0.1 * hv)
    for k, sgn in (("b1", -1.0), ("b2", 1.0)):
        where(f"{k}x", "pigtails", sgn * (fw + 0.2))
        where(f"{k}y", "pigtails", 0.45 * fh + 0.4 * hl)
        where(f"{k}rx", "pigtails", 0.17 + 0.08 * hv)
        where(f"{k}ry", "pigtails", 0.6 + 0.35 * hl)
    return {**L, **blob}


# ------------------------------------------------------------------------------------- the world
_CONST = {"blush": (0.9, 0.45, 0.45), "mole": (0.30, 0.18, 0.12), "freckle": (0.46, 0.27, 0.17),
          "mouth": (0.28, 0.05, 0.06), "teeth": (0.97, 0.95, 0.90), "white": (0.93, 0.91, 0.88),
          "pupil": (0.02, 0.02, 0.02), "lid": (0.10, 0.06, 0.05), "dark_lens": (0.04, 0.05, 0.08),
          "clear_lens": (0.85, 0.92, 1.0), "glare": (1.0, 1.0, 1.0), "paper": (0.98, 0.96, 0.91)}
WINDOW_SIDE = 0.42  # head units beside the face outline that the features may reach (ears, glasses)
WINDOW_BELOW = 0.2  # head units below the chin (beards)


class FaceWorld:
    """Renders people of one seed. size: 64 or 128; chunk: items drawn at once (memory vs overhead);
    window: draw the face's features on a crop around the face only (same pixels, faster);
    threads: torch CPU threads while drawing on the CPU (default 1: the drawing is many small
    elementwise operations, which extra threads slow down; run several processes to use more cores),
    None leaves torch's setting alone; version: a key of VERSIONS (default: see renderer_version)."""

    def __init__(self, seed: int, size: int = 64, device: torch.device | str = "cpu", chunk: int = 64,
                 window: bool = True, threads: int | None = 1, version: str | None = None):
        if size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {size}")
        if not 0 <= int(seed) < 2**62:
            raise ValueError(f"seed must lie in [0, 2**62), got {seed}")
        self.seed, self.size, self.device, self.chunk = int(seed), size, torch.device(device), max(1, int(chunk))
        self.window, self.threads = window, threads
        self.version = renderer_version(version)
        self.look = VERSIONS[self.version]
        self.bank = torch.from_numpy(noise_bank(size)).to(self.device).reshape(len(NOISE_CHANNELS), -1)
        r = (torch.arange(size, device=self.device, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
        self.X, self.Y = r.view(1, 1, size), r.view(1, size, 1)  # broadcast to [B, H, W]
        self.const = {k: torch.tensor(v, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
                      for k, v in _CONST.items()}

    # ---------------------------------------------------------------------------------- public
    def render(self, identities: Sequence[int] | np.ndarray, renders: Sequence[int] | np.ndarray | int,
               attributes: Sequence[Mapping | None] | Mapping | None = None, *, mode: str = "world",
               mention=None, every_pair: bool = False) -> RenderBatch:
        """Render items (identities[i], renders[i]); attribute values in attributes[i] are used as given,
        the others are drawn (training identities never get a HELD_OUT pair that was not asked for).

        mode: "world" (training distribution) or "portrait" (photo-folder distribution);
        mention: what captions state, see attributes.caption (None: a random subset);
        every_pair: training identities get HELD_OUT pairs too, as often as the other splits do: renders that
        train an instrument which must read every combination (the attribute classifier), never a model that
        is tested on the held-out pairs.
        """
        ids = np.atleast_1d(np.asarray(identities, dtype=np.int64))
        rs = np.broadcast_to(np.asarray(renders, dtype=np.int64), ids.shape).copy()
        if isinstance(attributes, Mapping):
            attributes = [attributes] * len(ids)
        attrs = draw_attributes(self.seed, ids, rs, attributes, mode, every_pair)
        people = identity_params(self.seed, ids)
        words = people.class_words
        captions = captions_of(self.seed, ids, rs, attrs, words, mention)
        nu = geo.sample_nuisance(self.seed, ids, rs, self.look)
        codes = {name: np.array([ATTRIBUTES[name].index(a[name]) if a[name] is not None else -1 for a in attrs])
                 for name in ATTRIBUTES}
        layout = geo.expression_layout(people.p, nu, codes["expression"], self.look)
        landmarks, boxes = geo.landmarks_and_box(people, nu, layout, self.size)
        images = torch.empty((len(ids), self.size, self.size, 3), dtype=torch.uint8, device=self.device)
        with self._cpu_threads():
            for lo in range(0, len(ids), self.chunk):
                sl = slice(lo, lo + self.chunk)
                images[sl] = self._draw({k: v[sl] for k, v in people.p.items()}, {k: v[sl] for k, v in nu.items()},
                                        {k: v[sl] for k, v in layout.items()}, {k: v[sl] for k, v in codes.items()})
        return RenderBatch(images, ids, rs, words, attrs, captions, boxes, landmarks)

    @contextlib.contextmanager
    def _cpu_threads(self):
        if self.threads is None or self.device.type != "cpu" or torch.get_num_threads() == self.threads:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    # ---------------------------------------------------------------------------------- set-up
    def _tensors(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """[B] arrays -> [B, 1, 1] float32 tensors on the device (one transfer)."""
        names = list(arrays)
        stacked = torch.from_numpy(np.stack([arrays[k] for k in names], axis=1).astype(np.float32)).to(self.device)
        return {k: stacked[:, j].view(-1, 1, 1) for j, k in enumerate(names)}

    def _colors(self, rgb) -> torch.Tensor:
        """[B, 3] -> [B, 3, 1, 1] float32 on the device."""
        return torch.from_numpy(np.asarray(rgb, dtype=np.float32)).to(self.device).view(-1, 3, 1, 1)

    def _subset(self, mask: np.ndarray) -> torch.Tensor | None:
        idx = np.flatnonzero(mask)
        return torch.from_numpy(idx).to(self.device) if len(idx) else None

    def _params(self, p: dict, n: dict, lay: dict, hair: dict) -> dict[str, torch.Tensor]:
        """Every per-item number the drawing uses, as [B, 1, 1] tensors (derived ones computed here)."""
        ndx, ndy = geo.nose_shift(p, n)
        scalars = {k: v for k, v in p.items() if np.ndim(v) == 1}
        scalars.update({f"hair_{k}": v for k, v in hair.items()})
        scalars.update({k: v for k, v in n.items() if np.ndim(v) == 1})
        scalars.update({f"x_{k}": v for k, v in lay.items()})
        for j, sgn in enumerate((-1.0, 1.0)):
            scalars[f"ear{j}_x"], scalars[f"ear{j}_y"] = geo.project_head(
                p, n, sgn * (p["face_w"] + 0.5 * p["ear_out"]), p["ear_y"], -0.2)
        fh, fw = p["face_h"], p["face_w"]
        scalars.update(geo.grid_constants(p, n))
        hair_rx = fw + hair["vol_side"]
        scalars.update(inv_scale=1.0 / n["scale"], sin_yaw=np.sin(n["yaw"]), nose_dx=ndx, nose_dy=ndy,
                       chin=geo.chin_shift(n), jaw_in=1.0 - p["jaw_w"], aa=(2.0 / self.size) / n["scale"],
                       hair_shift=0.12 * np.sin(n["yaw"]), nose_side=np.where(n["light_x"] > 0, -1.0, 1.0),
                       inv_nose_span=1.0 / (p["nose_y"] - p["eye_y"]), hat_brim=-0.62 * fh + 0.02,
                       ear_rx=0.5 * p["ear_size"] + 0.3 * p["ear_out"], shade_k=1.1 * n["light_k"],
                       shade_0=1.0 - 0.6 * n["light_k"], hair_rx=hair_rx, hair_ry=fh + hair["vol_top"],
                       hair_flare_rx=hair["flare"] * hair_rx)
        for k in range(MAX_MOLES):
            scalars.update({f"mole{k}_x": p["mole_x"][:, k], f"mole{k}_y": p["mole_y"][:, k],
                            f"mole{k}_r": np.where(p["mole_r"][:, k] > 0, p["mole_r"][:, k], -1.0)})
        return self._tensors(scalars)

    def _palette(self, p: dict, n: dict, codes: dict) -> dict[str, torch.Tensor]:
        skin = SKIN_TONES[p["skin"].astype(int)] * n["skin_jit"][:, None]
        hair = HAIR_COLORS[p["hair_color"].astype(int)] * n["hair_jit"][:, None]
        red = p["lip_red"][:, None]
        gains = np.stack([1 + n["warmth"], 1 + n["tint"], 1 - n["warmth"]], axis=1) * n["exposure"][:, None]
        light = np.array([SCENE_LIGHT[ATTRIBUTES["scene"][c]] for c in codes["scene"]])
        rows = {
            "skin": skin, "skin_dark": skin * [0.80, 0.74, 0.72], "skin_shadow": skin * [0.68, 0.63, 0.61],
            "nostril": skin * [0.40, 0.37, 0.36], "skin_light": np.minimum(skin * 1.15, 1.0),
            "lips": skin * [0.82, 0.58, 0.58] * (1 - 0.4 * red) + np.array([0.75, 0.2, 0.25]) * 0.4 * red,
            "hair": hair, "brow": 0.65 * hair + 0.35 * np.array([0.18, 0.12, 0.08]),
            "iris": IRIS_COLORS[p["iris"].astype(int)],
            "clothes": np.array([CLOTHING_COLORS[ATTRIBUTES["clothing"][c]] for c in codes["clothing"]]),
            "frame": FRAME_COLORS[n["frame"].astype(int)],
            "hat": np.array([HAT_COLORS[ATTRIBUTES["hat_color"][c]] if c >= 0 else (0, 0, 0)
                             for c in codes["hat_color"]]),
            "gains": gains, "lit_gains": light * gains,
        }
        names = list(rows)
        stacked = self._colors(np.stack([rows[k] for k in names], axis=1).reshape(-1, 3)).view(len(skin), -1, 3, 1, 1)
        return {k: stacked[:, j] for j, k in enumerate(names)}

    # ---------------------------------------------------------------------------------- drawing
    def _draw(self, p: dict, n: dict, lay: dict, codes: dict) -> torch.Tensor:
        """One chunk -> uint8 [b, H, W, 3]."""
        b, size = len(p["face_w"]), self.size
        hair = hair_layout(p)
        t = self._params(p, n, lay, hair)
        col = self._palette(p, n, codes)
        tile = lambda v, m: torch.from_numpy(np.floor(v * m).astype(np.int64)).to(self.device)  # noqa: E731
        flat = noise_index(size, tile(n["tile"], NOISE_TILES), tile(n["tile_ox"], size), tile(n["tile_oy"], size),
                           tile(n["tile_flip"], 2))
        nz = {c: self.bank[k].take(flat) for k, c in enumerate(NOISE_CHANNELS)}
        aa = t["aa"]
        X, Y = self.X, self.Y

        # ---- background
        img = torch.empty((b, 3, size, size), dtype=torch.float32, device=self.device)
        scene_u = torch.from_numpy(n["scene_u"].astype(np.float32)).to(self.device)
        for k, name in enumerate(ATTRIBUTES["scene"]):
            idx = self._subset(codes["scene"] == k)
            if idx is not None:
                img[idx] = PAINTERS[name](X, Y, scene_u[idx], {c: v[idx] for c, v in nz.items()}, 2.0 / size)

        # ---- hair behind the head, neck and clothes, ears, face
        g = geo.pose_grid(X, Y, t)
        hx, hy = g["hx"], g["hy"]
        hxs = hx + t["hair_shift"]
        back_d = self._hair_back(hxs, hy, t, p, hair)
        hair_a = soft(back_d, aa).mul_(t["hair_density"])
        hatted = self._subset(codes["hat"] > 0)
        if hatted is not None:  # no hair above a hat's brim
            hair_a[hatted] *= soft(t["hat_brim"][hatted] - hy[hatted], aa[hatted])
        hair_tex = 0.8 + 0.35 * nz["streak"]
        curly = self._subset(hair["curl"] > 0)
        if curly is not None:
            hair_tex[curly] += 0.3 * (nz["fine"][curly] - 0.5)
        hair_rgb = col["hair"] * hair_tex.unsqueeze(1)
        paint(img, hair_a, hair_rgb)
        body = self._body(img, X, Y, t, col, nz, n["garment"].astype(int))
        face = soft(self._outline_d(g, t), aa)
        paint(img, face, col["skin"] * (0.96 + 0.08 * nz["fine"]).unsqueeze(1))

        # ---- ears (behind the face) and the face's features, on a window around the face
        ears = self._features(img, p, n, lay, t, col, nz, codes, hair)

        # ---- hair in front of the face: above the hairline (or a fringe), curtains at the sides
        fx, fy = g["fx"], g["fy"]
        line = (fx * t["g_fw"]).square_().mul_(t["hair_temple"]).addcmul_(fx, t["hair_part_tilt"])
        line += t["hair_hairline"]
        bangs = self._subset(hair["bangs"] > -_FAR / 2)
        if bangs is not None:
            fringe = t["hair_bangs"][bangs] + t["hair_bangs_jag"][bangs] * tri(fx[bangs] * 7.0)
            line[bangs] = torch.maximum(line[bangs], fringe)
        front_hair = soft(fy - line, aa)
        curtains = self._subset(hair["curtain"] < _FAR / 2)
        if curtains is not None:
            a, c = aa[curtains], curtains
            curtain = soft(t["hair_curtain"][c] - hxs[c].abs(), a) * soft(hy[c] - t["hair_curtain_bottom"][c], a)
            front_hair[c] = torch.maximum(front_hair[c], curtain)
        paint(img, front_hair.mul_(hair_a), hair_rgb)
        hat_alpha = torch.zeros_like(face)
        for k, name in enumerate(ATTRIBUTES["hat"]):
            idx = self._subset(codes["hat"] == k) if k > 0 else None
            if idx is not None:
                hat_alpha[idx] = self._hat(img, idx, name, hx[idx] + 0.5 * t["hair_shift"][idx], hy[idx], t, col, aa)

        # ---- light: the person is shaded on head-shaped normals, in the scene's light colour
        person = (1.0 - hair_a).mul_(1.0 - body).mul_(1.0 - face).mul_(1.0 - ears).mul_(1.0 - hat_alpha)
        person = person.neg_().add_(1.0)
        lam = (g["qx"].clamp(-1.0, 1.0) * t["light_x"]).addcmul_(g["qy"].clamp(-1.0, 1.0), t["light_y"])
        lam = lam.addcmul_(g["qz"], t["light_z"]).clamp_(0.0, 1.0)
        shade = lam.mul_(t["shade_k"]).add_(t["shade_0"])
        # per pixel: gains (white balance, exposure) outside the person, shade x scene light x gains on it
        factor = (shade.unsqueeze(1) * col["lit_gains"] - col["gains"]).mul_(person.unsqueeze(1)).add_(col["gains"])
        img.mul_(factor)

        # ---- style
        for k, name in enumerate(ATTRIBUTES["style"]):
            idx = self._subset(codes["style"] == k)
            if idx is not None:
                img[idx] = self._style(name, img[idx], {c: v[idx] for c, v in nz.items()}, self.const["paper"])
        img = img.mul_(255.0).add_(0.5).clamp_(0.0, 255.0)
        return img.to(torch.uint8).permute(0, 2, 3, 1)  # truncation = floor: rounds to nearest

    def _window(self, p: dict, n: dict, lay: dict) -> tuple[int, np.ndarray, np.ndarray]:
        """Side and per-item top-left corner (pixels) of a square covering every feature of each face."""
        size = self.size
        if not self.window:
            zeros = np.zeros(len(p["face_w"]), dtype=np.int64)
            return size, zeros, zeros
        x0, y0, x1, y1 = geo.feature_box(p, n, lay, WINDOW_SIDE, WINDOW_BELOW)
        px = lambda v: geo.to_pixels(v, size)  # noqa: E731
        x0, y0, x1, y1 = px(x0) - 1.0, px(y0) - 1.0, px(x1) + 1.0, px(y1) + 1.0
        side = int(min(size, 4 * np.ceil(max(np.max(x1 - x0), np.max(y1 - y0)) / 4)))
        ox = np.clip(np.floor((x0 + x1) / 2 - side / 2 + 0.5), 0, size - side).astype(np.int64)
        oy = np.clip(np.floor((y0 + y1) / 2 - side / 2 + 0.5), 0, size - side).astype(np.int64)
        return side, ox, oy

    def _features(self, img, p, n, lay, t, col, nz, codes, hair) -> torch.Tensor:
        """Ears, moles, freckles, blush, nose, facial hair, mouth, eyes, brows and glasses: drawn on a
        window around each face (gathered from img and scattered back; pixels outside it have none of
        these). Returns the ears' coverage [b, H, W]."""
        b, size = img.shape[0], self.size
        side, ox, oy = self._window(p, n, lay)
        r = torch.arange(side, device=self.device)
        oxt = torch.from_numpy(ox).to(self.device).view(-1, 1, 1)
        oyt = torch.from_numpy(oy).to(self.device).view(-1, 1, 1)
        flat = ((oyt + r.view(1, -1, 1)) * size + oxt + r.view(1, 1, -1)).view(b, 1, -1)
        idx3 = flat.expand(b, 3, side * side)
        win = img.view(b, 3, -1).gather(2, idx3).view(b, 3, side, side)
        X = ((oxt + r.view(1, 1, -1)).to(torch.float32) + 0.5) * (2.0 / size) - 1.0  # [b, 1, side]
        Y = ((oyt + r.view(1, -1, 1)).to(torch.float32) + 0.5) * (2.0 / size) - 1.0  # [b, side, 1]
        wnz = {c: v.view(b, -1).gather(1, flat.view(b, -1)).view(b, side, side) for c, v in nz.items()}
        g = geo.pose_grid(X, Y, t)
        hx, fx, fy = g["hx"], g["fx"], g["fy"]
        face_d = self._outline_d(g, t)
        aa = t["aa"]
        front = soft(face_d, aa)
        c = self.const
        ears = torch.zeros((b, side, side), dtype=torch.float32, device=self.device)
        shown = self._subset(hair["curtain"] >= _FAR / 2)  # long hair hides the ears
        if shown is not None:
            ears[shown] = self._ears(win, shown, g["hx"], g["hy"], front, t, col, aa)
        blush = soft(blob_d(fx.abs() - 0.55 * t["face_w"], fy - t["nose_y"] + 0.05, 0.22, 0.14), 0.15)
        paint(win, blush.mul_(front).mul_(0.1 + 0.3 * t["x_smile"]), c["blush"])
        self._marks(win, fx, fy, t, front, aa, p)
        self._nose(win, fx, fy, t, col, front, aa)
        beard = self._subset(p["beard"] > 0)
        if beard is not None:
            self._beard(win, beard, fx, fy, face_d, t, col, wnz, aa)
        self._mouth(win, fx, fy, t, col, front, aa)
        self._eyes(win, fx, fy, t, col, front, aa)
        self._brows(win, fx, fy, t, col, front, aa)
        glasses = self._subset(codes["glasses"] > 0)
        if glasses is not None:
            self._glasses(win, glasses, fx, fy, hx, face_d, t, col, codes, aa)
        img.view(b, 3, -1).scatter_(2, idx3, win.view(b, 3, -1))
        return torch.zeros((b, size * size), dtype=torch.float32, device=self.device).scatter_(
            1, flat.view(b, -1), ears.view(b, -1)).view(b, size, size)

    def _ears(self, img, idx, hx, hy, front, t, col, aa) -> torch.Tensor:
        """Two ears behind the face (covered where the face is); returns their coverage [b_idx, h, w]."""
        hx, hy, behind, a = hx[idx], hy[idx], 1.0 - front[idx], aa[idx]
        rx, ry = t["ear_rx"][idx], t["ear_size"][idx]
        sub = img[idx]
        cover = torch.zeros_like(hx)
        for j in range(2):
            ex, ey = hx - t[f"ear{j}_x"][idx], hy - t[f"ear{j}_y"][idx]
            outer = soft(blob_d(ex, ey, rx, ry), a).mul_(behind)
            paint(sub, outer, col["skin"][idx])
            inner = soft(blob_d(ex, ey - 0.02, 0.45 * rx, 0.55 * ry), a).mul_(behind).mul_(0.7)
            paint(sub, inner, col["skin_shadow"][idx])
            cover = torch.maximum(cover, outer)
        img[idx] = sub
        return cover

    # ------------------------------------------------------------------------------- face parts
    @staticmethod
    def _outline_d(g: dict, t: dict) -> torch.Tensor:
        """Signed distance (about head units) to the face outline: an ellipse with a narrower, squarer jaw
        (g: pose_grid)."""
        tt = g["qy"].clamp(0.0, 1.0)
        t2 = tt * tt
        tp = (t2 * t2 - t2).mul_(t["jaw_sq"]).add_(t2)
        inv_width = tp.mul_(t["jaw_in"]).neg_().add_(1.0).reciprocal_()  # 1 / (width / face_w)
        x = (g["qx"] - t["chin"] * tt).mul_(inv_width)
        return torch.addcmul(x * x, g["qy"], g["qy"]).sqrt_().sub_(1.0).mul_(t["face_w"])

    def _hair_back(self, hx, hy, t, p, hair):
        """Signed distance to the hair mass behind the head (above: an ellipse; below: straight or flared
        sides down to the hair's length; spikes, waves, buns, ponytails and pigtails where the style has them)."""
        below = torch.sign(hy).add_(1.0).mul_(0.5)  # 0 above the face's middle, 1 below
        rx = (hy * t["g_fh"]).clamp_(min=0.0).mul_(t["hair_flare_rx"]).add_(t["hair_rx"])
        ry = below.mul_(50.0).add_(t["hair_ry"])
        jag = tri(hx * 4.0)
        spiky = self._subset(hair["top_jag"] > 0)
        if spiky is not None:
            ry[spiky] += t["hair_top_jag"][spiky] * jag[spiky]
        wavy = self._subset(hair["wave"] > 0)
        if wavy is not None:
            rx[wavy] += t["hair_wave"][wavy] * tri(hy[wavy] * 2.5)
        d = torch.maximum(ellipse_d(hx, hy, rx, ry), jag.mul_(-0.06).add_(hy).sub_(t["hair_bottom"]))
        idx = self._subset(p["hair_style"] >= HAIR_STYLES.index("ponytail"))
        if idx is not None:
            sub_x, sub_y = hx[idx], hy[idx]
            blobs = d[idx]
            for k in ("b1", "b2"):
                blob = ellipse_d(sub_x - t[f"hair_{k}x"][idx], sub_y - t[f"hair_{k}y"][idx], t[f"hair_{k}rx"][idx],
                                 t[f"hair_{k}ry"][idx])
                blobs = torch.minimum(blobs, blob)
            d[idx] = blobs
        return d

    def _body(self, img, X, Y, t, col, nz, garment: np.ndarray):
        """Neck (skin) and shoulders (clothes with a neckline per garment); returns the coverage."""
        bx = (X - t["tx"]) * t["inv_scale"]  # [b, 1, W]
        by = (Y - t["ty"]) * t["inv_scale"]  # [b, H, 1]
        aa = t["aa"]
        neck_w = 0.5 * t["face_w"]
        neck = soft(torch.maximum((bx - 0.3 * t["sin_yaw"]).abs() - neck_w, 0.3 - by), aa)
        paint(img, neck, col["skin_dark"])
        y_sh = t["face_h"] + 0.32
        shoulders = soft(torch.maximum(y_sh + 0.12 * bx * bx - by, bx.abs() - 2.8), aa)
        cut = ellipse_d(bx, by - y_sh + 0.02, 1.25 * neck_w, 0.3)  # crew neck
        vneck = self._subset(garment == 1)
        if vneck is not None:
            v = torch.maximum(bx[vneck].abs() - (by[vneck] - y_sh[vneck] + 0.15) * 0.42, by[vneck] - y_sh[vneck] - 0.55)
            cut[vneck] = torch.minimum(cut[vneck], v)
        clothes = shoulders * (1.0 - soft(cut, aa))
        paint(img, clothes, col["clothes"] * (0.86 + 0.22 * nz["streak"]).unsqueeze(1))
        shirt = self._subset(garment == 2)
        if shirt is not None:  # collar flaps and a button line
            sx, sy, w, ys = bx[shirt], by[shirt], neck_w[shirt], y_sh[shirt]
            xc = sx.abs() - 0.6 * w
            flap = torch.maximum(torch.maximum(-xc, xc - 1.1 * w), torch.maximum(ys - 0.15 - sy,
                                                                                   sy - (ys + 0.35 - 0.45 * xc)))
            sub = img[shirt]
            paint(sub, soft(flap, aa[shirt]) * shoulders[shirt], col["clothes"][shirt] * 0.7 + 0.3)
            buttons = soft(torch.maximum(sx.abs() - 0.025, ys + 0.2 - sy), aa[shirt]) * clothes[shirt]
            paint(sub, buttons, col["clothes"][shirt] * 0.5)
            img[shirt] = sub
        if vneck is not None:  # a ribbed neckline for the sweater
            sub = img[vneck]
            paint(sub, soft(cut[vneck].abs() - 0.05, aa[vneck]) * shoulders[vneck], col["clothes"][vneck] * 0.75)
            img[vneck] = sub
        return torch.maximum(neck, shoulders)

    def _marks(self, img, fx, fy, t, front, aa, p):
        for k in range(MAX_MOLES):
            d = torch.sqrt((fx - t[f"mole{k}_x"]).square_().add_((fy - t[f"mole{k}_y"]).square_())) - t[f"mole{k}_r"]
            paint(img, soft(d, aa).mul_(front), self.const["mole"])
        idx = self._subset(p["freckles"] > 0)
        if idx is None:
            return
        sx, sy = fx[idx] * 7.0, (fy[idx] - 0.1) * 7.0
        cx, cy = torch.floor(sx), torch.floor(sy)
        seed = t["freckle_seed"][idx].to(torch.int64)
        cell = cx.to(torch.int64) * 977 + cy.to(torch.int64) * 131 + seed * 7919
        on = (hash01(cell, 17) < t["freckles"][idx] * 0.6).float()
        jx = hash01(cell, 23) * 0.5 + 0.25
        d = torch.sqrt((sx - cx - jx).square() + (sy - cy - 0.5).square()) / 7.0 - 0.022
        region = soft(blob_d(fx[idx], fy[idx] - 0.15, 0.75, 0.32), 0.1)
        sub = img[idx]
        paint(sub, soft(d, aa[idx]) * on * region * front[idx] * 0.7, self.const["freckle"])
        img[idx] = sub

    def _nose(self, img, fx, fy, t, col, front, aa):
        w = ((fy - t["eye_y"]) * t["inv_nose_span"]).clamp_(0.0, 1.0)
        nx = fx - t["nose_dx"] * w
        ny = fy - t["nose_dy"] * w - t["nose_y"]  # 0 at the tip's base
        nw = t["nose_w"]
        bulb = ellipse_d(nx, ny + 0.02, nw, 0.55 * nw + t["nose_tip"])
        under = soft(bulb.abs_().sub_(0.018), aa).mul_(soft(-0.02 - ny, aa))  # the lower outline
        bridge = soft((nx - t["nose_side"] * 0.45 * nw).abs_() - 0.025 * (0.5 + w), aa)
        span = soft(torch.maximum(t["eye_y"] + 0.08 - t["nose_y"] - ny, ny), aa)
        bridge = bridge.mul_(span).mul_(0.6 * (0.25 + 0.5 * t["nose_bridge"]))
        paint(img, torch.maximum(bridge, under.mul_(0.7)).mul_(front), col["skin_shadow"])
        nostril = soft(blob_d(nx.abs() - 0.5 * nw, ny - 0.01, 0.045, 0.026), aa)
        paint(img, nostril.mul_(front).mul_(0.9), col["nostril"])
        tip = soft(blob_d(nx, ny + 0.06, 0.4 * nw, 0.04), 0.08)
        paint(img, tip.mul_(front).mul_(0.25), col["skin_light"])

    def _beard(self, img, idx, fx, fy, face_d, t, col, nz, aa):
        fx, fy, face_d = fx[idx], fy[idx], face_d[idx]
        g = {k: t[k][idx] for k in ("beard", "beard_t", "mouth_y", "mouth_w", "nose_y", "face_w", "face_h",
                                    "x_mouth_lift")}
        kind = g["beard"]
        my = g["mouth_y"] - 0.6 * g["x_mouth_lift"]
        stache = ellipse_d(fx, fy - my + 0.085, 1.15 * g["mouth_w"], 0.06 + 0.02 * g["beard_t"])
        chin = ellipse_d(fx, fy - my - 0.5 * (g["face_h"] - my), 0.6 * g["mouth_w"] + 0.04,
                         (g["face_h"] - my) * 0.42)
        cheek_line = g["nose_y"] + 0.05 - 0.35 * (fx / g["face_w"]).square()
        full = torch.maximum(cheek_line - fy, face_d - 0.1 * g["beard_t"])
        is_stache, is_goatee = (kind == 2).float(), (kind == 3).float()  # [b, 1, 1]
        d = full + is_stache * (stache - full) + is_goatee * (torch.minimum(stache, chin) - full)
        d = torch.maximum(d, face_d - 0.12 * g["beard_t"])  # grows a little beyond the jaw
        stubble = (kind == 1).float()
        density = 0.95 - stubble * (0.7 - 0.1 * g["beard_t"])
        tex = 1.0 - stubble * (1.0 - (0.6 + 0.8 * nz["white"][idx]).clamp(0, 1))
        sub = img[idx]
        paint(sub, soft(d, aa[idx]) * density * tex, col["hair"][idx] * (0.8 + 0.3 * nz["fine"][idx]).unsqueeze(1))
        img[idx] = sub

    def _mouth(self, img, fx, fy, t, col, front, aa):
        mw, lift, opening = t["x_mouth_w"], t["x_mouth_lift"], t["x_mouth_open"]
        u = fx / mw
        u2 = u * u
        v = fy - t["mouth_y"] + lift * u2  # 0 on the lips' middle line
        top_h = t["lip_top"] + 0.5 * opening
        bot_h = t["lip_bot"] + 0.5 * opening
        below = torch.sign(v).add_(1.0).mul_(0.5)
        vh = v * (1.0 / top_h + (1.0 / bot_h - 1.0 / top_h) * below)
        lips_d = (torch.sqrt(u2 + vh * vh) - 1.0).mul_(torch.minimum(top_h, mw))
        paint(img, soft(lips_d, aa).mul_(front), col["lips"])
        inner = ellipse_d(fx, v, 0.85 * mw, 0.5 * opening + 0.004)
        paint(img, soft(inner, aa).mul_(front), self.const["mouth"])
        # a smile shows the upper teeth: the upper part of the opening, above a line below its middle
        teeth = soft(inner + 0.012, aa).mul_(soft(v - 0.15 * opening, aa)).mul_(front * (t["x_smile"] > 0).float())
        paint(img, teeth, self.const["teeth"])
        closed = soft(v.abs() - 0.012, aa).mul_(soft(u.abs() - 1.0, 0.1)).mul_(front * (0.8 * (opening < 0.02).float()))
        paint(img, closed, self.const["mouth"])

    def _eyes(self, img, fx, fy, t, col, front, aa):
        ex = fx.abs() - t["eye_dx"]
        ey = fy - t["eye_y"] + t["eye_tilt"] * ex
        eh = t["x_eye_h"]
        eye_d = ellipse_d(ex, ey, t["eye_w"], eh)
        white = soft(eye_d, aa).mul_(front)
        paint(img, white, self.const["white"])
        ix = ex - torch.sign(fx) * t["gaze_x"]
        iy = ey - t["gaze_y"]
        r = torch.sqrt(ix * ix + iy * iy)
        paint(img, soft(r - t["iris_r"], aa).mul_(white), col["iris"])
        paint(img, soft(r - 0.45 * t["iris_r"], aa).mul_(white), self.const["pupil"])
        lid = soft((eye_d + 0.012).abs_() - 0.02, aa).mul_(soft(ey + 0.3 * eh, aa * 2)).mul_(front)
        paint(img, lid, self.const["lid"])

    def _brows(self, img, fx, fy, t, col, front, aa):
        bx = fx.abs() - t["eye_dx"] - t["brow_shift"]
        u = bx / t["brow_w"]
        by = fy - (t["eye_y"] - t["brow_dy"] - t["x_brow_raise"]) + t["brow_arch"] * (1.0 - u * u) + t["brow_tilt"] * bx
        thick = t["brow_t"] * (1.0 - 0.35 * u.clamp(0.0, 1.0))
        d = torch.maximum(by.abs() - thick, bx.abs() - t["brow_w"])
        paint(img, soft(d, aa).mul_(front), col["brow"])

    def _glasses(self, img, idx, fx, fy, hx, face_d, t, col, codes, aa):
        fx, fy, hx, aa = fx[idx], fy[idx], hx[idx], aa[idx]
        on_face = soft(face_d[idx] - 0.15, aa)
        ew, ey, edx, fw = t["eye_w"][idx], t["eye_y"][idx], t["eye_dx"][idx], t["face_w"][idx]
        sun = torch.from_numpy((codes["glasses"] == 2).astype(np.float32)).to(self.device)[idx].view(-1, 1, 1)
        gx = fx.abs() - edx
        gy = fy - ey - 0.01
        rx, ry = 1.3 * ew + 0.07, (0.8 * ew + 0.06) * (1.0 + 0.05 * sun)
        lens = ellipse_d(gx, gy, rx, ry)
        ft = self.look.frame
        rim = soft(lens.abs() - ft, aa)
        bridge = soft(torch.maximum(fx.abs() - (edx - rx + 0.02), (gy + 0.03).abs() - 0.7 * ft), aa)
        temple = soft(torch.maximum((gy + 0.02).abs() - 0.7 * ft, rx - gx), aa) * soft(hx.abs() - fw, aa)
        sub = img[idx]
        fill = (0.15 + 0.78 * sun) * soft(lens, aa) * on_face
        lens_c = self.const["clear_lens"] + (self.const["dark_lens"] - self.const["clear_lens"]) * sun.unsqueeze(1)
        paint(sub, fill, lens_c)
        paint(sub, torch.maximum(torch.maximum(rim, bridge), temple) * on_face, col["frame"][idx])
        glare = soft(ellipse_d(gx + 0.3 * rx, gy + 0.35 * ry, 0.3 * rx, 0.12 * ry), aa) * (sun * 0.5) * on_face
        paint(sub, glare, self.const["glare"])
        img[idx] = sub

    def _hat(self, img, idx, name, hx, hy, t, col, aa):
        """Draw a hat of kind `name` on items idx (head frame hx, hy of those items); returns coverage."""
        g = {k: t[k][idx] for k in ("face_w", "face_h", "hair_vol_top", "hair_vol_side")}
        aa = aa[idx]
        c = col["hat"][idx]
        fw, fh = g["face_w"], g["face_h"]
        brim = -0.62 * fh
        top = -fh - 0.6 * g["hair_vol_top"].clamp(max=0.3)
        wide = fw + 0.7 * g["hair_vol_side"].clamp(max=0.3) + 0.06  # a soft hat covers the hair under it
        sub = img[idx]
        if name == "cap":
            crown = soft(torch.maximum(ellipse_d(hx, hy - brim, wide, brim - top + 0.14), hy - brim), aa)
            visor = soft(torch.maximum(ellipse_d(hx, hy - brim - 0.02, 1.04 * wide, 0.27), brim - hy), aa)
            button = soft(blob_d(hx, hy - top + 0.1, 0.09, 0.07), aa)
            seams = soft((hx.abs() - 0.38 * wide).abs() - 0.02, aa) * crown
            paint(sub, crown, c)
            paint(sub, seams * 0.5, c * 0.6)
            paint(sub, visor, c * 0.7)
            paint(sub, button, c * 0.8)
            cover = torch.maximum(crown, visor)
        elif name == "beanie":
            dome = ellipse_d(hx, hy - brim - 0.05, wide + 0.02, brim - top + 0.32)
            dome = soft(torch.maximum(dome, hy - brim - 0.1), aa)
            cuff = soft((hy - brim + 0.06).abs() - 0.15, aa) * dome
            ribs = (tri(hx * 9.0) > 0.5).float() * cuff
            pom = soft(blob_d(hx, hy - (top - 0.3), 0.24, 0.22), aa)
            paint(sub, dome, c)
            paint(sub, cuff, c * 0.82)
            paint(sub, ribs * 0.5, c * 0.6)
            paint(sub, pom, c * 0.5 + 0.45)
            cover = torch.maximum(dome, pom)
        elif name == "cowboy hat":
            crown_top = brim - 0.95 - 0.1 * tri(hx * 1.2 + 0.5)
            crown = soft(torch.maximum(hx.abs() - 0.8 * wide + (hy - brim) * 0.15, crown_top - hy), aa)
            crown = crown * soft(hy - brim, aa)
            band = soft((hy - brim + 0.16).abs() - 0.07, aa) * crown
            rim = soft(ellipse_d(hx, hy - brim + 0.02, 2.0 * fw, 0.24), aa)
            paint(sub, crown, c)
            paint(sub, band, c * 0.4)
            paint(sub, rim, c * 0.85)
            cover = torch.maximum(crown, rim)
        elif name == "top hat":
            cyl = soft(torch.maximum(hx.abs() - 0.78 * fw, torch.maximum(brim - 1.5 - hy, hy - brim)), aa)
            band = soft(torch.maximum(hx.abs() - 0.78 * fw, (hy - brim + 0.25).abs() - 0.11), aa)
            rim = soft(ellipse_d(hx, hy - brim, 1.3 * fw, 0.12), aa)
            paint(sub, cyl, c)
            paint(sub, band, torch.where(c.sum(1, keepdim=True) < 0.6, c * 0.0 + 0.75, c * 0.25))
            paint(sub, rim, c * 0.8)
            cover = torch.maximum(cyl, rim)
        else:  # party hat
            apex = brim - 1.6
            half = 0.85 * fw * ((hy - apex) / (brim - apex))
            cone = soft(torch.maximum(hx.abs() - half, torch.maximum(apex - hy, hy - brim)), aa)
            stripes = (tri((hx + hy) * 2.6) > 0.55).float() * cone
            pom = soft(blob_d(hx, hy - apex, 0.14, 0.14), aa)
            paint(sub, cone, c)
            paint(sub, stripes, c * 0.35 + 0.6)
            paint(sub, pom, c * 0.3 + 0.65)
            cover = torch.maximum(cone, pom)
        img[idx] = sub
        return cover

    # -------------------------------------------------------------------------------- styles
    @staticmethod
    def _style(name: str, img: torch.Tensor, nz: dict, paper: torch.Tensor) -> torch.Tensor:
        """img [b, 3, H, W] in [0, 1] (about) -> the same in the style."""
        if name == "photo":
            return img + (nz["white"] - 0.5).unsqueeze(1) * 0.05
        lum = (0.3 * img[:, 0] + 0.59 * img[:, 1] + 0.11 * img[:, 2]).clamp(0.0, 1.0)
        if name == "painting":  # softened, saturated, posterised with brush-stroke dither, on canvas
            soft_img = img.clone()
            soft_img[:, :, 1:-1, :] += img[:, :, 2:, :] + img[:, :, :-2, :]
            soft_img[:, :, :, 1:-1] += img[:, :, :, 2:] + img[:, :, :, :-2]
            soft_img.mul_(0.2)
            soft_lum = (0.3 * soft_img[:, 0] + 0.59 * soft_img[:, 1] + 0.11 * soft_img[:, 2]).unsqueeze(1)
            sat = (soft_img - soft_lum).mul_(1.45).add_(soft_lum).clamp_(0.0, 1.0)
            dither = (nz["streak"] - 0.5).unsqueeze(1) * 0.7
            poster = torch.floor(sat * 5.0 + dither + 0.5).mul_(0.2)
            canvas = (0.9 + 0.14 * nz["fine"]).unsqueeze(1)
            return (0.7 * poster + 0.3 * sat) * canvas
        # sketch: pencil edges from luminance differences, hatching in the dark parts, pale colour wash
        gx = torch.zeros_like(lum)
        gy = torch.zeros_like(lum)
        gx[:, :, 1:-1] = lum[:, :, 2:] - lum[:, :, :-2]
        gy[:, 1:-1, :] = lum[:, 2:, :] - lum[:, :-2, :]
        edge = (gx.abs() + gy.abs()).mul_(1.8).clamp_(0.0, 1.0)
        h, w = lum.shape[1:]
        yy = torch.arange(h, device=img.device, dtype=img.dtype).view(1, h, 1)
        xx = torch.arange(w, device=img.device, dtype=img.dtype).view(1, 1, w)
        hatch = (tri((xx + yy) * (16.0 / h)) > 0.75).float() * (0.45 - lum).clamp(0.0, 1.0) * 1.5
        pencil = (1.0 - edge - hatch * 0.5 - (nz["fine"] - 0.5) * 0.06).clamp(0.0, 1.0)
        wash = 0.5 + 0.5 * img.clamp(0.0, 1.0)
        return paper * wash * pencil.unsqueeze(1)
