"""uint8 RGB pixels to the models' signed range: the one conversion that the autoencoder, the image towers
and the world's classifiers all take their input through."""

from __future__ import annotations

import numpy as np
import torch


def to_signed(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB [..., H, W, 3] (array or tensor, on any device) -> float32 [..., 3, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    return x.movedim(-1, -3).float().div(127.5).sub(1.0)
