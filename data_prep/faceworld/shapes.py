"""Drawing primitives on pixel grids: soft masks from signed distances, painting, cheap periodic and
hashed patterns, and the fixed noise textures.

Everything here is elementwise on [B, H, W] (or [B, 3, H, W]) tensors built from additions,
multiplications, divisions, square roots, floors and comparisons only: a pixel's value does not
depend on which other items share its batch, and CPU and CUDA agree up to float rounding.
Per-item parameters are [B, 1, 1] tensors (colours [B, 3, 1, 1]).
"""

from __future__ import annotations

import numpy as np
import torch

NOISE_TILES = 16  # textures in the bank; a render picks one, shifted and flipped
NOISE_CHANNELS = ("white", "fine", "smooth", "streak")
_NOISE_KEY = 0x5EED_FACE


def soft(d: torch.Tensor, aa: torch.Tensor | float) -> torch.Tensor:
    """Coverage in [0, 1] of a signed distance d (< 0 inside), antialiased over `aa` units: 0.5 - d / aa."""
    return (d / aa).neg_().add_(0.5).clamp_(0.0, 1.0)


def ellipse_d(x: torch.Tensor, y: torch.Tensor, rx, ry) -> torch.Tensor:
    """Approximate signed distance to an axis-aligned ellipse centred at 0 (exact for circles): the
    normalised radius k0 - 1 divided by its gradient, k0 (k0 - 1) / k1 (good near the outline, also
    for thin ellipses)."""
    ax, ay = x / rx, y / ry
    k0 = torch.sqrt(ax * ax + ay * ay)
    bx, by = ax / rx, ay / ry
    k1 = torch.sqrt(bx * bx + by * by).clamp_(min=1e-6)
    return k0 * (k0 - 1.0) / k1


def box_d(x: torch.Tensor, y: torch.Tensor, hx, hy) -> torch.Tensor:
    """Chebyshev-style signed distance to an axis-aligned box of half sizes (hx, hy) centred at 0."""
    return torch.maximum(x.abs() - hx, y.abs() - hy)


def paint(canvas: torch.Tensor, alpha: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """canvas [B, 3, H, W] <- canvas * (1 - alpha) + color * alpha, in place.

    alpha: [B, H, W]; color: [B, 3, 1, 1] or [B, 3, H, W].
    """
    return canvas.lerp_(color.expand_as(canvas), alpha.unsqueeze(1))


def tri(x: torch.Tensor) -> torch.Tensor:
    """Triangle wave with period 1, 0 at integers and 1 at half-integers."""
    return 1.0 - 2.0 * (x - torch.floor(x) - 0.5).abs()


def wave(x: torch.Tensor) -> torch.Tensor:
    """A smooth-looking periodic wave in [0, 1] (period 1): the smoothstep of the triangle wave."""
    t = tri(x)
    return t * t * (3.0 - 2.0 * t)


def hash01(k: torch.Tensor, salt: int) -> torch.Tensor:
    """Integer tensor -> pseudo-random floats in [0, 1) (a multiplicative hash on int64)."""
    h = (k.to(torch.int64) * 2654435761 + salt * 40503) & 0xFFFFFFFF
    h = ((h ^ (h >> 15)) * 0x45D9F3B) & 0xFFFFFFFF
    h = h ^ (h >> 13)
    return (h & 0xFFFF).to(torch.float32) / 65536.0


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """a + (b - a) * t with colours a, b [B|1, 3, 1, 1] and t [B, H, W] -> [B, 3, H, W]."""
    return a + (b - a) * t.unsqueeze(1)


def _box_blur(a: np.ndarray, r: int, axes: tuple[int, ...] = (1, 2)) -> np.ndarray:
    """Wrap-around box blur of radius r along `axes` (a fixed sequence of adds: reproducible)."""
    for ax in axes:
        acc = a.copy()
        for k in range(1, r + 1):
            acc += np.roll(a, k, axis=ax) + np.roll(a, -k, axis=ax)
        a = acc / (2 * r + 1)
    return a


def _normalise(a: np.ndarray) -> np.ndarray:
    lo = a.min(axis=(1, 2), keepdims=True)
    hi = a.max(axis=(1, 2), keepdims=True)
    return (a - lo) / (hi - lo)


def noise_bank(size: int) -> np.ndarray:
    """float32 [C, NOISE_TILES, size, size] in [0, 1], channels NOISE_CHANNELS, from a fixed key."""
    rng = np.random.Generator(np.random.Philox(key=_NOISE_KEY))
    white = rng.random((NOISE_TILES, size, size))
    fine = _normalise(_box_blur(_box_blur(white, max(1, size // 64)), max(1, size // 64)))
    smooth = _normalise(_box_blur(_box_blur(white, max(2, size // 12)), max(2, size // 12)))
    streak = _normalise(_box_blur(_box_blur(white, max(1, size // 64), (2,)), max(3, size // 8), (1,)))
    return np.stack([white, fine, smooth, streak]).astype(np.float32)


def noise_index(size: int, tile: torch.Tensor, ox: torch.Tensor, oy: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """int64 [B, H, W] flat positions into one channel of the bank ([T * S * S]): per item a tile,
    shifted by (ox, oy) with wrap-around and transposed where flip is 1 (tile, ox, oy, flip: [B])."""
    r = torch.arange(size, device=tile.device)
    iy = (r.view(1, size, 1) + oy.view(-1, 1, 1)) % size
    ix = (r.view(1, 1, size) + ox.view(-1, 1, 1)) % size
    f = flip.view(-1, 1, 1)
    return (iy * size + ix) * (1 - f) + (ix * size + iy) * f + tile.view(-1, 1, 1) * (size * size)
