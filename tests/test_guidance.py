"""Joint-state helpers and text classifier-free guidance with fake nets."""

import pytest
import torch

from models.guidance import cast_net, cfg_combine, combine_joint, split_joint, text_guided_eps_fn

Z_SHAPE, CLIP_DIM, L, DT = (2, 3, 3), 5, 4, 6
N_JOINT = 2 * 3 * 3 + CLIP_DIM


def _randn(*shape):
    """Reproducible test inputs (a fresh seeded generator per shape)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


class RecordingNet:
    """Outputs 1 + 2 * t_text / 1000 + text_weight * mean(text) + 0.01 * t_img (+ a term in img / clip),
    so cond (t_text = 0) and true-uncond (t_text = 1000) differ by 2; records every call's inputs."""

    def __init__(self, text_weight: float = 0.0):
        self.calls = []
        self.text_weight = text_weight

    def __call__(self, img, clip_img, text, t_img, t_text, data_type):
        self.calls.append(dict(img=img, clip=clip_img, text=text.clone(), t_img=t_img, t_text=t_text,
                               data_type=data_type))
        val = 1.0 + 2.0 * t_text / 1000 + self.text_weight * text.mean(dim=(1, 2))
        val = val + 0.01 * t_img
        return (torch.ones_like(img) * val[:, None, None, None] + 0.1 * img,
                torch.ones_like(clip_img) * val[:, None, None] - 0.2 * clip_img, text)


def test_joint_roundtrip():
    z, clip = _randn(2, *Z_SHAPE), _randn(2, 1, CLIP_DIM)
    x = combine_joint(z, clip)
    assert x.shape == (2, N_JOINT)
    assert torch.equal(x[:, :18], z.flatten(1)) and torch.equal(x[:, 18:], clip[:, 0])
    z2, clip2 = split_joint(x, Z_SHAPE, CLIP_DIM)
    assert torch.equal(z, z2) and torch.equal(clip, clip2)
    with pytest.raises(ValueError, match="does not hold"):
        split_joint(x, (2, 3, 4), CLIP_DIM)


def test_cfg_combine():
    cond, uncond = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])
    assert torch.equal(cfg_combine(cond, uncond, 7.0), torch.tensor([1.0 + 7 * (1 - 3), 2.0 + 7 * 3]))
    assert torch.equal(cfg_combine(cond, uncond, 0.0), cond)


@pytest.mark.parametrize("batch_passes", [True, False])
def test_true_uncond(batch_passes):
    net = RecordingNet()
    text = _randn(2, L, DT)
    eps_fn = text_guided_eps_fn(net, net, text, 7.0, z_shape=Z_SHAPE, clip_dim=CLIP_DIM,
                                generator=torch.Generator().manual_seed(0), batch_passes=batch_passes)
    x = torch.zeros(2, N_JOINT)
    t = torch.full((2,), 0.5)
    out = eps_fn(x, t)
    # cond value 1 + 0.01 * 500 = 6, uncond 3 + 5 = 8 -> 6 + 7 * (6 - 8) = -8 everywhere (x = 0)
    assert torch.allclose(out, torch.full_like(out, -8.0))
    eps_fn(x, t)
    if batch_passes:
        assert len(net.calls) == 2 and all(c["img"].shape[0] == 4 for c in net.calls)
        conds = [{k: v[:2] for k, v in c.items()} for c in net.calls]
        unconds = [{k: v[2:] for k, v in c.items()} for c in net.calls]
    else:
        assert len(net.calls) == 4
        conds, unconds = net.calls[0::2], net.calls[1::2]
    for c in conds:
        assert torch.equal(c["text"], text)
        assert torch.equal(c["t_text"], torch.zeros(2)) and torch.equal(c["t_img"], torch.full((2,), 500.0))
        assert c["data_type"].dtype == torch.long
        assert torch.equal(c["data_type"], torch.ones(2, dtype=torch.long))
    for u in unconds:
        assert torch.equal(u["t_text"], torch.full((2,), 1000.0))
        assert u["text"].shape == text.shape and not torch.equal(u["text"], text)
        assert torch.equal(u["t_img"], torch.full((2,), 500.0))
    # fresh Gaussian noise at every evaluation
    assert not torch.equal(unconds[0]["text"], unconds[1]["text"])
    noise = torch.cat([u["text"] for u in unconds])
    assert abs(float(noise.mean())) < 0.5 and 0.5 < float(noise.std()) < 1.5


def test_batched_equals_unbatched():
    text = _randn(3, L, DT)
    x = _randn(3, N_JOINT)
    t = torch.full((3,), 0.3)
    outs = []
    for batched in (True, False):
        net = RecordingNet(text_weight=1.0)
        eps_fn = text_guided_eps_fn(net, net, text, 7.0, z_shape=Z_SHAPE, clip_dim=CLIP_DIM,
                                    generator=torch.Generator().manual_seed(3), batch_passes=batched)
        outs.append(torch.stack([eps_fn(x, t), eps_fn(x, t)]))
        assert len(net.calls) == (2 if batched else 4)
    torch.testing.assert_close(outs[0], outs[1])


def test_separate_nets_and_no_guidance():
    cond, uncond = RecordingNet(), RecordingNet()
    text = _randn(1, L, DT)
    eps_fn = text_guided_eps_fn(cond, uncond, text, 2.0, z_shape=Z_SHAPE, clip_dim=CLIP_DIM)
    eps_fn(torch.zeros(1, N_JOINT), torch.ones(1))
    assert len(cond.calls) == 1 and len(uncond.calls) == 1
    assert torch.equal(uncond.calls[0]["t_text"], torch.full((1,), 1000.0))
    for scale in (0.0, None):
        net = RecordingNet()
        eps_fn = text_guided_eps_fn(net, net, text, scale, z_shape=Z_SHAPE, clip_dim=CLIP_DIM)
        out = eps_fn(torch.zeros(1, N_JOINT), torch.ones(1) * 0.1)
        assert len(net.calls) == 1 and torch.allclose(out, torch.full_like(out, 2.0))


def test_empty_token_mode():
    net = RecordingNet(text_weight=1.0)
    text, empty = _randn(2, L, DT), _randn(1, L, DT)
    eps_fn = text_guided_eps_fn(net, net, text, 7.0, z_shape=Z_SHAPE, clip_dim=CLIP_DIM, mode="empty_token",
                                empty_text=empty, batch_passes=False)
    out = eps_fn(torch.zeros(2, N_JOINT), torch.zeros(2))
    u = net.calls[1]
    assert torch.equal(u["text"], empty.expand(2, -1, -1)) and torch.equal(u["t_text"], torch.zeros(2))
    cond_v, uncond_v = 1 + text.mean(dim=(1, 2)), 1 + empty.mean(dim=(1, 2))
    expected = cond_v + 7 * (cond_v - uncond_v)
    torch.testing.assert_close(out[:, 0], expected)
    with pytest.raises(ValueError, match="empty_text"):
        text_guided_eps_fn(net, net, text, 7.0, z_shape=Z_SHAPE, clip_dim=CLIP_DIM, mode="empty_token")
    with pytest.raises(ValueError, match="unknown guidance mode"):
        text_guided_eps_fn(net, net, text, 7.0, z_shape=Z_SHAPE, clip_dim=CLIP_DIM, mode="nope")


def test_cast_net_and_output_dtype():
    seen = {}

    def net(img, clip_img, text, t_img, t_text, data_type):
        seen.update(img=img.dtype, text=text.dtype, t=t_img.dtype, dt=data_type.dtype)
        return img * 2, clip_img * 2, text

    eps_fn = text_guided_eps_fn(cast_net(net, torch.bfloat16), None, _randn(1, L, DT), None,
                                z_shape=Z_SHAPE, clip_dim=CLIP_DIM)
    out = eps_fn(_randn(1, N_JOINT), torch.ones(1))
    assert out.dtype == torch.float32
    assert seen == dict(img=torch.bfloat16, text=torch.bfloat16, t=torch.float32, dt=torch.long)
