"""Counter-based random numbers: every draw is a pure function of (seed, stream, identity, render, slot).

No generator state is carried from one item to the next, so any subset of items can be rendered in
any order or batch and each gets exactly the same numbers. The mixer is SplitMix64's finaliser
applied to a combination of the counters; it is computed with numpy uint64 arithmetic (wrapping),
identically on every platform.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# streams keep the draws of different purposes independent
STREAM_IDENTITY = 1
STREAM_NUISANCE = 2
STREAM_ATTRIBUTES = 3
STREAM_CAPTION = 4
STREAM_PROMPTS = 5

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MAX_COUNTER = 2**62


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, elementwise on uint64 (wraps modulo 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _counter(values: int | Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(values)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= _MAX_COUNTER):
        raise ValueError(f"{name} must lie in [0, 2**62), got {a.min()}..{a.max()}")
    return a.astype(np.uint64)


def hash_bits(seed: int, stream: int, identities, renders, n: int) -> np.ndarray:
    """uint64 [B, n]: n independent 64-bit words per item (identities, renders: [B] ints or scalars)."""
    seed_u = _counter(seed, "seed")
    ids = _counter(identities, "identity indices")
    rs = _counter(renders, "render indices")
    ids, rs = np.broadcast_arrays(np.atleast_1d(ids), np.atleast_1d(rs))
    with np.errstate(over="ignore"):
        h = _mix(seed_u * _GOLDEN + np.uint64(stream))
        h = _mix(h ^ (ids * _M1 + np.uint64(0x632BE59BD9B4E019)))
        h = _mix(h ^ (rs * _M2 + np.uint64(0x8CB92BA72F3D8DD7)))
        slots = np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN
        return _mix(h[:, None] + slots[None, :])


def uniforms(seed: int, stream: int, identities, renders, n: int) -> np.ndarray:
    """float64 [B, n] in [0, 1): n independent uniforms per item, from the top 53 bits of hash_bits."""
    bits = hash_bits(seed, stream, identities, renders, n)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


class Draws:
    """Hands out columns of a [B, n] block of uniforms in a fixed order (one draw site = one column).

    Adding a draw at the end changes nothing before it; `take(k)` returns [B, k] (or [B] for k = 1).
    """

    def __init__(self, u: np.ndarray):
        self.u = u
        self.next = 0

    def take(self, k: int = 1) -> np.ndarray:
        if self.next + k > self.u.shape[1]:
            raise IndexError(f"asked for more than the {self.u.shape[1]} uniforms drawn per item")
        out = self.u[:, self.next:self.next + k]
        self.next += k
        return out[:, 0] if k == 1 else out

    def uniform(self, lo: float, hi: float) -> np.ndarray:
        return lo + (hi - lo) * self.take()

    def normal(self, mean: float = 0.0, std: float = 1.0, clip: float = 2.5) -> np.ndarray:
        """Approximately normal (Box-Muller on two uniforms), clipped to mean +- clip * std."""
        u1, u2 = self.take(2).T
        z = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
        return mean + std * np.clip(z, -clip, clip)

    def choice(self, weights: Sequence[float] | np.ndarray) -> np.ndarray:
        """int [B]: an index drawn with the given weights ([K], or [B, K] for per-item weights)."""
        w = np.asarray(weights, dtype=np.float64)
        cdf = np.cumsum(w, axis=-1)
        cdf = cdf / cdf[..., -1:]
        u = self.take()
        if cdf.ndim == 1:
            return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)
        return np.minimum((u[:, None] >= cdf).sum(axis=1), cdf.shape[1] - 1)

    def bernoulli(self, p: float | np.ndarray) -> np.ndarray:
        return self.take() < p
