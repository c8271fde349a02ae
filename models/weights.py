"""Reading, checking and saving state dicts: the helpers every weight loader goes through.

- `read_state_dict(path, what)`: .pth / .pt / .bin / .ckpt via `torch.load(weights_only=True)`
  (memory-mapped when the file allows it), or .safetensors; never an arbitrary pickle.
- `load_strict(module, state_dict, path, what)`: all differences (missing, unexpected, wrong shape)
  reported at once, with a guess of what the file really is.
- `load_frozen(build, path, what)`: build on the meta device, assign the file's tensors, freeze.
- `save_state_dict(state_dict, path)`: atomic write, format by suffix.

Every failure is a `models.paths.WeightsError` that names the file and says what to do.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_write
from .paths import ENV_VAR, WeightsError

README_HINT = "checkpoints/README.md lists every expected file and where to get it."
MAX_LISTED = 8  # offending keys listed per kind in an error message

# (key pattern, what a file with such a key is): used to say what a mismatched file looks like.
_SIGNATURES = (
    (r"^(encoder|decoder)\.conv_in\.weight$", "the AutoencoderKL (autoencoder_kl.pth)"),
    (r"^(in_blocks\.0\.|pos_embed_token$)", "the UniDiffuser UViT (uvit_v1.pth)"),
    (r"^text_tower\.", "the identity world's world-CLIP (world_clip/model.safetensors)"),
    (r"^scale$", "the identity world's pixel space (pixel_space.safetensors)"),
    (r"^encode_prefix\.", "the caption decoder (caption_decoder.pth)"),
    (r"^(text_model\.|vision_model\.)", "a Hugging Face CLIP model (clip-vit-large-patch14/)"),
    (r"^visual\.transformer\.resblocks\.", "an OpenAI / open_clip CLIP model (ViT-B-32.pt)"),
    (r"^(transformer\.)?h\.0\.attn\.c_attn\.", "a GPT-2 model (gpt2/pytorch_model.bin)"),
    (r"^gpt\.transformer\.", "a GPT-2 caption decoder without encode_prefix"),
)


def identify(keys: Iterable[str]) -> str | None:
    """What a state dict with these keys looks like (first matching signature), or None."""
    keys = list(keys)
    for pattern, name in _SIGNATURES:
        rx = re.compile(pattern)
        if any(rx.search(k) for k in keys):
            return name
    return None


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def _unreadable(path: Path, what: str, why: str) -> WeightsError:
    return WeightsError(
        f"{what}: cannot read {path}: {why}. The file is probably truncated (an interrupted download or "
        f"copy) or not a weight file at all; download it again. {README_HINT}")


def read_state_dict(path: str | os.PathLike, what: str = "weights") -> dict[str, torch.Tensor]:
    """Tensors of a weight file as {name: tensor} on the CPU, in the file's dtype.

    safetensors content (or a .safetensors name) is read with safetensors; anything else with
    torch.load(weights_only=True), memory-mapped for zip-format files. A top-level
    {"state_dict": ...} or {"model": ...} that is the whole content is unwrapped; a `module.` prefix
    carried by every key is stripped.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsError(
            f"{what}: {path} does not exist. Pass the path of the file, or put it in the weights folder "
            f"(checkpoints/ at the repository root or ${ENV_VAR}; the competition's models/ layout works "
            f"as is). {README_HINT}")
    if path.is_dir():
        raise WeightsError(f"{what}: {path} is a folder, but a weight file (.pth or .safetensors) is "
                           f"expected here. {README_HINT}")
    if path.stat().st_size == 0:
        raise _unreadable(path, what, "the file is empty")
    with open(path, "rb") as f:
        head = f.read(32)
    if head.startswith(b"version https://git-lfs"):
        raise WeightsError(f"{what}: {path} is a Git LFS pointer, not the weights: fetch the real file "
                           f"(git lfs pull, or download it directly). {README_HINT}")

    # The content decides the format where it is recognisable (a .pth may hold safetensors and vice versa).
    safetensors_like = head[8:10] == b'{"' or (path.suffix == ".safetensors" and not head.startswith(b"PK"))
    if safetensors_like:
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except Exception as e:  # SafetensorError, OSError, ... on bad bytes
            raise _unreadable(path, what, f"not a valid safetensors file ({e})") from e
    else:
        try:
            obj = _torch_load(path)
        except Exception as e:  # KeyError, RuntimeError, EOFError, UnpicklingError, ... on bad bytes
            text = str(e)
            objects = "Unsupported global" in text or "Can only build" in text
            if isinstance(e, pickle.UnpicklingError) and objects:
                found = re.search(r"GLOBAL (\S+)", text)
                detail = f" (e.g. {found.group(1)})" if found else ""
                raise WeightsError(
                    f"{what}: {path} holds Python objects other than tensors{detail}, such as a pickled "
                    f"model or training state; they are not loaded, for safety (torch.load "
                    f"weights_only=True). Save the state dict alone instead: "
                    f"torch.save(model.state_dict(), path). {README_HINT}") from e
            if head.startswith(b"PK"):
                why = f"a damaged PyTorch zip archive ({type(e).__name__}: {_first_line(e)})"
            else:
                why = "neither a PyTorch zip archive nor a readable legacy PyTorch pickle"
            raise _unreadable(path, what, why) from e
    return _as_state_dict(obj, path, what)


def _torch_load(path: Path):
    """torch.load(weights_only=True), memory-mapped when the file is a zip archive that allows it."""
    if zipfile.is_zipfile(path):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # some archives cannot be memory-mapped: read them normally
            pass
    return torch.load(path, map_location="cpu", weights_only=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _as_state_dict(obj, path: Path, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise WeightsError(f"{what}: {path} holds a {type(obj).__name__}, not a state dict "
                           f"(a mapping of names to tensors). {README_HINT}")
    if len(obj) == 1:
        (key, value), = obj.items()
        if key in ("state_dict", "model") and isinstance(value, dict):
            obj = value
    bad = [(k, type(v).__name__) for k, v in obj.items()
           if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        listed = ", ".join(f"{k!r}: {t}" for k, t in bad[:MAX_LISTED])
        raise WeightsError(
            f"{what}: {path} is not a plain state dict: {len(bad)} entries are not tensors ({listed}). "
            f"It may be a training checkpoint; extract the model's state dict from it "
            f"(e.g. torch.save(ckpt['state_dict'], new_path)). {README_HINT}")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def check_state_dict(module: nn.Module, state_dict: dict[str, torch.Tensor], path: str | os.PathLike,
                     what: str) -> None:
    """Raise one WeightsError listing every missing, unexpected and wrong-shape key, if any."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if not (missing or unexpected or wrong):
        return

    def listing(title: str, keys: list[str], line: Callable[[str], str]) -> list[str]:
        if not keys:
            return []
        more = f" (first {MAX_LISTED} shown)" if len(keys) > MAX_LISTED else ""
        return [f"  {len(keys)} {title}{more}:"] + [f"    {line(k)}" for k in keys[:MAX_LISTED]]

    lines = [f"{what}: {path} does not match the module ({len(missing)} missing, {len(unexpected)} "
             f"unexpected, {len(wrong)} with the wrong shape; the file has {len(state_dict)} entries, the "
             f"module {len(expected)})."]
    lines += listing("with the wrong shape", wrong,
                     lambda k: f"{k}: expected {_shape(expected[k])}, found {_shape(state_dict[k])}")
    lines += listing("missing from the file", missing, lambda k: f"{k}: expected {_shape(expected[k])}")
    lines += listing("unexpected in the file", unexpected, lambda k: f"{k}: found {_shape(state_dict[k])}")
    found, wanted = identify(state_dict), identify(expected)
    if found is not None and found != wanted:
        lines.append(f"  This file looks like {found}, not {wanted or what}: check which file was passed.")
        lines.append(f"  What to do: pass the right file. {README_HINT}")
    else:
        lines.append("  What to do: check that the file is the right one and complete, and that the config "
                     f"matches the one the weights were trained with. {README_HINT}")
    raise WeightsError("\n".join(lines))


def load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], path: str | os.PathLike, what: str,
                ignore: Iterable[str] = (), dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> nn.Module:
    """Load `state_dict` into `module` with every key and shape checked; returns the module.

    ignore: regular expressions (re.search) of keys that are dropped before the check.
    On a module built on the meta device the file's tensors are assigned (no copy unless `device`
    or `dtype` asks for one; floating-point tensors keep the file's dtype unless `dtype` is given);
    otherwise values are copied into the existing parameters (which keep their dtype and device).
    """
    patterns = [re.compile(p) for p in ignore]
    sd = {k: v for k, v in state_dict.items() if not any(p.search(k) for p in patterns)}
    check_state_dict(module, sd, path, what)
    if dtype is not None or device is not None:
        sd = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None) for k, v in sd.items()}
    on_meta = any(t.is_meta for t in _tensors(module))
    module.load_state_dict(sd, strict=True, assign=on_meta)
    still_meta = [n for n, t in _named_tensors(module) if t.is_meta]
    if still_meta:
        raise RuntimeError(f"{type(module).__name__} has tensors outside its state dict left on the meta "
                           f"device after loading: {still_meta[:MAX_LISTED]}")
    return module


def _named_tensors(module: nn.Module):
    yield from module.named_parameters()
    yield from module.named_buffers()


def _tensors(module: nn.Module):
    return (t for _, t in _named_tensors(module))


class _SkipInitOnMeta(torch.overrides.TorchFunctionMode):
    """Inside, random in-place initialisation of meta tensors is skipped (it would compute
    nothing anyway). Building modules on the meta device otherwise routes e.g. `normal_` through
    PyTorch's reference implementations, whose first call imports torch._dynamo: seconds of
    start-up for a command that never compiles (docs/performance.md)."""

    _SKIPPED = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.random_,
                          torch.Tensor.exponential_, torch.Tensor.bernoulli_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")
        skip = func in self._SKIPPED or getattr(func, "__module__", None) == "torch.nn.init"
        if skip and isinstance(target, torch.Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """build() on the meta device, random initialisation skipped: a shell for `load_strict`."""
    with torch.device("meta"), _SkipInitOnMeta():
        return build()


def load_frozen(build: Callable[[], nn.Module], path: str | os.PathLike, what: str, *,
                device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                ignore: Iterable[str] = ()) -> nn.Module:
    """Read `path`, build the module on the meta device, assign the tensors, freeze (eval, no grad).

    The file is read before building so that a missing or corrupt file fails fast.
    """
    state_dict = read_state_dict(path, what)
    module = build_on_meta(build)
    load_strict(module, state_dict, path, what, ignore=ignore, dtype=dtype, device=device)
    return module.to(device).eval().requires_grad_(False)


def as_config(config, cls):
    """A module config from what a loader was given: None -> cls.v1(), a dict (reference keyword
    names) -> cls.from_dict(dict), an instance of cls as is; anything else is a TypeError."""
    if config is None:
        return cls.v1()
    if isinstance(config, dict):
        try:
            return cls.from_dict(config)
        except (TypeError, ValueError) as e:
            raise WeightsError(f"bad {cls.__name__} in the weights folder's model_configs.json: {e}") from e
    if isinstance(config, cls):
        return config
    raise TypeError(f"config must be None, a dict or a {cls.__name__}, not {type(config).__name__}")


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write tensors atomically (models.atomic.atomic_write).

    .safetensors via safetensors (tensors made contiguous; ones sharing storage are cloned), or
    .pth / .pt / .bin via torch.save. Returns the path.
    """
    path = Path(path)
    if path.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
        raise ValueError(f"{path}: unknown weight format; use .safetensors or .pth")
    meta = [k for k, v in state_dict.items() if v.is_meta]
    if meta:
        raise ValueError(f"cannot save tensors on the meta device: {meta[:MAX_LISTED]}")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        atomic_write(path, lambda tmp: save_file(_unshared(state_dict), str(tmp), metadata={"format": "pt"}))
    else:
        atomic_write(path, lambda tmp: torch.save({k: v.detach() for k, v in state_dict.items()}, tmp))
    return path


def _unshared(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU-or-device tensors of which no two share storage (safetensors refuses shared ones)."""
    seen: set[int] = set()
    out = {}
    for k, v in state_dict.items():
        v = v.detach()
        ptr = v.untyped_storage().data_ptr() if v.numel() else None
        if ptr is not None and ptr in seen:
            v = v.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[k] = v.contiguous()
    return out
