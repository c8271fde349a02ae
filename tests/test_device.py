"""models/device.py: device and dtype choice, and the CUDA allocator default the CLIs ask for."""

import os

import pytest
import torch

from models.device import ALLOC_CONF_VARS, pick_device, pick_dtype, prefer_expandable_segments
from models.errors import UserError


def test_device_and_dtype_choice():
    assert pick_device("cpu").type == "cpu"
    assert pick_dtype("auto", torch.device("cpu")) is torch.float32
    assert pick_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert pick_dtype("fp16", torch.device("cpu")) is torch.float16
    assert pick_dtype("fastest", torch.device("cuda")) is torch.bfloat16
    with pytest.raises(UserError, match="unknown dtype 'int8'"):
        pick_dtype("int8", torch.device("cpu"))


def test_expandable_segments_asked_for_only_when_the_user_did_not_configure_the_allocator(monkeypatch):
    for var in ALLOC_CONF_VARS:
        monkeypatch.delenv(var, raising=False)
    if torch.cuda.is_initialized():
        pytest.skip("CUDA already initialised in this process: the allocator's configuration is fixed")
    assert prefer_expandable_segments() is True
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "")  # the user's (empty: PyTorch's default) wins
    assert prefer_expandable_segments() is False and os.environ["PYTORCH_CUDA_ALLOC_CONF"] == ""
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "max_split_size_mb:128")  # the newer name counts too
    assert prefer_expandable_segments() is False and "PYTORCH_CUDA_ALLOC_CONF" not in os.environ


def test_a_device_that_is_not_here_is_refused_naming_the_ones_that_are():
    from models.device import DeviceError, available_devices, require_gpu

    here = available_devices()
    assert here[0] == "cpu" and all(d == "mps" or d.startswith("cuda:") for d in here[1:])
    with pytest.raises(DeviceError, match="unknown device 'garbage'") as e:
        pick_device("garbage")
    assert isinstance(e.value, UserError) and e.value.hint.startswith("devices here: cpu")
    with pytest.raises(DeviceError, match="'cuda:99'"):
        pick_device("cuda:99")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="sees no CUDA GPU"):
            pick_device("cuda")
        with pytest.raises(DeviceError, match="tool X needs a CUDA GPU"):
            require_gpu("tool X")
        assert pick_device("auto").type == "cpu"


def test_the_fastest_dtype_is_bf16_only_where_it_is_native(monkeypatch):
    import models.device as dev

    for native, wanted in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda native=native: native)
        assert dev.fastest_dtype_name(torch.device("cpu")) == wanted
    assert dev.fastest_dtype_name(torch.device("cuda")) == "bf16"  # no GPU needed: it only reads the type
    assert dev.fastest_dtype_name(torch.device("cpu")) in dev.DTYPES
    for native, wanted in ((True, torch.bfloat16), (False, torch.float32)):  # the same rule as a --dtype choice
        monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda native=native: native)
        assert dev.pick_dtype("fastest", torch.device("cpu")) is wanted
