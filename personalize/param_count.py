"""Count backbone parameters that differ from the original weight files, as the competition does.

A tensor whose values differ counts its size; a tensor whose shape changed counts both sizes; a
tensor missing on one side counts its size. Values are compared after casting the file's tensor
to the dtype the module holds (sampling in bf16 is a cast, not a change), exactly (no tolerance).
"""

from __future__ import annotations

import torch
from torch import nn

from models.weights import read_state_dict


@torch.no_grad()
def count_changed(module: nn.Module, original: dict[str, torch.Tensor], keys: set[str] | None = None) -> int:
    """Parameters of `module` (restricted to `keys` if given) that differ from `original`."""
    current = module.state_dict()
    names = set(current) | set(original) if keys is None else keys
    changed = 0
    for name in sorted(names):
        cur, ref = current.get(name), original.get(name)
        if cur is None or ref is None:
            changed += (cur if cur is not None else ref).numel()
        elif cur.shape != ref.shape:
            changed += cur.numel() + ref.numel()
        elif not torch.equal(cur, ref.to(device=cur.device, dtype=cur.dtype)):
            changed += cur.numel()
    return changed


def count_finetuned_parameters(pipeline, files: dict[str, str]) -> int:
    """Sum of changed parameters over the frozen backbone modules the pipeline sampled with.

    files: {"uvit": path, "autoencoder": path, "caption_decoder": path} as resolved when loading.
    """
    total = 0
    if "uvit" in files:
        total += count_changed(pipeline.uvit, read_state_dict(files["uvit"], "UViT"))
    if "autoencoder" in files:
        total += count_changed(pipeline.autoencoder, read_state_dict(files["autoencoder"], "autoencoder"))
    if "caption_decoder" in files:
        prefix = pipeline.text_encoder.encode_prefix
        ref = read_state_dict(files["caption_decoder"], "caption decoder")
        ref = {k.removeprefix("encode_prefix."): v for k, v in ref.items() if k.startswith("encode_prefix.")}
        total += count_changed(prefix, ref)
    return total
