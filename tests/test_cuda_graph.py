"""models.cuda_graph.GraphedNet: passthrough off the GPU, exact replays on it."""

import pytest
import torch

from models.cuda_graph import GraphedNet
from models.uvit import UViT, UViTConfig


def _uvit(device):
    torch.manual_seed(0)
    uvit = UViT(UViTConfig.tiny()).eval().requires_grad_(False)
    with torch.no_grad():
        for p in uvit.parameters():
            p.normal_(0, 0.2)
    return uvit.to(device)


def _inputs(b, device, seed):
    g = torch.Generator().manual_seed(seed)
    args = (torch.randn(b, 4, 8, 8, generator=g), torch.randn(b, 1, 16, generator=g),
            torch.randn(b, 6, 8, generator=g), torch.rand(b, generator=g) * 1000, torch.zeros(b),
            torch.ones(b, dtype=torch.long))
    return tuple(a.to(device) for a in args)


def test_cpu_tensors_and_gradients_pass_straight_through():
    calls = []
    net = GraphedNet(lambda x, scale=1.0: calls.append(scale) or x * scale)
    x = torch.ones(3)
    with torch.no_grad():
        assert torch.equal(net(x, scale=2.0), 2 * x)
    assert calls == [2.0] and not net._graphs
    y = torch.ones(2, requires_grad=True)
    net(y).sum().backward()  # not captured: autograd works as without the wrapper
    assert torch.equal(y.grad, torch.ones(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_replays_equal_direct_calls_and_outputs_are_fresh():
    uvit = _uvit("cuda")
    net = GraphedNet(uvit, max_graphs=2)
    with torch.no_grad():
        outs = []
        for seed in range(3):
            args = _inputs(2, "cuda", seed)
            got, want = net(*args), uvit(*args)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            outs.append(got)
        assert len(net._graphs) == 1
        assert not torch.equal(outs[0][0], outs[1][0])  # earlier outputs were not overwritten
        for b in (3, 4):  # new batch sizes: new graphs, the oldest dropped past max_graphs
            args = _inputs(b, "cuda", 7)
            torch.testing.assert_close(net(*args)[0], uvit(*args)[0], rtol=1e-5, atol=1e-5)
        assert len(net._graphs) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_two_graphs_sharing_a_pool_stay_exact_when_interleaved():
    uvit = _uvit("cuda")
    pool = torch.cuda.graph_pool_handle()
    a = GraphedNet(uvit, pool=pool)
    b = GraphedNet(lambda x: (x.square().cumsum(-1) + 1).sqrt(), pool=pool)
    x = torch.randn(4, 4096, device="cuda")
    with torch.no_grad():
        for seed in range(3):  # a, b, a, b, ...: each replay's outputs are copied out before the next
            args = _inputs(2, "cuda", seed)
            got_a, got_b = a(*args), b(x + seed)
            torch.testing.assert_close(got_a[0], uvit(*args)[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got_b, ((x + seed).square().cumsum(-1) + 1).sqrt())
