"""models.attention: the log-sum-exp, the few-key form and the exact merge of partial softmaxes."""

import pytest
import torch
import torch.nn.functional as F

from models import attention
from models.attention import attend, attend_few, attend_lse, merge_partial
from models.uvit import UViT, UViTConfig


def _qkv(lq=7, lk=11, b=2, h=3, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, lq, d, generator=g), torch.randn(b, h, lk, d, generator=g),
            torch.randn(b, h, lk, d, generator=g))


def test_attend_lse_matches_sdpa_and_the_logsumexp_of_the_scores():
    q, k, v = _qkv()
    o, lse = attend_lse(q, k, v)
    torch.testing.assert_close(o, F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(o, attend(q, k, v))
    torch.testing.assert_close(lse, torch.logsumexp(q @ k.transpose(-1, -2) / 8**0.5, dim=-1))
    assert lse.shape == q.shape[:-1] and lse.dtype == torch.float32


def test_attend_few_compiled_form_equals_the_matmul_form(monkeypatch):
    q, k, v = _qkv(lk=4)
    eager = attend_few(q, k, v)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # the broadcast-reduce form
    traced = attend_few(q, k, v)
    for a, b, ref in zip(eager, traced, attend_lse(q, k, v)):
        torch.testing.assert_close(a, ref)
        torch.testing.assert_close(b, ref)


def test_merge_partial_is_attention_over_the_union_of_keys():
    q, k, v = _qkv(lk=13)
    k1, k2, v1, v2 = k[:, :, :9], k[:, :, 9:], v[:, :, :9], v[:, :, 9:]
    merged = merge_partial(*attend_lse(q, k1, v1), *attend_lse(q, k2, v2))
    torch.testing.assert_close(merged, attend(q, k, v))
    # one side dominating (scores far apart) stays finite and exact
    big = merge_partial(*attend_lse(q * 30, k1, v1), *attend_lse(q * 30, k2, v2))
    torch.testing.assert_close(big, attend(q * 30, k, v))


def test_gelu_epilogue_is_close_to_exact_gelu_and_never_used_with_gradients():
    torch.manual_seed(0)
    uvit = UViT(UViTConfig.tiny()).eval()
    with torch.no_grad():
        for p in uvit.parameters():
            p.normal_(0, 0.2)
    g = torch.Generator().manual_seed(1)
    args = (torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 1, 16, generator=g),
            torch.randn(2, 6, 8, generator=g), torch.tensor([900.0, 20.0]), torch.zeros(2),
            torch.ones(2, dtype=torch.long))
    with torch.no_grad():
        exact = uvit(*args)
        uvit.use_gelu_epilogue(True)
        fused = uvit(*args)
    for a, b in zip(exact, fused):
        err = float((a - b).norm() / a.norm())
        assert err < 2e-3, err
    with torch.enable_grad():  # training path: the exact form, bit for bit
        trained = uvit(*args)
    for a, b in zip(exact, trained):
        assert torch.equal(a, b)
    uvit.use_gelu_epilogue(False)
    assert not any(getattr(m, "gelu_epilogue", False) for m in uvit.modules())


@pytest.mark.parametrize("kernel", attention.TRAINING_KERNELS)
def test_training_kernel_choice_leaves_the_cpu_on_sdpa_with_the_same_gradients(kernel, monkeypatch):
    """TRAINING_KERNEL names a CUDA kernel for training; on the CPU every choice is SDPA's, gradients included."""
    monkeypatch.setattr(attention, "TRAINING_KERNEL", kernel)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g, requires_grad=True) for _ in range(3))
    attention.attend(q, k, v).square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    F.scaled_dot_product_attention(q, k, v).square().sum().backward()
    for got, t in zip(grads, (q, k, v)):
        torch.testing.assert_close(got, t.grad)
