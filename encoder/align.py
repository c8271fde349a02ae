"""Five-point face alignment to the ArcFace crop (the same geometry insightface's recognisers expect).

Landmarks are in the order left eye, right eye, nose tip, left mouth corner, right mouth corner
(left/right as seen in the image).
"""

from __future__ import annotations

import cv2
import numpy as np

# Where the five landmarks sit in the 112 x 112 crop ArcFace models were trained on.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963],
     [73.5318, 51.5014],
     [56.0252, 71.7366],
     [41.5493, 92.3655],
     [70.7299, 92.2041]], dtype=np.float32)


def arcface_template(size: int = 112) -> np.ndarray:
    """[5, 2] template for a `size` x `size` crop (multiples of 112, or of 128 with the face centred)."""
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    if size % 112 == 0:
        return ARCFACE_TEMPLATE_112 * np.float32(size / 112.0)
    if size % 128 == 0:
        ratio = size / 128.0
        t = ARCFACE_TEMPLATE_112 * np.float32(ratio)
        t[:, 0] += np.float32(8.0 * ratio)
        return t
    raise ValueError(f"crop size must be a multiple of 112 or 128, got {size}")


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking `src` onto `dst`.

    Umeyama's closed form (IEEE TPAMI 13(4), 1991). src, dst: [N, 2] with N >= 2.
    Returns the [2, 3] float64 matrix M with dst ~= M[:, :2] @ p + M[:, 2].
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape:
        raise ValueError(f"expected two [N, 2] point sets of the same shape, got {src.shape} and {dst.shape}")
    if src.shape[0] < 2:
        raise ValueError("need at least two points")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("points must be finite")
    n, dim = src.shape
    mu_src = src.mean(axis=0)
    mu_dst = dst.mean(axis=0)
    src_c = src - mu_src
    dst_c = dst - mu_dst
    var_src = (src_c ** 2).sum() / n
    if var_src <= 1e-12:
        raise ValueError("source points are all at the same place")

    cov = dst_c.T @ src_c / n  # [dim, dim]
    u, sv, vt = np.linalg.svd(cov)
    sign = np.ones(dim)
    if np.linalg.det(cov) < 0:
        sign[-1] = -1.0
    rank = int((sv > 1e-12 * max(sv.max(), 1e-300)).sum())
    if rank == 0:
        raise ValueError("degenerate point sets")
    if rank == dim - 1:
        # One direction carries no information: choose the reflection-free solution.
        sign = np.ones(dim)
        if np.linalg.det(u) * np.linalg.det(vt) < 0:
            sign[-1] = -1.0
    rot = u @ np.diag(sign) @ vt
    scale = float((sv * sign).sum() / var_src)
    shift = mu_dst - scale * rot @ mu_src
    m = np.empty((2, 3), dtype=np.float64)
    m[:, :2] = scale * rot
    m[:, 2] = shift
    return m


def alignment_matrix(kps: np.ndarray, size: int = 112) -> np.ndarray:
    """[2, 3] matrix taking image coordinates to the `size` x `size` ArcFace crop."""
    kps = np.asarray(kps, dtype=np.float64).reshape(-1, 2)
    if kps.shape != (5, 2):
        raise ValueError(f"expected 5 landmarks, got {kps.shape[0]}")
    return similarity_transform(kps, arcface_template(size))


def transform_points(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a [2, 3] affine matrix to [N, 2] points."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return points @ np.asarray(m, dtype=np.float64)[:, :2].T + np.asarray(m, dtype=np.float64)[:, 2]


def align_face(img: np.ndarray, kps: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp the face with landmarks `kps` [5, 2] (image coordinates) into a `size` x `size` crop.

    Works on any channel order (the crop keeps the input's); outside the image is black.
    """
    img = np.asarray(img)
    if img.ndim not in (2, 3) or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"expected an [H, W(, C)] image, got shape {img.shape}")
    m = alignment_matrix(kps, size)
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
