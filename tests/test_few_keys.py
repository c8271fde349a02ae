"""encoder/few_keys.py: the identity tokens' few-key attention term, as torch ops and as the Triton
kernel (run here through Triton's CPU interpreter; on CUDA the benchmarks run the compiled kernel)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from einops import rearrange

from encoder.few_keys import _kernel_applies, gated_few_key_attention_

REPO = Path(__file__).resolve().parents[1]


def _case(dtype=torch.float32, b=2, h=3, d=16, n_main=37, k=4, seed=0):
    """Strided q/k/v views of one qkv tensor and an o in [B, L, H, d] memory, as the model has them."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, n_main + k, 3 * h * d, generator=g).to(dtype)
    q, keys, vals = rearrange(qkv, "b l (k h d) -> k b h l d", k=3, h=h)
    o = rearrange(torch.randn(b, n_main + k, h, d, generator=g).to(dtype), "b l h d -> b h l d")
    lse = torch.randn(b, h, n_main + k, generator=g)
    gate = torch.randn(1, h, 1, 1, generator=g).to(dtype)
    return o, lse, q, keys[:, :, n_main:], vals[:, :, n_main:], gate, n_main


def _by_definition(o, lse, q, k, v, g, n_main):
    """float64: main rows o + g * attn(q, k_id, v_id); identity rows the softmax over both key sets,
    with o, lse standing for the main keys' part."""
    o, lse, q, k, v, g = (t.double() for t in (o, lse, q, k, v, g))
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    o_few, lse_few = torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)
    w = torch.exp(lse - torch.logaddexp(lse, lse_few))[..., None]
    out = o + g * o_few
    out[:, :, n_main:] = (w * o + (1 - w) * o_few)[:, :, n_main:]
    return out


def test_torch_form_computes_the_definition():
    case = _case()
    o = case[0].clone()
    gated_few_key_attention_(o, *case[1:], kernel=False)
    torch.testing.assert_close(o.double(), _by_definition(*case), rtol=1e-5, atol=1e-5)


def test_kernel_is_used_only_where_it_applies():
    o, lse, q, k, v, g, n = _case()
    assert not _kernel_applies(o, q, k, v) or os.environ.get("TRITON_INTERPRET") == "1"  # CPU tensors
    with torch.enable_grad():
        assert not _kernel_applies(o, q, k, v)


_INTERPRETED = r"""
import torch
from encoder.few_keys import gated_few_key_attention_
from tests.test_few_keys import _by_definition, _case

for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 4e-2)):
    case = _case(dtype)
    o = case[0].clone()
    gated_few_key_attention_(o, *case[1:], kernel=True)
    torch.testing.assert_close(o.double(), _by_definition(*case), rtol=tol, atol=tol)

# the whole fused identity forward, the kernel in every block, against the two-stream reference
from encoder.id_uvit import IDConditionedUViT
from tests.test_identity_module import _inputs, _module, _random_uvit, _tokens

uvit = _random_uvit()
module = _module("extra_tokens", uvit)
with torch.no_grad():
    module.gate.normal_(0, 0.5)
    args, tok, scale = _inputs(), _tokens(module), torch.tensor([1.0, 0.0])
    ref = IDConditionedUViT(uvit, module)(*args, id_tokens=tok, id_scale=scale)
    fused = IDConditionedUViT(uvit, module, fused=True)(*args, id_tokens=tok, id_scale=scale)
for a, b in zip(ref, fused):
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
print("ok")
"""


def test_kernel_matches_the_definition_in_the_triton_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _INTERPRETED], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()  # the kernel is for inference
def test_kernel_on_cuda_matches_the_definition_at_the_models_shape():
    pytest.importorskip("triton")
    o, lse, q, k, v, g, n_main = (t.cuda() if isinstance(t, torch.Tensor) else t
                                  for t in _case(torch.bfloat16, b=4, h=24, d=64, n_main=1105, k=4))
    assert _kernel_applies(o, q, k, v)
    out = o.clone()
    gated_few_key_attention_(out, lse, q, k, v, g, n_main)
    torch.testing.assert_close(out.double(), _by_definition(o, lse, q, k, v, g, n_main), rtol=2e-2, atol=4e-2)
