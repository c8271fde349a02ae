"""models.execution: the three policies, prepared nets and decoders, and what the pipeline runs with."""

import numpy as np
import pytest
import torch
from tiny_stack import make_tiny_weights_dir

from models.execution import Execution, without_cuda_graphs
from models.pipeline import UniDiffuserT2I
from models.sampling import sample_joint


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return UniDiffuserT2I.from_pretrained(make_tiny_weights_dir(tmp_path_factory.mktemp("weights")), device="cpu")


def test_policies_precision():
    plain = Execution.autocast_to("cpu", torch.float32)
    assert plain.autocast_dtype is None and not plain.fast and plain.describe() == "float32"
    half = Execution.autocast_to("cpu", torch.bfloat16)
    assert half.autocast_dtype is torch.bfloat16 and half.describe() == "bfloat16"
    ref_gpu, ref_cpu = Execution.reference("cuda"), Execution.reference("cpu")
    assert (ref_gpu.dtype, ref_gpu.autocast_dtype) == (torch.float32, torch.float16)
    assert ref_gpu.describe() == "float32 weights under float16 autocast"
    assert (ref_cpu.dtype, ref_cpu.autocast_dtype) == (torch.float32, None)
    fast = Execution.fast_path("cpu", torch.bfloat16, None)
    assert fast.fast and fast.autocast_dtype is None and not fast.cuda_graphs  # no graphs off CUDA
    assert fast.describe() == "bfloat16 fast path (eager)"
    assert Execution.fast_path("cuda", torch.bfloat16, "default").describe() == \
        "bfloat16 fast path (compiled default, CUDA graphs)"
    assert without_cuda_graphs("reduce-overhead") == "default"
    assert without_cuda_graphs("max-autotune") == "max-autotune-no-cudagraphs"
    with half.autocast():
        assert torch.is_autocast_enabled("cpu")
    with plain.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_net_is_prepared_once_and_casts_its_inputs():
    seen = []

    def net(img, clip_img, text, t_img, t_text, data_type, **kwargs):
        seen.append((img.dtype, text.dtype, t_img.dtype, data_type.dtype, kwargs["extra"].dtype))
        return img, clip_img, text

    ex = Execution.fast_path("cpu", torch.bfloat16, None)
    run = ex.net(net)
    assert ex.net(net) is run  # the same runnable: compiling and capturing happen once
    f = torch.zeros(2, 3)
    run(f, f, f, torch.zeros(2), torch.zeros(2), torch.ones(2, dtype=torch.long), extra=f)
    assert seen == [(torch.bfloat16, torch.bfloat16, torch.float32, torch.long, torch.bfloat16)]
    assert Execution.fast_path("cpu", torch.bfloat16, None).net(net) is not run  # another execution, its own


def test_fast_path_on_the_cpu_gives_the_default_images(pipe):
    """In float32 on the CPU the fast path differs only in decoding one image at a time."""
    default = pipe(["a boy"], n_per_prompt=2, steps=3)
    calls = []
    decode = pipe.autoencoder.decode
    pipe.autoencoder.decode = lambda z: calls.append(z.shape[0]) or decode(z)  # read when the decoder is prepared
    pipe.execution = Execution.fast_path("cpu", torch.float32, None)
    try:
        fast = pipe(["a boy"], n_per_prompt=2, steps=3)
    finally:
        del pipe.autoencoder.decode
        pipe.execution = Execution.autocast_to(pipe.device, pipe.dtype)
    assert calls == [1, 1]
    for a, b in zip(default[0], fast[0]):
        assert np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max() <= 1


def test_sample_joint_is_the_pipelines_sampler(pipe):
    text = pipe.encode_text(["a girl"]).expand(2, -1, -1)
    gen = torch.Generator().manual_seed(3)
    z, clip = pipe.sample_latents(pipe.eps_fn(text, generator=gen), 2, steps=3, generator=gen)
    gen = torch.Generator().manual_seed(3)
    z2, clip2 = sample_joint(pipe.eps_fn(text, generator=gen), 2, z_shape=pipe.z_shape, clip_dim=pipe.clip_dim,
                             steps=3, generator=gen)
    assert torch.equal(z, z2) and torch.equal(clip, clip2)
    assert z2.dtype == torch.float32 and z2.shape == (2, *pipe.z_shape) and clip2.shape == (2, 1, pipe.clip_dim)
