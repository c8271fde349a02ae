"""Replay a fixed-shape network call as a CUDA graph: the GPU work without the Python per kernel.

Eager PyTorch launches every kernel from Python. A UViT forward is hundreds of small kernels, and
in an eager call the GPU waits on the CPU for a large part of the time (docs/performance.md, the
CUDA-graph lever). Capturing the call once per input signature and replaying it gives the GPU
time back without compiling anything.

    net = GraphedNet(net)            # inference only, CUDA tensors, no randomness inside `net`
    out = net(*args, **kwargs)       # first call of a signature: warm-up + capture

Tensor arguments are copied into the graph's static inputs on every call; other arguments, the
shapes, dtypes and devices form the signature. Outputs are returned as fresh tensors (clones of
the static outputs), so a caller may keep them across calls.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten


class GraphedNet:
    """Wraps `fn(*args, **kwargs) -> tensors` (any nesting) with one CUDA graph per signature.

    max_graphs bounds how many signatures are kept (each holds its activations' memory); past it
    the oldest graph is dropped. `pool` (torch.cuda.graph_pool_handle()) lets several wrapped
    functions that run one after another on one stream share their activations' memory: the
    sampler's network and the VAE decoder then need the larger of their peaks, not the sum. That
    is safe here because a replay's outputs are copied out before anything else runs.
    """

    def __init__(self, fn: Callable, warmup: int = 2, max_graphs: int = 4, pool=None):
        self.fn = fn
        self.warmup = warmup
        self.max_graphs = max_graphs
        self.pool = pool
        self._graphs: dict[tuple, tuple] = {}  # signature -> (graph, static inputs, static outputs, spec)

    @staticmethod
    def _signature(leaves) -> tuple:
        return tuple((tuple(x.shape), x.dtype, x.device) if torch.is_tensor(x) else ("value", x) for x in leaves)

    def __call__(self, *args, **kwargs):
        leaves, spec = tree_flatten((args, kwargs))
        tensors = [x for x in leaves if torch.is_tensor(x)]
        if not tensors or not all(x.is_cuda for x in tensors) or torch.is_grad_enabled():
            return self.fn(*args, **kwargs)
        key = (spec, self._signature(leaves))
        if key not in self._graphs:
            if len(self._graphs) >= self.max_graphs:
                self._graphs.pop(next(iter(self._graphs)))
            self._graphs[key] = self._capture(leaves, spec)
        graph, static_in, static_out, out_spec = self._graphs[key]
        for dst, src in zip(static_in, leaves):
            if torch.is_tensor(src):
                dst.copy_(src)
        graph.replay()
        return tree_unflatten([x.clone() if torch.is_tensor(x) else x for x in static_out], out_spec)

    def _capture(self, leaves, spec):
        static_in = [x.clone() if torch.is_tensor(x) else x for x in leaves]
        args, kwargs = tree_unflatten(static_in, spec)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the capture: lazy init, cuDNN/cuBLAS plans
            for _ in range(self.warmup):
                self.fn(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.fn(*args, **kwargs)
        static_out, out_spec = tree_flatten(out)
        return graph, static_in, static_out, out_spec
