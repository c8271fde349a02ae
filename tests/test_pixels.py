"""models.pixels.to_signed: uint8 RGB HWC (array or tensor, one image or a batch) -> float CHW in [-1, 1]."""

import numpy as np
import torch

from models.pixels import to_signed


def test_layout_range_and_values_for_arrays_and_tensors():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    batch[0, 0, 0] = (0, 255, 128)
    x = to_signed(batch[:, :, ::-1])  # a negative-stride view is accepted
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32
    assert x[0, :2, 0, -1].tolist() == [-1.0, 1.0] and abs(x[0, 2, 0, -1].item() - (128 / 127.5 - 1.0)) < 1e-7
    expected = torch.from_numpy(batch[:, :, ::-1].copy()).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    one = to_signed(torch.from_numpy(batch[1, :, ::-1].copy()))
    assert one.shape == (3, 5, 7)
    torch.testing.assert_close(one, expected[1], rtol=0, atol=0)
