"""What pretraining reports: the text log, and running means over the steps since the last report.

    window = LogWindow(step)
    window.add(terms, grad_norm)            every step that updated the weights
    means, grad, rate = window.close(step, samples_per_step)   every log_every steps; a new window starts
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch

from encoder.objective import TERMS
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
                  skipped_steps: int, data_positions: dict) -> None:
    """One report to TensorBoard: loss/*, train/*, and data/* from the data workers' positions."""
    for k, v in zip(TERMS, means.tolist(), strict=True):
        writer.add_scalar(f"loss/{k}", v, step)
    writer.add_scalar("train/lr", lr, step)
    writer.add_scalar("train/grad_norm", grad_norm, step)
    writer.add_scalar("train/samples_per_s", rate, step)
    writer.add_scalar("train/skipped_steps", skipped_steps, step)
    states = list(data_positions["workers"].values())
    for how, fraction in conditioning_fractions(states).items():  # paired, augmented, self
        writer.add_scalar(f"data/{how}_fraction", fraction, step)
    writer.add_scalar("data/corrupt_samples", sum(s["corrupt"] for s in states), step)
