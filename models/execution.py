"""How the text-to-image pipeline runs its nets and its VAE decoder: precision, compilation, CUDA graphs.

The pipeline (`models.pipeline.UniDiffuserT2I`) keeps only its stages; its `execution` hands them
a runnable net and decoder:

    pipe.execution = Execution.fast_path(pipe.device, pipe.dtype)   # or .reference(device), .autocast_to(...)
    net = pipe.execution.net(pipe.uvit)          # what eps functions call
    images = pipe.execution.decoder(pipe.autoencoder)(z)

Three policies:
- `autocast_to(device, dtype)`, the pipeline's default: module weights held in `dtype`, the nets
  and the decoder run under autocast(dtype) (none for float32), so LayerNorm, softmax and the like
  upcast to float32 as autocast decides.
- `reference(device)`: the reference code's precision, float32 weights under float16 autocast on
  CUDA (float32 on the CPU). `python -m models.t2i` runs it by default.
- `fast_path(device, dtype, compile_mode, cuda_graphs)`, what `sample.py` runs on CUDA: the nets
  compute purely in `dtype` (no autocast, so no float32 upcasts), on CUDA each MLP's bias + GELU
  is fused into its GEMM (`models.uvit.Mlp`; preparing a net turns it on in its UViT), the nets
  and the decoder are compiled with `compile_mode` (None: eager), each net call of a fixed shape
  is replayed as a CUDA graph (`models.cuda_graph`) unless the compile mode captures graphs
  itself, and images are decoded one at a time (the decoder's activations are its memory peak).
  Callers read `fast` to pick their own fast forms (the fused identity forward,
  `personalize.generate.identity_net`). Figures: docs/performance.md.

In every policy the sampler state, the text features and all guidance arithmetic stay float32;
a prepared net casts its floating inputs to the weights' dtype. Nets and decoders are prepared once
per execution (compiling is costly) and kept for its lifetime; replacing `pipe.execution` drops them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from .cuda_graph import GraphedNet
from .guidance import Net, cast_net
from .uvit import UViT

# torch.compile modes that capture CUDA graphs themselves
MODES_WITH_CUDA_GRAPHS = ("reduce-overhead", "max-autotune")


def without_cuda_graphs(mode: str) -> str:
    """The same compile mode without CUDA graphs (see `Execution.decoder`)."""
    return {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}.get(mode, mode)


class Execution:
    """One execution policy on `device` (build it with a class method; see the module docstring).

    dtype: the dtype the modules' weights are held in (prepared nets cast their inputs to it);
    autocast: the dtype the nets run under torch.autocast in, or None; fast: the fast path's
    fusion and per-image decoding; compile_mode: torch.compile mode or None (eager);
    cuda_graphs: replay each net call of a fixed shape as a CUDA graph.
    """

    def __init__(self, device: torch.device | str, dtype: torch.dtype, *, autocast: torch.dtype | None = None,
                 fast: bool = False, compile_mode: str | None = None, cuda_graphs: bool = False):
        self.device = torch.device(device)
        self.dtype = dtype
        self.autocast_dtype = autocast
        self.fast = fast
        self.compile_mode = compile_mode
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self._nets: dict[object, Net] = {}  # net -> its runnable form
        self._decoders: dict[object, Callable] = {}  # autoencoder -> its decode function
        self._graph_pool = None  # CUDA-graph memory pool shared by this execution's graphs

    @classmethod
    def autocast_to(cls, device: torch.device | str, dtype: torch.dtype) -> Execution:
        """Weights in `dtype`, nets and decoder under autocast(dtype); float32: no autocast."""
        return cls(device, dtype, autocast=None if dtype == torch.float32 else dtype)

    @classmethod
    def reference(cls, device: torch.device | str) -> Execution:
        """The reference code's precision: float32 weights under float16 autocast on CUDA, float32
        on the CPU. Load the modules in float32 for it."""
        on_cuda = torch.device(device).type == "cuda"
        return cls(device, torch.float32, autocast=torch.float16 if on_cuda else None)

    @classmethod
    def fast_path(cls, device: torch.device | str, dtype: torch.dtype,
                  compile_mode: str | None = "max-autotune-no-cudagraphs", cuda_graphs: bool = True) -> Execution:
        """Nets purely in `dtype` (weights held in it), fused, compiled with `compile_mode` (None:
        eager) and, with `cuda_graphs` (CUDA only), replayed as CUDA graphs."""
        return cls(device, dtype, fast=True, compile_mode=compile_mode, cuda_graphs=cuda_graphs)

    def describe(self) -> str:
        """e.g. "float32 weights under float16 autocast" or "bfloat16 fast path (eager, CUDA graphs)"."""
        name = str(self.dtype).removeprefix("torch.")
        if self.fast:
            how = ", ".join([f"compiled {self.compile_mode}" if self.compile_mode else "eager"]
                            + (["CUDA graphs"] if self.cuda_graphs else []))
            return f"{name} fast path ({how})"
        if self.autocast_dtype is None or self.autocast_dtype == self.dtype:
            return name
        return f"{name} weights under {str(self.autocast_dtype).removeprefix('torch.')} autocast"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast the nets and the decoder run under (a no-op without one)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def net(self, net: Net) -> Net:
        """`net` (UViT signature) as eps functions call it: floating inputs cast to self.dtype; on the
        fast path with the UViT's GELU epilogue (CUDA), compiled and replayed as CUDA graphs as set.
        Prepared once per net; the sampler calls it under `autocast()`."""
        if net not in self._nets:
            if self.fast and self.device.type == "cuda" and isinstance(net, nn.Module):
                for m in net.modules():
                    if isinstance(m, UViT):
                        m.use_gelu_epilogue(True)
            fn = cast_net(net, self.dtype)
            if self.fast and self.compile_mode:
                fn = torch.compile(fn, mode=self.compile_mode, dynamic=False)
            if self.fast and self.cuda_graphs and self.compile_mode not in MODES_WITH_CUDA_GRAPHS:
                if self._graph_pool is None:  # one pool: a pipeline may sample with several nets in turn
                    self._graph_pool = torch.cuda.graph_pool_handle()
                fn = GraphedNet(fn, pool=self._graph_pool)
            self._nets[net] = fn
        return self._nets[net]

    def decoder(self, autoencoder) -> Callable[[torch.Tensor], torch.Tensor]:
        """decode(z [B, C, h, w]) -> autoencoder output [B, 3, H, W] float32, under `autocast()`.

        On the fast path it is compiled when a compile mode is set (without CUDA graphs: replaying
        the decoder gave no speed and its activations could not share the nets' graph memory) and
        decodes one image at a time (its activations at full resolution are its memory peak).
        """
        if autoencoder not in self._decoders:
            fn = autoencoder.decode
            if self.fast and self.compile_mode:
                fn = torch.compile(fn, mode=without_cuda_graphs(self.compile_mode), dynamic=False)

            def decode(z: torch.Tensor) -> torch.Tensor:
                z = z.to(self.device, self.dtype)
                with self.autocast():
                    return torch.cat([fn(c).float() for c in (z.split(1) if self.fast else (z,))])

            self._decoders[autoencoder] = decode
        return self._decoders[autoencoder]
