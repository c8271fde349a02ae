"""What pretraining reports: the text log, running means over the steps since the last report, and
the run's JSON log.

    window = LogWindow(step)
    window.add(terms, grad_norm)            every step that updated the weights
    means, grad, rate = window.close(step, samples_per_step)   every log_every steps; a new window starts
    jlog = JsonLog(run_dir / "log.json", step)   the records up to `step` (a resumed run drops later ones)
    jlog.add("train", step, {...})          every report, and "identity" for every identity diagnostic
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch

from encoder.objective import TERMS
from models.atomic import write_json_atomic
from pretrain.data import conditioning_fractions


def make_logger(run_dir: Path, is_main: bool) -> logging.Logger:
    """'pretrain.train' logger: INFO to stderr and <run>/train.log on the main process, warnings elsewhere."""
    log = logging.getLogger("pretrain.train")
    log.propagate = False
    for h in list(log.handlers):  # a previous run in this process
        h.close()
        log.removeHandler(h)
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers = [logging.StreamHandler(sys.stderr)]
    if is_main:
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    return log


class LogWindow:
    """Mean loss terms and gradient norm over the updating steps since the window opened, and the
    throughput over all its steps (skipped ones included)."""

    def __init__(self, step: int):
        self._open(step)

    def _open(self, step: int) -> None:
        self.t, self.first_step, self.updates = time.time(), step, 0
        self.terms, self.grad_norm = torch.zeros(len(TERMS)), 0.0

    def add(self, terms: torch.Tensor, grad_norm: float) -> None:
        """A step that updated the weights: its terms [len(TERMS)] (CPU) and gradient norm."""
        self.updates += 1
        self.terms += terms
        self.grad_norm += grad_norm

    def close(self, step: int, samples_per_step: int) -> tuple[torch.Tensor, float, float]:
        """(mean terms [len(TERMS)], mean gradient norm, samples per second) up to `step`; opens the next window."""
        dt = time.time() - self.t
        n = max(self.updates, 1)
        result = (self.terms / n, self.grad_norm / n, (step - self.first_step) * samples_per_step / max(dt, 1e-9))
        self._open(step)
        return result


def write_scalars(writer, step: int, means: torch.Tensor, grad_norm: float, rate: float, lr: float,
                  skipped_steps: int, data_positions: dict) -> dict[str, float]:
    """One report to TensorBoard: loss/*, train/*, and data/* from the data workers' positions.
    Returns the scalars by their TensorBoard tags."""
    scalars = {f"loss/{k}": v for k, v in zip(TERMS, means.tolist(), strict=True)}
    scalars.update({"train/lr": lr, "train/grad_norm": grad_norm, "train/samples_per_s": rate,
                    "train/skipped_steps": skipped_steps})
    states = list(data_positions["workers"].values())
    for how, fraction in conditioning_fractions(states).items():  # paired, augmented, self
        scalars[f"data/{how}_fraction"] = fraction
    scalars["data/corrupt_samples"] = sum(s["corrupt"] for s in states)
    for tag, v in scalars.items():
        writer.add_scalar(tag, v, step)
    return scalars


def write_identity_scalars(writer, step: int, result: dict) -> None:
    """An identity diagnostic (pretrain.diagnostic) to TensorBoard: identity/*."""
    for k in ("id_gain", "id_gain_se", "generic_gain", "generic_gain_se", "loss_right", "loss_other", "loss_none"):
        writer.add_scalar(f"identity/{k}", result[k], step)


class JsonLog:
    """<run>/log.json: {"records": [{"kind", "step", ...values}, ...]}, rewritten atomically at every add.

    Opened at `step`, it keeps the records up to that step only: a run resumed from a checkpoint
    drops what the interrupted run logged after it (as TensorBoard's purge_step does).
    """

    def __init__(self, path: Path, step: int = 0):
        self.path = Path(path)
        self.records: list[dict] = []
        if self.path.is_file():
            try:
                self.records = [r for r in json.loads(self.path.read_text())["records"] if r["step"] <= step]
            except (json.JSONDecodeError, KeyError, TypeError):
                self.records = []  # unreadable: started afresh (it is a log, not state)

    def add(self, kind: str, step: int, values: dict) -> None:
        """Append a record (non-finite numbers are written as null) and rewrite the file."""
        self.records.append({"kind": kind, "step": step, **values})
        write_json_atomic(self.path, {"records": self.records}, indent=None)

    def last(self, kind: str) -> dict | None:
        """The latest record of `kind` (without "kind"), or None."""
        found = next((r for r in reversed(self.records) if r["kind"] == kind), None)
        return None if found is None else {k: v for k, v in found.items() if k != "kind"}
