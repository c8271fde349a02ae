"""The face crop the identity module sees: the largest square of the photo, centred on the face.

data_prep crops every pretraining photo this way and personalize.refine crops the person's photos
the same way, so refinement optimises on crops like the ones the module was trained on.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def square_crop(width: int, height: int, box) -> tuple[int, int, int]:
    """The largest square (x0, y0, side) inside a width x height photo, centred on the face box
    (x1, y1, x2, y2) as far as the photo allows.

    The box is taken in float32, the face detector's precision, so a box stored as Python floats
    (an identity record's) gives the same window as the detector's array.
    """
    box = np.asarray(box, dtype=np.float32)
    side = min(width, height)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    x0 = int(np.clip(round(cx - side / 2), 0, width - side))
    y0 = int(np.clip(round(cy - side / 2), 0, height - side))
    return x0, y0, side


def face_crop(rgb: np.ndarray, box, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(crop [size, size, 3] uint8, face box [4] float32 in crop pixels, clipped to the crop).

    rgb [H, W, 3] uint8, box (x1, y1, x2, y2) in photo pixels. The square_crop window, resized
    bicubically when its side is not `size`.
    """
    h, w = rgb.shape[:2]
    x0, y0, side = square_crop(w, h, box)
    crop = Image.fromarray(rgb[y0:y0 + side, x0:x0 + side])
    if side != size:
        crop = crop.resize((size, size), Image.BICUBIC)
    box = np.asarray(box, dtype=np.float32).astype(np.float64)
    crop_box = ((box - [x0, y0, x0, y0]) * (size / side)).clip(0, size).astype(np.float32)
    return np.asarray(crop, dtype=np.uint8), crop_box
