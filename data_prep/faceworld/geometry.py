"""Per-render nuisance (pose, light, colour, expression strength) and the maps between the image and
the face.

Frames:
* image: X, Y in [-1, 1] over the picture (y down); pixel column i has its centre at
  X = (i + 0.5) * 2 / size - 1, i.e. pixel coordinate px = (X + 1) * size / 2 - 0.5 (OpenCV's
  convention: pixel centres at integers), which is what face boxes and landmarks use.
* head: the image frame undone by the head's position (tx, ty), scale and roll; head units.
* face (canonical): the head frame seen on an ellipsoid (radii face_w, face_h, face_w) turned back
  by yaw and pitch. Eyes, brows, nose, mouth, beard, marks and glasses are drawn in this frame, so
  they shift and foreshorten with the head turn; the outline, ears, hair and hats are drawn in the
  head frame.

The pixel grids take the inverse maps (torch, any device); landmarks and boxes take the forward
maps (numpy float64) of the very same formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data_prep.faceworld.hashing import STREAM_NUISANCE, Draws, uniforms
from data_prep.faceworld.identity import Identities
from data_prep.faceworld.scenes import SCENE_UNIFORMS

NOSE_PROTRUSION = 0.24  # nose tip height above the face ellipsoid, normalised units
FACE_TOP = -0.8  # the face box starts at this fraction of face_h above the centre (forehead)


@dataclass(frozen=True)
class Look:
    """What a renderer version draws differently (render.VERSIONS names them).

    head_scale multiplies the head's size in the picture. The expression fields are (smiling, surprised)
    changes at full expression strength: eye_h and mouth_w relative to the person's own, brow_raise and
    mouth_open in face units; mouth_lift raises a smile's corners. frame: half the glasses frame's
    thickness, face units.
    """

    head_scale: float
    eye_h: tuple[float, float]
    brow_raise: tuple[float, float]
    mouth_w: tuple[float, float]
    mouth_lift: float
    mouth_open: tuple[float, float]
    frame: float


SUBTLE = Look(head_scale=1.0, eye_h=(-0.45, 0.55), brow_raise=(0.02, 0.15), mouth_w=(0.3, -0.45), mouth_lift=0.12,
              mouth_open=(0.17, 0.32), frame=0.05)


def sample_nuisance(seed: int, identities, renders, look: Look = SUBTLE) -> dict[str, np.ndarray]:
    """float64 [B] per name (scene_u: [B, SCENE_UNIFORMS]); a pure function of (seed, identity, render)."""
    d = Draws(uniforms(seed, STREAM_NUISANCE, identities, renders, 64))
    n: dict[str, np.ndarray] = {}
    n["yaw"] = d.normal(0.0, 0.26, clip=2.3)  # radians, + turns the face towards image right
    n["pitch"] = d.normal(0.0, 0.12, clip=2.2)  # + looks up
    n["roll"] = d.normal(0.0, 0.10, clip=2.5)
    n["scale"] = 0.36 * d.uniform(0.88, 1.12) * look.head_scale  # image half-widths per head unit
    n["tx"] = d.uniform(-0.10, 0.10)
    n["ty"] = -0.10 + d.uniform(-0.07, 0.07)
    az = d.uniform(0.0, 2.0 * np.pi)
    lz = d.uniform(0.3, 0.9)
    n["light_x"] = np.sqrt(1 - lz**2) * np.cos(az)
    n["light_y"] = np.sqrt(1 - lz**2) * np.sin(az)
    n["light_z"] = lz
    n["light_k"] = d.uniform(0.15, 0.75)  # strength of the directional part
    n["warmth"] = d.uniform(-0.12, 0.12)  # white balance: + warmer
    n["tint"] = d.uniform(-0.04, 0.04)
    n["exposure"] = d.uniform(0.80, 1.18)
    n["gaze_x"] = d.uniform(-0.025, 0.025)
    n["gaze_y"] = d.uniform(-0.015, 0.015)
    n["amount"] = d.uniform(0.75, 1.0)  # expression strength
    n["garment"] = d.choice([1, 1, 1]).astype(np.float64)  # t-shirt, v-neck sweater, collared shirt
    n["frame"] = d.choice([2, 1, 1]).astype(np.float64)  # glasses frame colour
    n["tile"] = d.take()
    n["tile_ox"] = d.take()
    n["tile_oy"] = d.take()
    n["tile_flip"] = d.take()
    n["skin_jit"] = d.uniform(0.94, 1.06)
    n["hair_jit"] = d.uniform(0.90, 1.10)
    n["scene_u"] = d.take(SCENE_UNIFORMS)
    return n


def expression_layout(p: dict[str, np.ndarray], n: dict[str, np.ndarray], expression: np.ndarray,
                      look: Look = SUBTLE) -> dict:
    """Face feature geometry after the expression (0 neutral, 1 smiling, 2 surprised): [B] arrays."""
    smile = (expression == 1) * n["amount"]
    surprise = (expression == 2) * n["amount"]
    return {
        "eye_h": p["eye_h"] * (1 + look.eye_h[0] * smile + look.eye_h[1] * surprise),
        "brow_raise": look.brow_raise[1] * surprise + look.brow_raise[0] * smile,
        "mouth_w": p["mouth_w"] * (1 + look.mouth_w[0] * smile + look.mouth_w[1] * surprise),
        "mouth_lift": 0.015 * p["mouth_curve"] + look.mouth_lift * smile,  # corners above the centre
        "mouth_open": look.mouth_open[0] * smile + look.mouth_open[1] * surprise,
        "smile": smile,
        "surprise": surprise,
    }


# ------------------------------------------------------------------------------- forward (numpy)
def project(p: dict, n: dict, fx, fy, dz=0.0) -> tuple[np.ndarray, np.ndarray]:
    """Face-frame points ([B] or [B, K]) on the ellipsoid (+ dz above it) -> image X, Y."""
    hx, hy = project_head(p, n, fx, fy, dz)
    if np.ndim(fx) == 2:
        n = {k: (v[:, None] if np.ndim(v) == 1 else v) for k, v in n.items()}
    return head_to_image(n, hx, hy)


def project_head(p: dict, n: dict, fx, fy, dz=0.0) -> tuple[np.ndarray, np.ndarray]:
    """Face-frame points ([B] or [B, K]) on the ellipsoid (+ dz above it) -> head frame hx, hy."""
    rx, ry = p["face_w"], p["face_h"]
    if np.ndim(fx) == 2:
        rx, ry = rx[:, None], ry[:, None]
        n = {k: (v[:, None] if np.ndim(v) == 1 else v) for k, v in n.items()}
    cx, cy = fx / rx, fy / ry
    cz = np.sqrt(np.clip(1.0 - cx**2 - cy**2, 0.0, None)) + dz
    cp, sp = np.cos(n["pitch"]), np.sin(n["pitch"])
    cyw, syw = np.cos(n["yaw"]), np.sin(n["yaw"])
    y1 = cp * cy - sp * cz
    z1 = sp * cy + cp * cz
    x2 = cyw * cx + syw * z1
    return x2 * rx, y1 * ry


def head_to_image(n: dict, hx, hy) -> tuple[np.ndarray, np.ndarray]:
    cr, sr = np.cos(n["roll"]), np.sin(n["roll"])
    s = n["scale"]
    return n["tx"] + s * (cr * hx - sr * hy), n["ty"] + s * (sr * hx + cr * hy)


def head_to_face_np(p: dict, n: dict, hx, hy) -> tuple[np.ndarray, np.ndarray]:
    """The inverse map of `project` (dz = 0) for head-frame points: numpy twin of pose_grid."""
    rx, ry = p["face_w"], p["face_h"]
    qx, qy = hx / rx, hy / ry
    qz = np.sqrt(np.clip(1.0 - qx**2 - qy**2, 0.0, None))
    cyw, syw = np.cos(n["yaw"]), np.sin(n["yaw"])
    cp, sp = np.cos(n["pitch"]), np.sin(n["pitch"])
    x1 = cyw * qx - syw * qz
    z1 = syw * qx + cyw * qz
    y2 = cp * qy + sp * z1
    return x1 * rx, y2 * ry


def image_to_head_np(n: dict, X, Y) -> tuple[np.ndarray, np.ndarray]:
    cr, sr = np.cos(n["roll"]), np.sin(n["roll"])
    dx, dy = X - n["tx"], Y - n["ty"]
    return (cr * dx + sr * dy) / n["scale"], (cr * dy - sr * dx) / n["scale"]


def nose_shift(p: dict, n: dict) -> tuple[np.ndarray, np.ndarray]:
    """Where the protruding nose tip lands, as an offset in the face frame from its base (0, nose_y)."""
    X, Y = project(p, n, np.zeros_like(p["nose_y"]), p["nose_y"], NOSE_PROTRUSION)
    hx, hy = image_to_head_np(n, X, Y)
    fx, fy = head_to_face_np(p, n, hx, hy)
    return fx, fy - p["nose_y"]


def chin_shift(n: dict) -> np.ndarray:
    """Sideways shift of the jaw outline with the head turn, head units per unit of depth below centre."""
    return 0.22 * np.sin(n["yaw"])


def outline_half_width(p: dict, hy: np.ndarray) -> np.ndarray:
    """Half-width of the face outline at head-frame height hy (numpy twin of the torch outline)."""
    t = np.clip(hy / p["face_h"], 0.0, 1.0)
    t2 = t * t
    tp = t2 + (t2 * t2 - t2) * p["jaw_sq"]
    w = p["face_w"] * (1.0 - (1.0 - p["jaw_w"]) * tp)
    return w * np.sqrt(np.clip(1.0 - (hy / p["face_h"]) ** 2, 0.0, None))


def to_pixels(v: np.ndarray, size: int) -> np.ndarray:
    return (v + 1.0) * (size / 2.0) - 0.5


def landmarks_and_box(ids: Identities, n: dict, layout: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 [B, 5, 2] landmarks (image-left eye, image-right eye, nose tip, image-left and
    image-right mouth corner: insightface's order) and float32 [B, 4] face boxes (x1, y1, x2, y2),
    both in pixel coordinates of a `size` image."""
    p = ids.p
    ex, ey = p["eye_dx"], p["eye_y"]
    mw, my = layout["mouth_w"], p["mouth_y"] - layout["mouth_lift"]
    fx = np.stack([-ex, ex, -mw, mw], axis=1)
    fy = np.stack([ey, ey, my, my], axis=1)
    X, Y = project(p, n, fx, fy)
    NX, NY = project(p, n, np.zeros_like(ex), p["nose_y"], NOSE_PROTRUSION)
    lm = np.stack([np.stack([X[:, 0], Y[:, 0]], 1), np.stack([X[:, 1], Y[:, 1]], 1), np.stack([NX, NY], 1),
                   np.stack([X[:, 2], Y[:, 2]], 1), np.stack([X[:, 3], Y[:, 3]], 1)], axis=1)
    # face box: the outline from the forehead (FACE_TOP) down to the chin, both sides
    k = np.linspace(FACE_TOP, 1.0, 25)[None, :] * p["face_h"][:, None]
    half = outline_half_width({key: v[:, None] for key, v in p.items() if np.ndim(v) == 1}, k)
    shift = chin_shift(n)[:, None] * np.clip(k / p["face_h"][:, None], 0.0, 1.0) * p["face_w"][:, None]
    hx = np.concatenate([shift - half, shift + half], axis=1)
    hy = np.concatenate([k, k], axis=1)
    BX, BY = head_to_image({key: (v[:, None] if np.ndim(v) == 1 else v) for key, v in n.items()}, hx, hy)
    box = np.stack([BX.min(1), BY.min(1), BX.max(1), BY.max(1)], axis=1)
    return to_pixels(lm, size).astype(np.float32), to_pixels(box, size).astype(np.float32)


def feature_box(p: dict, n: dict, layout: dict, side: float, below: float) -> tuple[np.ndarray, ...]:
    """Image-space box (x0, y0, x1, y1; [B] each) holding every face-frame feature and the ears: the face
    outline widened by `side` head units, from above the highest feature (brows, moles, glasses,
    freckles, ears; projected through the pose) down to `below` under the chin."""
    top = np.minimum(p["eye_y"] - p["brow_dy"] - layout["brow_raise"] - p["brow_t"] - 0.08, p["eye_y"] - 0.3)
    top = np.minimum(top, np.min(np.where(p["mole_r"] > 0, p["mole_y"] - p["mole_r"], 0.0), axis=1))
    top = np.minimum(top, np.minimum(-0.2, p["ear_y"] - p["ear_size"] - 0.12))
    xs = np.stack([-0.8 * p["face_w"], np.zeros_like(top), 0.8 * p["face_w"]], axis=1)
    _, hy_top = project_head(p, n, xs, np.repeat(top[:, None], 3, axis=1))
    lo = np.maximum(np.min(hy_top, axis=1) - 0.1, -p["face_h"])
    k = np.linspace(0.0, 1.0, 17)[None, :]
    hy = lo[:, None] + (p["face_h"][:, None] + below - lo[:, None]) * k
    cols = {key: v[:, None] for key, v in p.items() if np.ndim(v) == 1}
    half = outline_half_width(cols, np.minimum(hy, cols["face_h"])) + side
    shift = chin_shift(n)[:, None] * np.clip(hy / cols["face_h"], 0.0, 1.0) * cols["face_w"]
    nn = {key: (v[:, None] if np.ndim(v) == 1 else v) for key, v in n.items()}
    X, Y = head_to_image(nn, np.concatenate([shift - half, shift + half], 1), np.concatenate([hy, hy], 1))
    return X.min(1), Y.min(1), X.max(1), Y.max(1)


# ------------------------------------------------------------------------------- inverse (torch)
def grid_constants(p: dict, n: dict) -> dict[str, np.ndarray]:
    """Per-item products of the pose that `pose_grid` needs ([B] float64 each)."""
    cr, sr, inv = np.cos(n["roll"]), np.sin(n["roll"]), 1.0 / n["scale"]
    cy, sy, cp, sp = np.cos(n["yaw"]), np.sin(n["yaw"]), np.cos(n["pitch"]), np.sin(n["pitch"])
    fw, fh = p["face_w"], p["face_h"]
    return {"g_rc": cr * inv, "g_rs": sr * inv, "g_fw": 1.0 / fw, "g_fh": 1.0 / fh, "g_xx": cy * fw, "g_xz": -sy * fw,
            "g_yy": cp * fh, "g_yx": sp * sy * fh, "g_yz": sp * cy * fh}


def pose_grid(X: torch.Tensor, Y: torch.Tensor, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Image X [.., 1, W], Y [.., H, 1] -> per pixel [B, H, W]: head frame (hx, hy), the ellipsoid's
    normalised coordinates (qx, qy, qz; qz = 0 off the head) and the face frame (fx, fy).

    The inverse of `project`: undo position, roll and scale, then yaw and pitch on the ellipsoid
    (t: per-item [B, 1, 1] tensors, including grid_constants).
    """
    dx = X - t["tx"]
    dy = Y - t["ty"]
    hx = dx * t["g_rc"] + dy * t["g_rs"]
    hy = dy * t["g_rc"] - dx * t["g_rs"]
    qx = hx * t["g_fw"]
    qy = hy * t["g_fh"]
    qz = torch.addcmul(qx * qx, qy, qy).neg_().add_(1.0).clamp_(min=0.0).sqrt_()
    fx = (qx * t["g_xx"]).addcmul_(qz, t["g_xz"])
    fy = (qy * t["g_yy"]).addcmul_(qx, t["g_yx"]).addcmul_(qz, t["g_yz"])
    return {"hx": hx, "hy": hy, "qx": qx, "qy": qy, "qz": qz, "fx": fx, "fy": fy}
