"""Identity module: exactness at zero gate, batching, gradients, save/load and its errors."""

import json

import pytest
import torch
import torch.nn.functional as F

from encoder.config import IdentityConfig
from encoder.id_uvit import IDConditionedUViT
from encoder.identity import CONFIG_FILE, WEIGHTS_FILE, IdentityModule
from encoder.projector import pool_embeddings
from models.paths import WeightsError
from models.uvit import UViT, UViTConfig


def _random_uvit(seed=0):
    torch.manual_seed(seed)
    uvit = UViT(UViTConfig.tiny()).eval()
    with torch.no_grad():
        for p in uvit.parameters():
            p.normal_(0, 0.2)
    return uvit.requires_grad_(False)


def _inputs(b=2):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(b, 4, 8, 8, generator=g), torch.randn(b, 1, 16, generator=g),
            torch.randn(b, 6, 8, generator=g), torch.tensor([980.02, 20.98])[:b], torch.zeros(b),
            torch.ones(b, dtype=torch.long))


def _module(injection, uvit, k=3, kv_rank=0):
    torch.manual_seed(2)
    return IdentityModule(IdentityConfig.for_uvit(uvit.config, injection=injection, num_tokens=k, hidden_dim=32,
                                                  kv_rank=kv_rank))


def _tokens(module, b=2):
    face = F.normalize(torch.randn(b, 512, generator=torch.Generator().manual_seed(3)), dim=-1)
    return module.tokens(face)


@pytest.mark.parametrize("injection", ["extra_tokens", "text_slots"])
def test_zero_gate_is_exactly_plain_unidiffuser(injection):
    uvit = _random_uvit()
    module = _module(injection, uvit)
    net = IDConditionedUViT(uvit, module)
    args = _inputs()
    with torch.no_grad():
        plain = uvit(*args)
        with_id = net(*args, id_tokens=_tokens(module), id_scale=1.0)
    for a, b in zip(plain, with_id):
        assert torch.equal(a, b)  # bit for bit, not approximately


@pytest.mark.parametrize("injection", ["extra_tokens", "text_slots"])
def test_open_gate_changes_output_and_zero_scale_rows_stay_plain(injection):
    uvit = _random_uvit()
    module = _module(injection, uvit)
    with torch.no_grad():
        module.gate.fill_(0.7)
    net = IDConditionedUViT(uvit, module)
    args = _inputs()
    with torch.no_grad():
        plain = uvit(*args)
        mixed = net(*args, id_tokens=_tokens(module), id_scale=torch.tensor([1.0, 0.0]))
    for a, b in zip(plain, mixed):
        assert (a[0] - b[0]).abs().max() > 1e-4  # identity on: output moves
        assert torch.equal(a[1], b[1])  # id_scale 0 in the same batch: plain UViT exactly


def test_gradients_reach_identity_module_only():
    uvit = _random_uvit()
    module = _module("extra_tokens", uvit)
    net = IDConditionedUViT(uvit, module)
    out = net(*_inputs(), id_tokens=_tokens(module))
    (out[0].square().mean() + out[1].square().mean()).backward()
    # at gate 0 the gate itself gets the gradient; the tokens do once the gate opens
    assert module.gate.grad is not None and module.gate.grad.abs().sum() > 0
    assert all(p.grad is None for p in uvit.parameters())
    with torch.no_grad():
        module.gate.fill_(0.1)
    module.zero_grad()
    out = net(*_inputs(), id_tokens=_tokens(module))
    out[0].square().mean().backward()
    assert module.projector.fc1.weight.grad.abs().sum() > 0
    assert module.pos.grad.abs().sum() > 0


def test_id_stream_shapes_and_batch_broadcast():
    uvit = _random_uvit()
    module = _module("extra_tokens", uvit, k=5)
    with torch.no_grad():
        module.gate.fill_(0.3)
    net = IDConditionedUViT(uvit, module)
    args = _inputs()
    tok = _tokens(module, b=1)
    with torch.no_grad():
        a = net(*args, id_tokens=tok)
        b = net(*args, id_tokens=tok.expand(2, -1, -1))
    assert a[0].shape == (2, 4, 8, 8) and a[1].shape == (2, 1, 16) and a[2].shape == (2, 6, 8)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_pool_embeddings_is_normalised_mean():
    e = F.normalize(torch.randn(4, 512), dim=-1)
    f = F.normalize(torch.randn(4, 512), dim=-1)
    p = pool_embeddings(e, f)
    assert p.shape == (512,)
    torch.testing.assert_close(p.norm(), torch.tensor(1.0))
    torch.testing.assert_close(p, F.normalize(((e + f) / 2).mean(0), dim=0))


def test_save_load_round_trip(tmp_path):
    uvit = _random_uvit()
    module = _module("extra_tokens", uvit)
    with torch.no_grad():
        module.gate.normal_()
    module.save(tmp_path / "enc", extra={"step": 7})
    loaded = IdentityModule.load(tmp_path / "enc", uvit_config=uvit.config)
    assert loaded.config == module.config
    for (k, a), (_, b) in zip(module.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    meta = json.loads((tmp_path / "enc" / CONFIG_FILE).read_text())
    assert meta["version"] == 1 and meta["step"] == 7
    assert not list((tmp_path / "enc").glob("*.tmp"))


def test_save_float16_halves_the_file_and_loads_as_float32(tmp_path):
    from safetensors.torch import load_file

    uvit = _random_uvit()
    module = _module("extra_tokens", uvit)
    with torch.no_grad():
        module.gate.normal_()
    module.save(tmp_path / "fp32")
    module.save(tmp_path / "fp16", dtype=torch.float16)
    stored = load_file(str(tmp_path / "fp16" / WEIGHTS_FILE))
    assert {v.dtype for v in stored.values()} == {torch.float16}
    size = lambda d: (tmp_path / d / WEIGHTS_FILE).stat().st_size  # noqa: E731
    assert size("fp16") < 0.55 * size("fp32")
    loaded = IdentityModule.load(tmp_path / "fp16", uvit_config=uvit.config)
    for (k, a), (_, b) in zip(module.state_dict().items(), loaded.state_dict().items()):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a.half().float(), rtol=0, atol=0, msg=k)
    with torch.no_grad():
        module.gate[0, 0] = 1e6  # beyond float16's range
    with pytest.raises(ValueError, match="not finite"):
        module.save(tmp_path / "big", dtype=torch.float16)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        module.save(tmp_path / "int", dtype=torch.int8)


def test_load_errors(tmp_path):
    uvit = _random_uvit()
    module = _module("extra_tokens", uvit)
    folder = module.save(tmp_path / "enc")
    with pytest.raises(WeightsError, match="trained with another config.*num_tokens"):
        IdentityModule.load(folder, expect=IdentityConfig.for_uvit(uvit.config, num_tokens=8, hidden_dim=32))
    with pytest.raises(WeightsError, match="does not fit this UViT.*embed_dim"):
        IdentityModule.load(folder, uvit_config=UViTConfig.v1())
    meta = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(WeightsError, match="version 99"):
        IdentityModule.load(folder)
    (folder / CONFIG_FILE).write_text(json.dumps(meta))
    data = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="damaged or truncated"):
        IdentityModule.load(folder)
    with pytest.raises(WeightsError, match="missing"):
        IdentityModule.load(tmp_path / "nowhere")


def test_wrapper_rejects_mismatched_backbone():
    uvit = _random_uvit()
    module = IdentityModule(IdentityConfig(num_tokens=2, hidden_dim=16))  # v1 widths
    with pytest.raises(ValueError, match="does not fit"):
        IDConditionedUViT(uvit, module)


@pytest.mark.parametrize("kv_rank", [0, 2])
def test_fused_path_equals_two_stream_path(kv_rank):
    uvit = _random_uvit()
    module = _module("extra_tokens", uvit, kv_rank=kv_rank)
    with torch.no_grad():
        module.gate.normal_(0, 0.5)
        if kv_rank:
            module.kv_up.normal_(0, 0.3)
    args = _inputs()
    tok = _tokens(module)
    scale = torch.tensor([1.0, 0.0])
    with torch.no_grad():
        ref = IDConditionedUViT(uvit, module)(*args, id_tokens=tok, id_scale=scale)
        fused = IDConditionedUViT(uvit, module, fused=True)(*args, id_tokens=tok, id_scale=scale)
    for a, b in zip(ref, fused):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_per_photo_tokens_are_each_photos_tokens_at_the_k_positions_and_run_both_paths():
    """--photo-tokens each: N photos give N x K tokens (one photo: exactly the pooled tokens), sharing the K
    position embeddings; the fused and two-stream forms agree on them; text slots refuse them."""
    uvit = _random_uvit()
    module = _module("extra_tokens", uvit)  # K = 3
    with torch.no_grad():
        module.gate.normal_(0, 0.5)
    g = torch.Generator().manual_seed(4)
    emb, flip = (F.normalize(torch.randn(5, 512, generator=g), dim=-1) for _ in range(2))
    with torch.no_grad():
        each = module.tokens_from_photos(emb, flip, per_photo=True)
        one = module.tokens_from_photos(emb[:1], flip[:1], per_photo=True)
        second = module.tokens_from_photos(emb[1:2], flip[1:2])
    assert each.shape == (1, 15, module.config.token_dim)
    torch.testing.assert_close(one, module.tokens_from_photos(emb[:1], flip[:1]))
    torch.testing.assert_close(each[:, 3:6], second)  # photo 2's tokens, in photo order
    torch.testing.assert_close(module.position(15)[:, 6:9], module.pos)
    with pytest.raises(ValueError, match="whole groups"):
        module.position(4)
    args = _inputs()
    with torch.no_grad():
        ref = IDConditionedUViT(uvit, module)(*args, id_tokens=each, id_scale=1.0)
        fused = IDConditionedUViT(uvit, module, fused=True)(*args, id_tokens=each, id_scale=1.0)
        pooled = IDConditionedUViT(uvit, module)(*args, id_tokens=module.tokens_from_photos(emb, flip))
    for a, b in zip(ref, fused, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ref[0], pooled[0])  # another conditioning than the mean embedding's
    with pytest.raises(ValueError, match="extra_tokens"):
        _module("text_slots", uvit).tokens_from_photos(emb, flip, per_photo=True)


@pytest.mark.parametrize("kv_rank", [0, 2])
def test_fused_path_with_gradients_equals_two_stream_path(kv_rank):
    """Training takes the fused form's other branch (no log-sum-exp merge): same values and
    the same gradients to the identity tokens."""
    uvit = _random_uvit()
    module = _module("extra_tokens", uvit, kv_rank=kv_rank)
    with torch.no_grad():
        module.gate.normal_(0, 0.5)
        if kv_rank:
            module.kv_up.normal_(0, 0.3)
    args = _inputs()
    scale = torch.tensor([1.0, 0.0])
    outs, grads = [], []
    for fused in (False, True):
        tok = _tokens(module).detach().requires_grad_(True)
        out = IDConditionedUViT(uvit, module, fused=fused)(*args, id_tokens=tok, id_scale=scale)
        sum(o.square().sum() for o in out).backward()
        outs.append(out)
        grads.append(tok.grad)
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)


def test_compiled_blocks_compute_the_same_values_and_gradients_with_one_graph_per_kind_of_block():
    """Pretraining's regional compilation (compile_blocks): the fused training form, compiled once and
    reused by every block (their weights are graph inputs, the low-rank key/value factors tensors), gives
    the eager values and gradients; the compiler sees a few kinds of block, not one graph per block."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    uvit = _random_uvit()
    module = _module("extra_tokens", uvit, kv_rank=2)
    with torch.no_grad():
        module.gate.normal_(0, 0.5)
        module.kv_up.normal_(0, 0.3)
    args = _inputs()
    outs, grads = [], []
    for compiled in (False, True):
        module.zero_grad(set_to_none=True)
        out = IDConditionedUViT(uvit, module, fused=True, compile_blocks=compiled)(
            *args, id_tokens=_tokens(module), id_scale=torch.tensor([1.0, 0.0]))
        sum(o.square().sum() for o in out).backward()
        outs.append(out)
        grads.append(torch.cat([p.grad.flatten() for p in module.parameters()]))
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-5)
    n_blocks = len(uvit.in_blocks) + 1 + len(uvit.out_blocks)
    assert 1 <= counters["stats"]["unique_graphs"] <= 3 < n_blocks  # in/mid (no skip) and out (skip) blocks


def test_kv_rank_starts_as_the_plain_extra_token_module_then_learns_its_own_keys_and_values(tmp_path):
    uvit = _random_uvit()
    plain, kv = _module("extra_tokens", uvit), _module("extra_tokens", uvit, kv_rank=2)
    assert kv.kv_down.shape == (5, 2, 64, 2) and kv.kv_up.shape == (5, 2, 2, 64)  # tiny: 5 blocks, width 64
    with torch.no_grad():
        for m in (plain, kv):
            m.gate.fill_(0.5)
    args, scale = _inputs(), torch.tensor([1.0, 0.0])
    for fused in (False, True):
        with torch.no_grad():
            a = IDConditionedUViT(uvit, plain, fused=fused)(*args, id_tokens=_tokens(plain), id_scale=scale)
            b = IDConditionedUViT(uvit, kv, fused=fused)(*args, id_tokens=_tokens(kv), id_scale=scale)
        for x, y in zip(a, b):
            assert torch.equal(x, y)  # zero up-projections: exactly the module without them
    # the up-projections get the gradient first (LoRA's order), the down-projections once they are open
    net = IDConditionedUViT(uvit, kv)
    out = net(*args, id_tokens=_tokens(kv), id_scale=scale)
    out[0].square().mean().backward()
    assert kv.kv_up.grad.abs().sum() > 0 and kv.kv_down.grad.abs().sum() == 0
    assert all(p.grad is None for p in uvit.parameters())
    with torch.no_grad():
        kv.kv_up.normal_(0, 0.3)
        moved = net(*args, id_tokens=_tokens(kv), id_scale=scale)
        plain_out = uvit(*args)
    assert (moved[0][0] - b[0][0]).abs().max() > 1e-4  # the keys and values matter
    assert torch.equal(moved[0][1], plain_out[0][1])  # id_scale 0 rows stay the plain UViT's
    # saved and loaded with its config; a module saved before kv_rank existed loads as kv_rank 0
    loaded = IdentityModule.load(kv.save(tmp_path / "kv"), uvit_config=uvit.config)
    assert loaded.config.kv_rank == 2 and torch.equal(loaded.kv_up, kv.kv_up)
    folder = plain.save(tmp_path / "old")
    meta = json.loads((folder / CONFIG_FILE).read_text())
    del meta["config"]["kv_rank"]
    (folder / CONFIG_FILE).write_text(json.dumps(meta))
    assert IdentityModule.load(folder, uvit_config=uvit.config).config.kv_rank == 0
    with pytest.raises(ValueError, match="kv_rank"):
        IdentityConfig.for_uvit(uvit.config, injection="text_slots", num_tokens=2, kv_rank=2)


def test_the_block_check_compares_each_variant_with_float32(monkeypatch):
    """eval.bench.pretraining --check-block (run on the GPU; here the tiny backbone on the CPU): every
    variant reports its outputs' and input gradients' error against float32, at bf16's level here."""
    import dataclasses

    import eval.bench.pretraining as bench
    from pretrain.config import PretrainConfig

    monkeypatch.setattr(bench, "BLOCK_VARIANTS", (("eager", "sdpa", "all"), ("aot_eager", "sdpa", "identity")))
    config = dataclasses.replace(PretrainConfig(random_backbone=True), uvit=dataclasses.asdict(UViTConfig.tiny()),
                                 batch_size=2)
    res = bench.check_block(config, torch.device("cpu"))
    assert set(res["variants"]) == {f"{form} {v}" for form in ("two_stream", "fused")
                                    for v in ("eager sdpa grads=all", "aot_eager sdpa grads=identity")}
    for name, errors in res["variants"].items():
        wanted = {"out", "out_id", "grad_xi", "grad_skip_i", "grad_gate"} | (
            {"grad_x", "grad_skip"} if name.endswith("all") else set())
        assert set(errors) == wanted and all(0 < e < 0.05 for e in errors.values()), (name, errors)


@pytest.mark.parametrize("injection,kv_rank", [("extra_tokens", 0), ("extra_tokens", 2), ("text_slots", 0)])
def test_a_folded_scale_samples_as_that_scale_did(injection, kv_rank):
    """fold_scale_(s): the module at id_scale 1 computes what the unfolded one did at id_scale s."""
    uvit = _random_uvit()
    module = _module(injection, uvit, kv_rank=kv_rank)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
        args, tok = _inputs(), _tokens(module)
        at_scale = IDConditionedUViT(uvit, module)(*args, id_tokens=tok, id_scale=torch.tensor([0.6, 1.5]))
        module.fold_scale_(0.6)
        folded = IDConditionedUViT(uvit, module)(*args, id_tokens=tok, id_scale=torch.tensor([1.0, 2.5]))
    for a, b in zip(at_scale, folded):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="positive"):
        module.fold_scale_(0.0)
