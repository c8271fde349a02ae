"""UViT behaviour on tiny configs: shapes, conditioning inputs, layouts checked by hand, save/load."""

import dataclasses
import math

import pytest
import torch

from models import UViT, UViTConfig, load_uvit
from models.uvit import timestep_embedding
from models.weights import save_state_dict


def tiny_uvit(seed: int = 0, **changes) -> UViT:
    torch.manual_seed(seed)
    model = UViT(dataclasses.replace(UViTConfig.tiny(), **changes)).eval()
    with torch.no_grad():  # zero-initialised position embeddings would hide ordering mistakes
        model.pos_embed.normal_()
        model.pos_embed_token.normal_()
    return model


def inputs(c: UViTConfig, b: int = 2, h: int | None = None, w: int | None = None, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    h, w = h or c.img_size, w or c.img_size
    return (torch.randn(b, c.in_chans, h, w, generator=g),
            torch.randn(b, 1, c.clip_img_dim, generator=g),
            torch.randn(b, c.num_text_tokens, c.text_dim, generator=g),
            torch.tensor([980.02, 20.98][:b]), torch.tensor([0.0, 1000.0][:b]),
            torch.tensor([1, 0][:b]))


@torch.no_grad()
def test_forward_shapes():
    model = tiny_uvit()
    c = model.config
    img, clip_img, text, *rest = inputs(c)
    out_img, out_clip, out_text = model(img, clip_img, text, *rest)
    assert out_img.shape == img.shape == (2, c.in_chans, c.img_size, c.img_size)
    assert out_clip.shape == clip_img.shape == (2, 1, c.clip_img_dim)
    assert out_text.shape == text.shape == (2, c.num_text_tokens, c.text_dim)
    assert model.embed(img, clip_img, text, *rest).shape == (2, c.seq_len, c.embed_dim)


@torch.no_grad()
def test_data_type_and_timesteps_are_per_sample():
    model = tiny_uvit()
    img, clip_img, text, t_img, t_text, data_type = inputs(model.config)
    batched = model(img, clip_img, text, t_img, t_text, data_type)
    for i in range(2):
        single = model(img[i:i + 1], clip_img[i:i + 1], text[i:i + 1], t_img[i:i + 1], t_text[i:i + 1],
                       data_type[i:i + 1])
        for a, b in zip(batched, single, strict=True):
            torch.testing.assert_close(a[i:i + 1], b, rtol=1e-5, atol=1e-5)
    # each conditioning input changes the output
    for changed in (dict(data_type=1 - data_type), dict(t_img=t_img + 100), dict(t_text=1000 - t_text)):
        args = dict(t_img=t_img, t_text=t_text, data_type=data_type) | changed
        other = model(img, clip_img, text, **args)
        assert not torch.allclose(other[0], batched[0]), changed
    # integer timesteps are the same as float ones
    ints = model(img, clip_img, text, torch.tensor([980, 20]), torch.tensor([0, 1000]), data_type)
    floats = model(img, clip_img, text, torch.tensor([980.0, 20.0]), torch.tensor([0.0, 1000.0]), data_type)
    for a, b in zip(ints, floats, strict=True):
        torch.testing.assert_close(a, b)


@torch.no_grad()
def test_other_latent_size_interpolates_patch_positions():
    model = tiny_uvit()
    c = model.config
    img, clip_img, text, *rest = inputs(c, h=12, w=6)
    out_img, out_clip, out_text = model(img, clip_img, text, *rest)
    assert out_img.shape == (2, c.in_chans, 12, 6)
    assert out_clip.shape == (2, 1, c.clip_img_dim) and out_text.shape == (2, c.num_text_tokens, c.text_dim)
    pos = model.position_embedding(12, 6)
    assert pos.shape == (1, 3 + c.num_text_tokens + 1 + 6 * 3, c.embed_dim)
    # the non-patch rows are not interpolated
    n_other = 3 + c.num_text_tokens + 1
    torch.testing.assert_close(pos[:, :n_other], model.position_embedding(8, 8)[:, :n_other])


@torch.no_grad()
def test_timestep_embedding_is_cos_first():
    t = torch.tensor([0.0, 3.0, 980.02])
    dim = 8
    expected = torch.zeros(3, dim)
    for b, tb in enumerate(t.tolist()):
        for i in range(dim // 2):
            f = math.exp(-math.log(10000) * i / (dim // 2))
            expected[b, i] = math.cos(tb * f)
            expected[b, i + dim // 2] = math.sin(tb * f)
    torch.testing.assert_close(timestep_embedding(t, dim), expected, rtol=1e-5, atol=1e-5)
    # inside the model: token 0 is the image timestep, token 1 the text timestep (plus positions)
    model = tiny_uvit()
    args = inputs(model.config)
    x = model.embed(*args)
    pos = model.position_embedding(8, 8)
    d = model.config.embed_dim
    torch.testing.assert_close(x[:, 0], timestep_embedding(args[3], d) + pos[0, 0])
    torch.testing.assert_close(x[:, 1], timestep_embedding(args[4], d) + pos[0, 1])
    torch.testing.assert_close(x[:, 2], model.token_embedding.weight[args[5]] + model.pos_embed_token[0, 0])


@torch.no_grad()
def test_unpatchify_order():
    """decoder_pred output index j = (p1 * patch + p2) * C + c."""
    model = tiny_uvit()
    c = model.config
    p = c.patch_size
    model.decoder_pred.weight.zero_()
    model.decoder_pred.bias.copy_(torch.arange(p * p * c.in_chans, dtype=torch.float32))
    out_img = model(*inputs(c))[0]
    for ch in range(c.in_chans):
        for p1 in range(p):
            for p2 in range(p):
                patch_values = out_img[:, ch, p1::p, p2::p]
                assert torch.all(patch_values == (p1 * p + p2) * c.in_chans + ch), (ch, p1, p2)


@torch.no_grad()
def test_skip_pairing():
    """Out-block i receives the output of in-block n - 1 - i (14 - i for v1)."""
    model = tiny_uvit(depth=7)
    n = len(model.in_blocks)
    assert n == 3
    in_outputs, skips = {}, {}
    for j, blk in enumerate(model.in_blocks):
        blk.register_forward_hook(lambda m, a, out, j=j: in_outputs.__setitem__(j, out))
    for i, blk in enumerate(model.out_blocks):
        blk.register_forward_pre_hook(lambda m, a, i=i: skips.__setitem__(i, a[1]))
    model(*inputs(model.config))
    assert sorted(skips) == list(range(n))
    for i in range(n):
        assert skips[i] is in_outputs[n - 1 - i], i
    assert UViTConfig.v1().depth // 2 - 1 == 14


@torch.no_grad()
def test_qkv_head_layout():
    """qkv output = [all Q heads | all K heads | all V heads], each head contiguous; scale 1/sqrt(d)."""
    model = tiny_uvit()
    attn = model.in_blocks[0].attn
    heads, dim = attn.num_heads, model.config.embed_dim
    hd = dim // heads
    x = torch.randn(2, 5, dim)
    qkv = x @ attn.qkv.weight.T
    q, k, v = qkv[..., :dim], qkv[..., dim:2 * dim], qkv[..., 2 * dim:]
    outs = []
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        weights = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(hd), dim=-1)
        outs.append(weights @ v[..., sl])
    manual = attn.proj(torch.cat(outs, dim=-1))
    torch.testing.assert_close(attn(x), manual, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("suffix,prefix", [(".pth", ""), (".safetensors", ""), (".pth", "module.")])
@torch.no_grad()
def test_save_load_round_trip(tmp_path, suffix, prefix):
    model = tiny_uvit(seed=3)
    path = save_state_dict({prefix + k: v for k, v in model.state_dict().items()}, tmp_path / f"uvit{suffix}")
    loaded = load_uvit(path, UViTConfig.tiny())
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in loaded.parameters())
    args = inputs(model.config)
    for a, b in zip(model(*args), loaded(*args), strict=True):
        assert torch.equal(a, b)
    # a config dict with the reference keyword names works too, and dtype converts
    as_dict = dataclasses.asdict(UViTConfig.tiny()) | {"qk_scale": None, "drop_rate": 0.0}
    half = load_uvit(path, as_dict, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
