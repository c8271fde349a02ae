"""Shared pieces of the GPU benchmarks: random full-size text encoder, environment, JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from models.atomic import write_json_atomic
from models.provenance import git_provenance

# openai/clip-vit-large-patch14's text tower
CLIP_L_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                   projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


def random_text_encoder(device, dtype, tiny: bool = False):
    """CLIP-L text model with random weights + the real tokenizer (from open_clip's BPE) + a
    random encode_prefix Linear(768 -> 64); tiny widths for smoke tests."""
    from models.clip_text import CLIPTextConfig, CLIPTextModel
    from models.clip_tokenizer import ClipTokenizer
    from models.text_encoder import TextEncoder, write_clip_tokenizer

    with tempfile.TemporaryDirectory(prefix="clip_tok_") as folder:
        tokenizer = ClipTokenizer.from_folder(write_clip_tokenizer(folder))
    cfg = dict(CLIP_L_TEXT, **(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, projection_dim=32) if tiny else {}))
    with torch.device(device):
        model = CLIPTextModel(CLIPTextConfig.from_json(cfg)).to(dtype).eval().requires_grad_(False)
        prefix = torch.nn.Linear(cfg["hidden_size"], 64).to(dtype).requires_grad_(False)
    return TextEncoder(tokenizer, model, prefix)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Seconds of GPU work between enter and exit (CUDA events), or wall time on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = float("nan")

    def __enter__(self):
        if self.device.type == "cuda":
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self._events[0].record()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self._events[1].record()
            torch.cuda.synchronize(self.device)
            self.seconds = self._events[0].elapsed_time(self._events[1]) / 1000
        else:
            self.seconds = time.perf_counter() - self._t0
        return False


def seconds_per_call(fn, device: torch.device, reps: int, warmup: int = 3, args: tuple = ()) -> float:
    """Seconds per call of fn(*args): `warmup` calls (compilation, caches), a sync, then CUDA events (wall
    time on the CPU) around `reps` calls. Every benchmark here times a callable this one way."""
    for _ in range(warmup):
        fn(*args)
    sync(device)
    with Timer(device) as t:
        for _ in range(reps):
            fn(*args)
    return t.seconds / reps


def max_reserved_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_reserved(device) / 1e9 if device.type == "cuda" else None


def environment(weights: str = "random") -> dict:
    """Device, software and provenance fields every benchmark JSON carries."""
    return {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "weights": weights, "torch": torch.__version__, **git_provenance(),
            "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF"),
            "command": " ".join(["python"] + sys.argv)}


def run_rows(module: str, arg_lists: list[list[str]], timeout_s: float | None = None) -> list[dict]:
    """`python -m module *args` for each argument list, each in its own process (so that every row's peak
    memory is its own); each row is the JSON its last stdout line holds, or {"args", "error"} with the end
    of its stderr (or the timeout it ran past). Rows are printed as they come."""
    results = []
    for args in arg_lists:
        try:
            proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            results.append({"args": " ".join(args), "error": f"ran past {timeout_s} s"})
            continue
        sys.stderr.write(proc.stderr[-3000:])
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            results.append({"args": " ".join(args), "error": proc.stderr[-1500:]})
            continue
        results.append(json.loads(lines[-1]))
        print(json.dumps(results[-1]), flush=True)
    return results


def finish(result, out: str | Path) -> Path:
    """Write the JSON result atomically."""
    return write_json_atomic(out, result)


def report(result: dict, out: str | Path | None, tiny: bool = False, weights: str = "random") -> int:
    """Add the environment fields (`weights`: what the timed model's weights were), print the result as one
    JSON line, write it to `out` if given; returns 0 (the exit status)."""
    result.update(environment(f"{weights} (tiny smoke test)" if tiny else weights))
    print(json.dumps(result))
    if out:
        finish(result, out)
    return 0
