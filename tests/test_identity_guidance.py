"""encoder/guidance.py: the passes of identity-guided classifier-free guidance, their arithmetic,
three passes against two, batched against one call per pass.

A recording fake net checks what each pass is fed and the combination formulas with hand-computed
numbers; the tiny ID-conditioned UViT (random weights, open gates) checks the equalities on a real
network.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from encoder.config import IdentityConfig
from encoder.guidance import identity_guided_eps_fn
from encoder.id_uvit import IDConditionedUViT
from encoder.identity import IdentityModule
from models.guidance import text_guided_eps_fn
from models.uvit import UViT, UViTConfig

Z_SHAPE, CLIP_DIM, L, DT, K, TOKEN_DIM = (2, 3, 3), 5, 4, 6, 3, 7
N_JOINT = 2 * 3 * 3 + CLIP_DIM
TOKEN_VALUE = 0.5  # every identity token entry of the fake net's tests


class RecordingIDNet:
    """The ID-conditioned UViT's signature; every output entry of sample b is

        1 + 2 * t_text / 1000 + 0.01 * t_img + id_scale * mean(id_tokens)   (id term 0 without tokens)

    so at x = 0, t = 0.5: cond = 6 + id_scale * 0.5, true-uncond = 8, text-only = 6. Records every call.
    """

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, img, clip_img, text, t_img, t_text, data_type, id_tokens=None, id_scale=1.0):
        b = img.shape[0]
        scale = (torch.zeros(b) if id_tokens is None else
                 id_scale.expand(b) if torch.is_tensor(id_scale) else torch.full((b,), float(id_scale)))
        self.calls.append(dict(text=text.clone(), t_img=t_img.clone(), t_text=t_text.clone(),
                               data_type=data_type.clone(), tokens=id_tokens, id_scale=scale.clone()))
        val = 1.0 + 2.0 * t_text / 1000 + 0.01 * t_img
        if id_tokens is not None:
            val = val + scale * id_tokens.expand(b, -1, -1).mean(dim=(1, 2))
        return (torch.ones_like(img) * val[:, None, None, None] + 0.1 * img,
                torch.ones_like(clip_img) * val[:, None, None] - 0.2 * clip_img, text)


def _text(b=2):
    return torch.randn(b, L, DT, generator=torch.Generator().manual_seed(11))


def _passes(net: RecordingIDNet, b: int, batched: bool) -> list[dict]:
    """The recorded passes of one eps_fn evaluation, split per pass when they ran batched."""
    if not batched:
        return net.calls
    (call,) = net.calls
    n = call["text"].shape[0] // b
    return [{k: (v[i * b:(i + 1) * b] if torch.is_tensor(v) and k != "tokens" else v) for k, v in call.items()}
            for i in range(n)]


@pytest.mark.parametrize("batched", [True, False])
def test_two_passes_identity_only_in_the_conditional_one(batched):
    net, text = RecordingIDNet(), _text()
    tokens = torch.full((1, K, TOKEN_DIM), TOKEN_VALUE)
    eps_fn = identity_guided_eps_fn(net, text, tokens, z_shape=Z_SHAPE, clip_dim=CLIP_DIM, scale=7.0,
                                    id_scale=0.8, generator=torch.Generator().manual_seed(0),
                                    batch_passes=batched)
    out = eps_fn(torch.zeros(2, N_JOINT), torch.full((2,), 0.5))
    # cond = 6 + 0.8 * 0.5 = 6.4, uncond = 8: 6.4 + 7 * (6.4 - 8) = -4.8
    torch.testing.assert_close(out, torch.full_like(out, -4.8))
    cond, uncond = _passes(net, 2, batched)
    assert torch.equal(cond["text"], text) and torch.equal(cond["t_text"], torch.zeros(2))
    assert cond["tokens"] is not None and torch.equal(cond["id_scale"], torch.full((2,), 0.8))
    # UniDiffuser's true_uncond: fresh Gaussian text, fully noised, and no identity
    assert uncond["text"].shape == text.shape and not torch.equal(uncond["text"], text)
    assert torch.equal(uncond["t_text"], torch.full((2,), 1000.0))
    assert torch.equal(uncond["id_scale"], torch.zeros(2))
    if not batched:
        assert uncond["tokens"] is None  # one call per pass: the uncond pass is the plain net
    for p in (cond, uncond):
        assert torch.equal(p["t_img"], torch.full((2,), 500.0))
        assert torch.equal(p["data_type"], torch.ones(2, dtype=torch.long))


@pytest.mark.parametrize("batched", [True, False])
def test_third_pass_for_a_separate_identity_scale(batched):
    net, text = RecordingIDNet(), _text()
    tokens = torch.full((2, K, TOKEN_DIM), TOKEN_VALUE)
    eps_fn = identity_guided_eps_fn(net, text, tokens, z_shape=Z_SHAPE, clip_dim=CLIP_DIM, scale=7.0,
                                    id_scale=0.8, id_guidance=3.0, generator=torch.Generator().manual_seed(0),
                                    batch_passes=batched)
    out = eps_fn(torch.zeros(2, N_JOINT), torch.full((2,), 0.5))
    # uncond + (1 + 7)(text_only - uncond) + (1 + 3)(cond - text_only) = 8 + 8 * (6 - 8) + 4 * 0.4 = -6.4
    torch.testing.assert_close(out, torch.full_like(out, -6.4))
    passes = _passes(net, 2, batched)
    assert len(passes) == 3 and len(net.calls) == (1 if batched else 3)
    cond, uncond, text_only = passes
    assert torch.equal(cond["id_scale"], torch.full((2,), 0.8)) and torch.equal(cond["text"], text)
    assert torch.equal(uncond["id_scale"], torch.zeros(2)) and torch.equal(uncond["t_text"], torch.full((2,), 1e3))
    # the third pass: the real text, clean, without identity
    assert torch.equal(text_only["text"], text) and torch.equal(text_only["t_text"], torch.zeros(2))
    assert torch.equal(text_only["id_scale"], torch.zeros(2))
    if not batched:
        assert text_only["tokens"] is None and uncond["tokens"] is None


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("id_guidance", [None, 3.0])
def test_identity_only_below_id_start(batched, id_guidance):
    """Above id_start the passes are plain text guidance (two, no tokens); at or below it, as without a window.
    The noise text is drawn at every evaluation either way, so the generator stays in step."""
    tokens = torch.full((1, K, TOKEN_DIM), TOKEN_VALUE)

    def run(id_start):
        net = RecordingIDNet()
        eps_fn = identity_guided_eps_fn(net, _text(), tokens, z_shape=Z_SHAPE, clip_dim=CLIP_DIM, scale=7.0,
                                        id_scale=0.8, id_guidance=id_guidance, id_start=id_start,
                                        generator=torch.Generator().manual_seed(0), batch_passes=batched)
        outs = [eps_fn(torch.zeros(2, N_JOINT), torch.full((2,), t)) for t in (0.7, 0.6, 0.5)]
        return outs, net

    (early, at, late), net = run(0.6)
    # t = 0.7: cond = 1 + 0.01 * 700 = 8 (no identity), uncond = 10: 8 + 7 * (8 - 10) = -6
    torch.testing.assert_close(early, torch.full_like(early, -6.0))
    first = net.calls[:1] if batched else net.calls[:2]
    assert all(c["tokens"] is None for c in first) and sum(c["text"].shape[0] for c in first) == 4
    (_, at_full, late_full), net_full = run(1.0)
    torch.testing.assert_close(at, at_full)  # t = id_start: the identity is used
    torch.testing.assert_close(late, late_full)
    noise = lambda n: [c["text"][-2:] if batched else c["text"] for c in n.calls if c["t_text"].max() == 1000]  # noqa: E731
    if not batched:
        assert all(torch.equal(a, b) for a, b in zip(noise(net), noise(net_full)))
    with pytest.raises(ValueError, match="noise level"):
        identity_guided_eps_fn(net, _text(), tokens, z_shape=Z_SHAPE, clip_dim=CLIP_DIM, id_start=0.0)


def test_fresh_noise_text_at_every_evaluation_and_from_the_generator():
    def noise_texts(seed):
        net = RecordingIDNet()
        eps_fn = identity_guided_eps_fn(net, _text(), torch.full((1, K, TOKEN_DIM), TOKEN_VALUE), z_shape=Z_SHAPE,
                                        clip_dim=CLIP_DIM, generator=torch.Generator().manual_seed(seed),
                                        batch_passes=False)
        for _ in range(2):
            eps_fn(torch.zeros(2, N_JOINT), torch.full((2,), 0.5))
        return net.calls[1]["text"], net.calls[3]["text"]

    first, second = noise_texts(0)
    assert not torch.equal(first, second)
    again = noise_texts(0)
    assert torch.equal(first, again[0]) and torch.equal(second, again[1])


def test_no_identity_or_no_guidance():
    net, text = RecordingIDNet(), _text()
    x, t = torch.zeros(2, N_JOINT), torch.full((2,), 0.5)
    # no identity tokens: plain text guidance, two passes, id_guidance ignored
    out = identity_guided_eps_fn(net, text, None, z_shape=Z_SHAPE, clip_dim=CLIP_DIM, id_guidance=3.0,
                                 generator=torch.Generator().manual_seed(0), batch_passes=False)(x, t)
    torch.testing.assert_close(out, torch.full_like(out, 6.0 + 7 * (6.0 - 8.0)))
    assert len(net.calls) == 2 and all(c["tokens"] is None for c in net.calls)
    # guidance scale 0: the conditional pass alone, with identity
    net.calls.clear()
    tokens = torch.full((1, K, TOKEN_DIM), TOKEN_VALUE)
    out = identity_guided_eps_fn(net, text, tokens, z_shape=Z_SHAPE, clip_dim=CLIP_DIM, scale=0.0, id_scale=2.0,
                                 id_guidance=3.0)(x, t)
    torch.testing.assert_close(out, torch.full_like(out, 6.0 + 2.0 * TOKEN_VALUE))
    assert len(net.calls) == 1 and torch.equal(net.calls[0]["id_scale"], torch.full((2,), 2.0))


# ------------------------------------------------------------------------------- a real tiny net
@pytest.fixture(scope="module")
def tiny():
    """(IDConditionedUViT with open gates, identity tokens [1, K, D]) on the tiny random UViT."""
    torch.manual_seed(0)
    uvit = UViT(UViTConfig.tiny()).eval()
    with torch.no_grad():
        for p in uvit.parameters():
            p.normal_(0, 0.2)
    uvit.requires_grad_(False)
    module = IdentityModule(IdentityConfig.for_uvit(uvit.config, num_tokens=3, hidden_dim=32)).eval()
    with torch.no_grad():
        module.gate.fill_(0.6)
        face = F.normalize(torch.randn(1, 512, generator=torch.Generator().manual_seed(3)), dim=-1)
        tokens = module.tokens(face)
    return IDConditionedUViT(uvit, module).eval(), tokens


def _state(net, b=3):
    c = net.config
    g = torch.Generator().manual_seed(5)
    n = c.in_chans * c.img_size * c.img_size + c.clip_img_dim
    return (torch.randn(b, n, generator=g), torch.full((b,), 0.61),
            torch.randn(b, c.num_text_tokens, c.text_dim, generator=g))


def _eps(net, tokens, text, x, t, **kw):
    c = net.config
    fn = identity_guided_eps_fn(net, text, tokens, z_shape=(c.in_chans, c.img_size, c.img_size),
                                clip_dim=c.clip_img_dim, generator=torch.Generator().manual_seed(9), **kw)
    with torch.no_grad():
        return fn(x, t)


def test_three_passes_equal_two_when_the_scales_are_equal(tiny):
    net, tokens = tiny
    x, t, text = _state(net)
    for batched in (True, False):
        two = _eps(net, tokens, text, x, t, scale=5.0, id_scale=0.9, batch_passes=batched)
        three = _eps(net, tokens, text, x, t, scale=5.0, id_scale=0.9, id_guidance=5.0, batch_passes=batched)
        torch.testing.assert_close(three, two, rtol=1e-5, atol=1e-5)
        other = _eps(net, tokens, text, x, t, scale=5.0, id_scale=0.9, id_guidance=1.0, batch_passes=batched)
        assert (other - two).abs().max() > 1e-3  # a different identity scale does change the result


@pytest.mark.parametrize("id_guidance", [None, 2.0])
def test_batched_equals_one_call_per_pass(tiny, id_guidance):
    net, tokens = tiny
    x, t, text = _state(net)
    batched = _eps(net, tokens, text, x, t, scale=7.0, id_scale=1.0, id_guidance=id_guidance, batch_passes=True)
    single = _eps(net, tokens, text, x, t, scale=7.0, id_scale=1.0, id_guidance=id_guidance, batch_passes=False)
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
    # per-sample tokens [B, K, D] give the same as one broadcast [1, K, D]
    per_sample = _eps(net, tokens.expand(x.shape[0], -1, -1), text, x, t, scale=7.0, id_scale=1.0,
                      id_guidance=id_guidance, batch_passes=True)
    torch.testing.assert_close(per_sample, batched, rtol=1e-5, atol=1e-5)


def test_identity_matters_and_zero_scale_is_plain_text_guidance(tiny):
    net, tokens = tiny
    x, t, text = _state(net)
    c = net.config
    plain = text_guided_eps_fn(net.uvit, net.uvit, text, 7.0, z_shape=(c.in_chans, c.img_size, c.img_size),
                               clip_dim=c.clip_img_dim, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        reference = plain(x, t)
    for batched in (True, False):
        off = _eps(net, tokens, text, x, t, scale=7.0, id_scale=0.0, batch_passes=batched)
        torch.testing.assert_close(off, reference, rtol=1e-5, atol=1e-5)  # same noise text, no identity
        on = _eps(net, tokens, text, x, t, scale=7.0, id_scale=1.0, batch_passes=batched)
        assert (on - reference).abs().max() > 1e-3
