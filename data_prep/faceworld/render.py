"""The batched renderer: (seed, identity index, render index[, attributes]) -> portrait + labels.

    world = FaceWorld(seed=0, size=64, device="cpu")
    batch = world.render([12, 12, 40], [0, 1, 0])                  # sampled attributes and captions
    batch = world.render([12], [7], [{"hat": "cap", "hat_color": "red", "scene": "snow"}])
    batch.images            uint8 [B, H, W, 3] (torch, on the renderer's device)
    batch.captions, batch.class_words, batch.attributes, batch.boxes [B, 4], batch.landmarks [B, 5, 2]

How a batch is drawn (all per pixel, every item in one pass, analytic shapes with soft edges):
background scene -> hair behind the head -> neck and clothes -> ears -> face outline -> moles and
freckles -> nose -> facial hair -> mouth -> eyes -> brows -> hair in front -> glasses -> hat ->
light (a directional + ambient shading of the person on a head-shaped normal field, the scene's
light colour) -> white balance and exposure -> style (photo grain; painting: posterised colours,
brush strokes, canvas; sketch: pencil lines, hatching and a pale wash on paper) -> uint8.
Pose is a map of the pixel grid, not a resampling of pixels: each pixel is taken back through the
head's position, scale and roll into the head frame, and through yaw and pitch on an ellipsoid into
the face frame, where the features are evaluated (geometry.py).

Determinism: every number comes from counter-based hashes of (seed, identity, render) and every
pixel operation is elementwise, so an item's pixels do not depend on the batch it is drawn in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
    ellipse_d,
    hash01,
    noise_bank,
    paint,
    sample_noise,
    soft,
    tri,
)

RENDERER_VERSION = "faceworld-1"  # changes whenever the pixels of some (seed, identity, render) change
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


def caption_rng(seed: int, identity: int, render: int) -> np.random.Generator:
    """The generator a render's caption is phrased with (counter-based, like everything else)."""
    key = int(hash_bits(seed, STREAM_CAPTION, identity, render, 1)[0, 0])
    return np.random.Generator(np.random.Philox(key=key))


# ------------------------------------------------------------------------------------------- hair
def hair_layout(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-item hair shape numbers (head units, [B] arrays) from the style and its parameters."""
    style = p["hair_style"].astype(int)
    fh, fw = p["face_h"], p["face_w"]
    hv, fr, hl = p["hair_volume"], p["fringe"], p["hair_len"]
    b = len(style)
    z = np.zeros(b)
    L = {"density": np.ones(b), "vol_top": 0.05 + 0.4 * hv, "vol_side": 0.02 + 0.2 * hv, "bottom": -0.05 * fh,
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
    where("density", "buzz", 0.5)
    where("vol_top", "buzz", 0.02)
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
        where("vol_top", s, 0.04 + 0.1 * hv)
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
        where(f"{k}x", "pigtails", sgn * (fw + 0.22))
        where(f"{k}y", "pigtails", 0.3 * fh + 0.3 * hl)
        where(f"{k}rx", "pigtails", 0.2 + 0.1 * hv)
        where(f"{k}ry", "pigtails", 0.45 + 0.3 * hl)
    return {**L, **blob}


# ------------------------------------------------------------------------------------- the world
class FaceWorld:
    """Renders people of one seed. size: 64 or 128; chunk: items drawn at once (memory vs overhead)."""

    def __init__(self, seed: int, size: int = 64, device: torch.device | str = "cpu", chunk: int = 64):
        if size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {size}")
        if not 0 <= int(seed) < 2**62:
            raise ValueError(f"seed must lie in [0, 2**62), got {seed}")
        self.seed, self.size, self.device, self.chunk = int(seed), size, torch.device(device), max(1, int(chunk))
        self.bank = torch.from_numpy(noise_bank(size)).to(self.device)
        self.X, self.Y = geo.image_grid(size, self.device)

    # ---------------------------------------------------------------------------------- public
    def render(self, identities: Sequence[int] | np.ndarray, renders: Sequence[int] | np.ndarray | int,
               attributes: Sequence[Mapping | None] | Mapping | None = None, *, mode: str = "world",
               mention=None) -> RenderBatch:
        """Render items (identities[i], renders[i]); attribute values in attributes[i] are used as given,
        the others are drawn (training identities never get a HELD_OUT pair that was not asked for).

        mode: "world" (training distribution) or "portrait" (photo-folder distribution);
        mention: what captions state, see attributes.caption (None: a random subset).
        """
        ids = np.atleast_1d(np.asarray(identities, dtype=np.int64))
        rs = np.broadcast_to(np.asarray(renders, dtype=np.int64), ids.shape).copy()
        if isinstance(attributes, Mapping):
            attributes = [attributes] * len(ids)
        avoid = np.array([split_of(int(i)) == "train" for i in ids], dtype=bool)
        attrs = sample_attributes(self.seed, ids, rs, avoid_held_out=avoid, mode=mode,
                                  overrides=None if attributes is None else list(attributes))
        people = identity_params(self.seed, ids)
        words = people.class_words
        captions = [caption(a, w, caption_rng(self.seed, int(i), int(r)), mention)
                    for a, w, i, r in zip(attrs, words, ids, rs)]
        nu = geo.sample_nuisance(self.seed, ids, rs)
        codes = {name: np.array([ATTRIBUTES[name].index(a[name]) if a[name] is not None else -1 for a in attrs])
                 for name in ATTRIBUTES}
        layout = geo.expression_layout(people.p, nu, codes["expression"])
        landmarks, boxes = geo.landmarks_and_box(people, nu, layout, self.size)
        images = torch.empty((len(ids), self.size, self.size, 3), dtype=torch.uint8, device=self.device)
        for lo in range(0, len(ids), self.chunk):
            sl = slice(lo, lo + self.chunk)
            images[sl] = self._draw({k: v[sl] for k, v in people.p.items()}, {k: v[sl] for k, v in nu.items()},
                                    {k: v[sl] for k, v in layout.items()}, {k: v[sl] for k, v in codes.items()})
        return RenderBatch(images, ids, rs, words, attrs, captions, boxes, landmarks)

    # ---------------------------------------------------------------------------------- drawing
    def _tensors(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """[B] arrays -> [B, 1, 1] float32 tensors on the device (one transfer)."""
        names = list(arrays)
        stacked = torch.from_numpy(np.stack([arrays[k] for k in names], axis=1).astype(np.float32)).to(self.device)
        return {k: stacked[:, j].view(-1, 1, 1) for j, k in enumerate(names)}

    def _colors(self, rgb: np.ndarray) -> torch.Tensor:
        """[B, 3] -> [B, 3, 1, 1] float32 on the device."""
        return torch.from_numpy(np.asarray(rgb, dtype=np.float32)).to(self.device).view(-1, 3, 1, 1)

    def _draw(self, p: dict, n: dict, lay: dict, codes: dict) -> torch.Tensor:
        """One chunk -> uint8 [b, H, W, 3]."""
        b, size = len(p["face_w"]), self.size
        hair = hair_layout(p)
        ndx, ndy = geo.nose_shift(p, n)
        scalars = {k: v for k, v in p.items() if np.ndim(v) == 1}
        scalars.update({f"hair_{k}": v for k, v in hair.items()})
        scalars.update({k: v for k, v in n.items() if np.ndim(v) == 1})
        scalars.update({f"x_{k}": v for k, v in lay.items()})
        ear = {}
        for j, sgn in enumerate((-1.0, 1.0)):
            ear[f"ear{j}_x"], ear[f"ear{j}_y"] = geo.project_head(p, n, sgn * (p["face_w"] + 0.5 * p["ear_out"]),
                                                                  p["ear_y"], -0.2)
        scalars.update(ear)
        scalars.update(cos_roll=np.cos(n["roll"]), sin_roll=np.sin(n["roll"]), inv_scale=1.0 / n["scale"],
                       cos_yaw=np.cos(n["yaw"]), sin_yaw=np.sin(n["yaw"]), cos_pitch=np.cos(n["pitch"]),
                       sin_pitch=np.sin(n["pitch"]), inv_face_w=1.0 / p["face_w"], inv_face_h=1.0 / p["face_h"],
                       nose_dx=ndx, nose_dy=ndy, chin=geo.chin_shift(n), aa=(2.0 / size) / n["scale"],
                       hair_shift=0.12 * np.sin(n["yaw"]))
        for k in range(MAX_MOLES):
            scalars.update({f"mole{k}_x": p["mole_x"][:, k], f"mole{k}_y": p["mole_y"][:, k],
                            f"mole{k}_r": np.where(p["mole_r"][:, k] > 0, p["mole_r"][:, k], -1.0)})
        t = self._tensors(scalars)
        skin = SKIN_TONES[p["skin"].astype(int)] * n["skin_jit"][:, None]
        hair_rgb = HAIR_COLORS[p["hair_color"].astype(int)] * n["hair_jit"][:, None]
        col = {
            "skin": self._colors(skin),
            "skin_dark": self._colors(skin * [0.80, 0.74, 0.72]),
            "lips": self._colors(skin * [0.82, 0.58, 0.58] * (1 - 0.4 * p["lip_red"][:, None])
                                 + np.array([0.75, 0.2, 0.25]) * 0.4 * p["lip_red"][:, None]),
            "hair": self._colors(hair_rgb),
            "brow": self._colors(0.65 * hair_rgb + 0.35 * np.array([0.18, 0.12, 0.08])),
            "iris": self._colors(IRIS_COLORS[p["iris"].astype(int)]),
            "clothes": self._colors([CLOTHING_COLORS[ATTRIBUTES["clothing"][c]] for c in codes["clothing"]]),
            "light": self._colors([SCENE_LIGHT[ATTRIBUTES["scene"][c]] for c in codes["scene"]]),
            "frame": self._colors(FRAME_COLORS[n["frame"].astype(int)]),
            "hat": self._colors([HAT_COLORS[ATTRIBUTES["hat_color"][c]] if c >= 0 else (0, 0, 0)
                                 for c in codes["hat_color"]]),
        }
        gains = np.stack([1 + n["warmth"], 1 + n["tint"], 1 - n["warmth"]], axis=1) * n["exposure"][:, None]
        col["gains"] = self._colors(gains)
        tile = lambda v, m: torch.from_numpy(np.floor(v * m).astype(np.int64)).to(self.device)  # noqa: E731
        nz_all = sample_noise(self.bank, tile(n["tile"], NOISE_TILES), tile(n["tile_ox"], size),
                              tile(n["tile_oy"], size), tile(n["tile_flip"], 2))
        nz = dict(zip(NOISE_CHANNELS, nz_all, strict=True))
        scene_u = torch.from_numpy(n["scene_u"].astype(np.float32)).to(self.device)

        img = torch.empty((b, 3, size, size), dtype=torch.float32, device=self.device)
        aa_img = 2.0 / size
        for k, name in enumerate(ATTRIBUTES["scene"]):
            idx = self._subset(codes["scene"] == k)
            if idx is None:
                continue
            sub_nz = {c: v[idx] for c, v in nz.items()}
            img[idx] = PAINTERS[name](self.X, self.Y, scene_u[idx], sub_nz, aa_img)

        X, Y = self.X, self.Y
        hx, hy = geo.head_grid(X, Y, t)
        fx, fy, (qx, qy, qz) = geo.face_grid(hx, hy, t)
        aa = t["aa"]
        hat_brim = torch.from_numpy(np.where(codes["hat"] > 0, -0.62 * p["face_h"], -_FAR).astype(np.float32))
        hat_brim = hat_brim.to(self.device).view(-1, 1, 1)
        hair_clip = soft(hat_brim + 0.02 - hy, aa)  # hair hidden above a hat's brim

        hair_tex = col["hair"] * (0.8 + 0.35 * nz["streak"] + 0.25 * t["hair_curl"] * (nz["fine"] - 0.5)).unsqueeze(1)
        # ---- hair behind the head
        hxs = hx + t["hair_shift"]
        back_d, back = self._hair_back(hxs, hy, t, aa)
        back = back * hair_clip * t["hair_density"]
        paint(img, back, hair_tex)
        # ---- neck and clothes
        body = self._body(img, X, Y, t, col, nz, codes)
        # ---- ears
        for j in range(2):
            ex, ey = hx - t[f"ear{j}_x"], hy - t[f"ear{j}_y"]
            rx = 0.5 * t["ear_size"] + 0.3 * t["ear_out"]
            paint(img, soft(ellipse_d(ex, ey, rx, t["ear_size"]), aa), col["skin"])
            inner = soft(ellipse_d(ex, ey - 0.02, 0.45 * rx, 0.55 * t["ear_size"]), aa)
            paint(img, inner * 0.7, col["skin_dark"] * 0.85)
        # ---- face
        face_d = self._outline_d(hx, hy, t)
        face = soft(face_d, aa)
        skin_tex = col["skin"] * (0.96 + 0.08 * nz["fine"]).unsqueeze(1)
        paint(img, face, skin_tex)
        front = face  # features only on the face
        blush = soft(ellipse_d(fx.abs() - 0.55 * t["face_w"], fy - t["nose_y"] + 0.05, 0.22, 0.14), 0.15)
        paint(img, blush * front * (0.1 + 0.3 * t["x_smile"]), self._colors(np.tile([[0.9, 0.45, 0.45]], (b, 1))))
        self._marks(img, fx, fy, t, front, aa, codes, p)
        self._nose(img, fx, fy, t, col, front, aa)
        beard_idx = self._subset(p["beard"] > 0)
        if beard_idx is not None:
            self._beard(img, beard_idx, fx, fy, face_d, t, col, nz, aa)
        self._mouth(img, fx, fy, t, col, front, aa)
        self._eyes(img, fx, fy, t, col, front, aa)
        self._brows(img, fx, fy, t, col, front, aa)
        # ---- hair in front of the face
        line = t["hair_hairline"] + t["hair_temple"] * (fx * t["inv_face_w"]).square() + t["hair_part_tilt"] * fx
        fringe = t["hair_bangs"] + t["hair_bangs_jag"] * tri(fx * 7.0)
        top = soft(fy - torch.maximum(line, fringe), aa)
        curtain = soft(t["hair_curtain"] - hxs.abs(), aa) * soft(hy - t["hair_curtain_bottom"], aa)
        front_hair = torch.maximum(top, curtain) * soft(back_d, aa) * hair_clip * t["hair_density"]
        paint(img, front_hair, hair_tex)
        # ---- glasses and hats
        g_idx = self._subset(codes["glasses"] > 0)
        if g_idx is not None:
            self._glasses(img, g_idx, fx, fy, hx, t, col, codes, aa)
        hat_alpha = torch.zeros_like(face)
        for k, name in enumerate(ATTRIBUTES["hat"]):
            idx = self._subset(codes["hat"] == k) if k > 0 else None
            if idx is not None:
                hat_alpha[idx] = self._hat(img, idx, name, hx[idx] + 0.5 * t["hair_shift"][idx], hy[idx], t, col, aa)
        # ---- light: shading of the person (head-shaped normals), the scene's light colour
        person = 1.0 - (1.0 - back) * (1.0 - body) * (1.0 - face) * (1.0 - hat_alpha)
        r2 = (qx * qx + qy.clamp(-1.3, 1.0).square()).clamp_(min=1.0)
        inv = torch.rsqrt(r2)
        nx, ny = qx * inv, qy.clamp(-1.3, 1.0) * inv
        nzv = torch.sqrt((1.0 - nx * nx - ny * ny).clamp_(min=0.0))
        lam = (nx * t["light_x"] + ny * t["light_y"] + nzv * t["light_z"]).clamp_(0.0, 1.0)
        shade = (1.0 - 0.6 * t["light_k"]) + 1.1 * t["light_k"] * lam
        gain = 1.0 + person.unsqueeze(1) * (shade.unsqueeze(1) * col["light"] - 1.0)
        img.mul_(gain).mul_(col["gains"])
        # ---- style
        for k, name in enumerate(ATTRIBUTES["style"]):
            idx = self._subset(codes["style"] == k)
            if idx is not None:
                img[idx] = self._style(name, img[idx], {c: v[idx] for c, v in nz.items()})
        img = img.clamp_(0.0, 1.0).mul_(255.0).add_(0.5).floor_()
        return img.to(torch.uint8).permute(0, 2, 3, 1)

    def _subset(self, mask: np.ndarray) -> torch.Tensor | None:
        idx = np.flatnonzero(mask)
        return torch.from_numpy(idx).to(self.device) if len(idx) else None

    # ------------------------------------------------------------------------------- face parts
    @staticmethod
    def _outline_d(hx, hy, t):
        """Signed distance (about head units) to the face outline: an ellipse with a narrower, squarer jaw."""
        tt = (hy * t["inv_face_h"]).clamp(0.0, 1.0)
        t2 = tt * tt
        tp = t2 + (t2 * t2 - t2) * t["jaw_sq"]
        width = t["face_w"] * (1.0 - (1.0 - t["jaw_w"]) * tp)
        x = (hx - t["chin"] * tt * t["face_w"]) / width
        y = hy * t["inv_face_h"]
        return (torch.sqrt(x * x + y * y) - 1.0) * t["face_w"]

    @staticmethod
    def _hair_back(hx, hy, t, aa):
        """The hair mass behind the head: (signed distance, coverage)."""
        rx = t["face_w"] + t["hair_vol_side"] + t["hair_wave"] * tri(hy * 2.5)
        ry = t["face_h"] + t["hair_vol_top"] + t["hair_top_jag"] * tri(hx * 3.5)
        upper = ellipse_d(hx, hy, rx, ry)
        lower = hx.abs() - rx * (1.0 + t["hair_flare"] * (hy * t["inv_face_h"]).clamp(min=0.0))
        d = torch.where(hy < 0, upper, lower)
        d = torch.maximum(d, hy - t["hair_bottom"] - 0.06 * tri(hx * 4.0))
        for k in ("b1", "b2"):
            blob = ellipse_d(hx - t[f"hair_{k}x"], hy - t[f"hair_{k}y"], t[f"hair_{k}rx"], t[f"hair_{k}ry"])
            d = torch.minimum(d, blob)
        return d, soft(d, aa)

    def _body(self, img, X, Y, t, col, nz, codes):
        """Neck (skin) and shoulders (clothes with a neckline per garment); returns the coverage."""
        bx = (X - t["tx"]) * t["inv_scale"]
        by = (Y - t["ty"]) * t["inv_scale"]
        aa = t["aa"]
        neck_w = 0.5 * t["face_w"]
        neck = soft(torch.maximum((bx - 0.3 * t["sin_yaw"]).abs() - neck_w, 0.3 - by), aa)
        paint(img, neck, col["skin_dark"])
        y_sh = t["face_h"] + 0.32
        shoulders = soft(torch.maximum(y_sh + 0.12 * bx * bx - by, bx.abs() - 2.8), aa)
        garment = t["garment"]
        crew = ellipse_d(bx, by - y_sh + 0.02, 1.25 * neck_w, 0.3)
        vneck = torch.maximum(bx.abs() - (by - y_sh + 0.15) * 0.42, by - y_sh - 0.55)
        cut = torch.where(garment == 1, torch.minimum(crew, vneck), crew)
        clothes = shoulders * (1.0 - soft(cut, aa))
        folds = (0.86 + 0.22 * nz["streak"]).unsqueeze(1)
        paint(img, clothes, col["clothes"] * folds)
        # collared shirt: two flaps and a button line; sweater: ribbed neckline
        xc = bx.abs() - 0.6 * neck_w
        flap = torch.maximum(torch.maximum(-xc, xc - 1.1 * neck_w), torch.maximum(y_sh - 0.15 - by,
                                                                                   by - (y_sh + 0.35 - 0.45 * xc)))
        is_shirt = (garment == 2).float()
        paint(img, soft(flap, aa) * is_shirt * shoulders, col["clothes"] * 0.7 + 0.3)
        buttons = soft(torch.maximum(bx.abs() - 0.025, y_sh + 0.2 - by), aa) * is_shirt * clothes
        paint(img, buttons, col["clothes"] * 0.5)
        rib = soft(cut.abs() - 0.05, aa) * (garment == 1).float() * shoulders
        paint(img, rib, col["clothes"] * 0.75)
        return torch.maximum(neck, shoulders)

    def _marks(self, img, fx, fy, t, front, aa, codes, p):
        mole_c = self._colors(np.tile([[0.30, 0.18, 0.12]], (len(p["face_w"]), 1)))
        for k in range(MAX_MOLES):
            d = torch.sqrt((fx - t[f"mole{k}_x"]).square() + (fy - t[f"mole{k}_y"]).square()) - t[f"mole{k}_r"]
            paint(img, soft(d, aa) * front, mole_c)
        idx = self._subset(p["freckles"] > 0)
        if idx is None:
            return
        sx, sy = fx[idx] * 7.0, (fy[idx] - 0.1) * 7.0
        cx, cy = torch.floor(sx), torch.floor(sy)
        seed = t["freckle_seed"][idx].to(torch.int64)
        on = hash01(cx.to(torch.int64) * 977 + cy.to(torch.int64) * 131 + seed * 7919, 17) < t["freckles"][idx] * 0.6
        jx = hash01(cx.to(torch.int64) * 51 + cy.to(torch.int64) * 77 + seed, 23) * 0.5 + 0.25
        d = torch.sqrt((sx - cx - jx).square() + (sy - cy - 0.5).square()) / 7.0 - 0.022
        region = soft(ellipse_d(fx[idx], fy[idx] - 0.15, 0.75, 0.32), 0.1)
        a = soft(d, aa[idx]) * on.float() * region * front[idx] * 0.7
        sub = img[idx]
        paint(sub, a, mole_c[idx] * 0.6 + 0.4 * self._colors(np.tile([[0.7, 0.4, 0.25]], (len(idx), 1))))
        img[idx] = sub

    def _nose(self, img, fx, fy, t, col, front, aa):
        w = ((fy - t["eye_y"]) / (t["nose_y"] - t["eye_y"])).clamp(0.0, 1.0)
        nx = fx - t["nose_dx"] * w
        ny = fy - t["nose_dy"] * w
        nw = t["nose_w"]
        bulb = ellipse_d(nx, ny - t["nose_y"] + 0.02, nw, 0.55 * nw + t["nose_tip"])
        under = soft(bulb.abs() - 0.018, aa) * soft(t["nose_y"] - 0.02 - ny, aa)  # the lower outline
        nostril = soft(ellipse_d(nx.abs() - 0.5 * nw, ny - t["nose_y"] - 0.01, 0.045, 0.026), aa)
        side = torch.where(t["light_x"] > 0, -1.0, 1.0)
        bridge = soft((nx - side * 0.45 * nw).abs() - 0.025 * (0.5 + w), aa)
        span = soft(torch.maximum(t["eye_y"] + 0.08 - ny, ny - t["nose_y"]), aa)
        bridge = bridge * span * (0.25 + 0.5 * t["nose_bridge"])
        paint(img, torch.maximum(bridge * 0.6, under * 0.7) * front, col["skin_dark"] * 0.85)
        paint(img, nostril * front * 0.9, col["skin_dark"] * 0.5)
        tip = soft(ellipse_d(nx, ny - t["nose_y"] + 0.06, 0.4 * nw, 0.04), 0.08)
        paint(img, tip * front * 0.25, col["skin"] * 1.15)

    def _beard(self, img, idx, fx, fy, face_d, t, col, nz, aa):
        fx, fy, face_d = fx[idx], fy[idx], face_d[idx]
        g = {k: t[k][idx] for k in ("beard", "beard_t", "mouth_y", "mouth_w", "nose_y", "face_w", "face_h",
                                    "x_mouth_lift")}
        kind = g["beard"]
        my = g["mouth_y"] - 0.6 * g["x_mouth_lift"]
        stache = ellipse_d(fx, fy - my + 0.085, 1.15 * g["mouth_w"], 0.06 + 0.02 * g["beard_t"])
        chin = ellipse_d(fx, fy - (my + g["face_h"]) * 0.5 - 0.08, 0.75 * g["mouth_w"] + 0.05,
                         (g["face_h"] - my) * 0.55 + 0.05)
        cheek_line = g["nose_y"] + 0.05 - 0.35 * (fx / g["face_w"]).square()
        full = torch.maximum(cheek_line - fy, face_d - 0.1 * g["beard_t"])
        d = torch.where(kind == 2, stache, torch.where(kind == 3, torch.minimum(stache, chin), full))
        d = torch.maximum(d, face_d - 0.12 * g["beard_t"])  # grows a little beyond the jaw
        density = torch.where(kind == 1, 0.35 + 0.1 * g["beard_t"], 0.95 + 0.0 * g["beard_t"])
        tex = (0.6 + 0.8 * nz["white"][idx]).clamp(0, 1)
        a = soft(d, aa[idx]) * density * torch.where(kind == 1, tex, torch.ones_like(tex))
        sub = img[idx]
        paint(sub, a, col["hair"][idx] * (0.8 + 0.3 * nz["fine"][idx]).unsqueeze(1))
        img[idx] = sub

    def _mouth(self, img, fx, fy, t, col, front, aa):
        mw, lift, opening = t["x_mouth_w"], t["x_mouth_lift"], t["x_mouth_open"]
        u = fx / mw
        v = fy - t["mouth_y"] + lift * u * u  # 0 on the lips' middle line
        top_h = t["lip_top"] + 0.5 * opening
        bot_h = t["lip_bot"] + 0.5 * opening
        vh = torch.where(v < 0, v / top_h, v / bot_h)
        lips_d = (torch.sqrt(u * u + vh * vh) - 1.0) * torch.minimum(top_h, mw)
        paint(img, soft(lips_d, aa) * front, col["lips"])
        inner = ellipse_d(fx, v, 0.85 * mw, 0.5 * opening + 0.004)
        dark = self._colors(np.tile([[0.28, 0.05, 0.06]], (img.shape[0], 1)))
        paint(img, soft(inner, aa) * front, dark)
        # a smile shows the upper teeth: the upper part of the opening, above a line below its middle
        teeth = soft(inner + 0.012, aa) * soft(v - 0.15 * opening, aa) * (t["x_smile"] > 0).float()
        paint(img, teeth * front, self._colors(np.tile([[0.97, 0.95, 0.9]], (img.shape[0], 1))))
        closed = soft(v.abs() - 0.012, aa) * soft(u.abs() - 1.0, 0.1) * (opening < 0.02).float()
        paint(img, closed * front * 0.8, dark)

    def _eyes(self, img, fx, fy, t, col, front, aa):
        sgn = torch.where(fx < 0, -1.0, 1.0)
        ex = fx.abs() - t["eye_dx"]
        ey = fy - t["eye_y"] + t["eye_tilt"] * ex
        eh = t["x_eye_h"]
        eye_d = ellipse_d(ex, ey, t["eye_w"], eh)
        white = soft(eye_d, aa) * front
        paint(img, white, self._colors(np.tile([[0.93, 0.91, 0.88]], (img.shape[0], 1))))
        ix = ex - sgn * t["gaze_x"]
        iy = ey - t["gaze_y"]
        r = torch.sqrt(ix * ix + iy * iy)
        paint(img, soft(r - t["iris_r"], aa) * white, col["iris"])
        pupil = self._colors(np.tile([[0.02, 0.02, 0.02]], (img.shape[0], 1)))
        paint(img, soft(r - 0.45 * t["iris_r"], aa) * white, pupil)
        lid = soft((eye_d + 0.012).abs() - 0.02, aa) * soft(ey + 0.3 * eh, aa * 2) * front
        paint(img, lid, self._colors(np.tile([[0.10, 0.06, 0.05]], (img.shape[0], 1))))

    def _brows(self, img, fx, fy, t, col, front, aa):
        bx = fx.abs() - t["eye_dx"] - t["brow_shift"]
        u = bx / t["brow_w"]
        by = fy - (t["eye_y"] - t["brow_dy"] - t["x_brow_raise"]) + t["brow_arch"] * (1.0 - u * u) + t["brow_tilt"] * bx
        thick = t["brow_t"] * (1.0 - 0.35 * u.clamp(0.0, 1.0))
        d = torch.maximum(by.abs() - thick, bx.abs() - t["brow_w"])
        paint(img, soft(d, aa) * front, col["brow"])

    def _glasses(self, img, idx, fx, fy, hx, t, col, codes, aa):
        fx, fy, hx, aa = fx[idx], fy[idx], hx[idx], aa[idx]
        ew, ey, edx, fw = t["eye_w"][idx], t["eye_y"][idx], t["eye_dx"][idx], t["face_w"][idx]
        sun = torch.from_numpy(codes["glasses"] == 2).to(self.device)[idx].view(-1, 1, 1)
        gx = fx.abs() - edx
        gy = fy - ey - 0.01
        rx, ry = 1.25 * ew + 0.05, 0.75 * ew + 0.05
        lens = ellipse_d(gx, gy, rx, torch.where(sun, ry * 1.05, ry))
        ft = 0.05
        rim = soft(lens.abs() - ft, aa)
        bridge = soft(torch.maximum(fx.abs() - (edx - rx + 0.02), (gy + 0.03).abs() - 0.7 * ft), aa)
        temple = soft(torch.maximum((gy + 0.02).abs() - 0.7 * ft, -(gx - rx)), aa) * soft(hx.abs() - fw, aa)
        sub = img[idx]
        fill = torch.where(sun, 0.93, 0.15) * soft(lens, aa)
        dark_lens = torch.tensor([0.04, 0.05, 0.08], device=self.device).view(1, 3, 1, 1)
        lens_c = torch.where(sun.view(-1, 1, 1, 1), dark_lens,
                             torch.tensor([0.85, 0.92, 1.0], device=self.device).view(1, 3, 1, 1))
        paint(sub, fill, lens_c)
        paint(sub, torch.maximum(torch.maximum(rim, bridge), temple), col["frame"][idx])
        glare = soft(ellipse_d(gx + 0.3 * rx, gy + 0.35 * ry, 0.3 * rx, 0.12 * ry), aa) * sun.float()
        paint(sub, glare * 0.5, torch.ones_like(lens_c))
        img[idx] = sub

    def _hat(self, img, idx, name, hx, hy, t, col, aa):
        """Draw a hat of kind `name` on items idx (head frame hx, hy of those items); returns coverage."""
        g = {k: t[k][idx] for k in ("face_w", "face_h", "hair_vol_top")}
        aa = aa[idx]
        c = col["hat"][idx]
        fw, fh = g["face_w"], g["face_h"]
        brim = -0.62 * fh
        top = -fh - 0.6 * g["hair_vol_top"].clamp(max=0.25)
        sub = img[idx]
        if name == "cap":
            crown = soft(torch.maximum(ellipse_d(hx, hy - brim, 1.06 * fw, brim - top + 0.08), hy - brim), aa)
            visor = soft(torch.maximum(ellipse_d(hx, hy - brim, 1.1 * fw, 0.2), brim - hy), aa)
            button = soft(ellipse_d(hx, hy - top + 0.06, 0.08, 0.06), aa)
            seam = soft(hx.abs() - 0.02, aa) * crown
            paint(sub, crown, c)
            paint(sub, seam * 0.5, c * 0.6)
            paint(sub, visor, c * 0.7)
            paint(sub, button, c * 0.8)
            cover = torch.maximum(crown, visor)
        elif name == "beanie":
            dome = ellipse_d(hx, hy - brim - 0.05, 1.1 * fw, brim - top + 0.25)
            dome = soft(torch.maximum(dome, hy - brim - 0.08), aa)
            cuff = soft((hy - brim + 0.05).abs() - 0.13, aa) * dome
            ribs = (tri(hx * 9.0) > 0.5).float() * cuff
            pom = soft(ellipse_d(hx, hy - (top - 0.22), 0.22, 0.2), aa)
            paint(sub, dome, c)
            paint(sub, cuff, c * 0.82)
            paint(sub, ribs * 0.5, c * 0.6)
            paint(sub, pom, c * 0.5 + 0.45)
            cover = torch.maximum(dome, pom)
        elif name == "cowboy hat":
            crown_top = brim - 0.95 - 0.1 * tri(hx * 1.2 + 0.5)
            crown = soft(torch.maximum(hx.abs() - 0.8 * fw + (hy - brim) * 0.15, crown_top - hy), aa)
            crown = crown * soft(hy - brim, aa)
            band = soft((hy - brim + 0.16).abs() - 0.07, aa) * crown
            wide = soft(ellipse_d(hx, hy - brim + 0.02, 2.0 * fw, 0.24), aa)
            paint(sub, crown, c)
            paint(sub, band, c * 0.4)
            paint(sub, wide, c * 0.85)
            cover = torch.maximum(crown, wide)
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
            pom = soft(ellipse_d(hx, hy - apex, 0.14, 0.14), aa)
            paint(sub, cone, c)
            paint(sub, stripes, c * 0.35 + 0.6)
            paint(sub, pom, c * 0.3 + 0.65)
            cover = torch.maximum(cone, pom)
        img[idx] = sub
        return cover

    # -------------------------------------------------------------------------------- styles
    @staticmethod
    def _style(name: str, img: torch.Tensor, nz: dict) -> torch.Tensor:
        """img [b, 3, H, W] in [0, 1] (about) -> the same in the style."""
        if name == "photo":
            return img + (nz["white"] - 0.5).unsqueeze(1) * 0.05
        lum = (0.3 * img[:, 0] + 0.59 * img[:, 1] + 0.11 * img[:, 2]).clamp(0.0, 1.0)
        if name == "painting":
            sat = lum.unsqueeze(1) + (img - lum.unsqueeze(1)) * 1.35
            dither = (nz["streak"] - 0.5).unsqueeze(1) * 0.9
            levels = 5.0
            poster = torch.floor(sat.clamp(0.0, 1.0) * levels + dither + 0.5) / levels
            canvas = (0.92 + 0.1 * nz["fine"]).unsqueeze(1)
            return (0.75 * poster + 0.25 * sat) * canvas
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
        paper = torch.tensor([0.98, 0.96, 0.91], device=img.device).view(1, 3, 1, 1)
        return paper * wash * pencil.unsqueeze(1)
