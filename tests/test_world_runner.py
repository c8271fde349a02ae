"""pretrain.world.common: the chunked runner resumes, keeps files small and exports once done."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from models.errors import UserError
from pretrain.ema import EMA
from pretrain.world.common import LRSchedule, Stage, StageOptions, read_parts, run_stage, write_parts


class ToyStage(Stage):
    """Fits y = 3x with a Linear(1, 1); exports the EMA weight as a JSON number."""

    name = "toy"
    batch_size = 8
    base_lr = 0.1

    def __init__(self, opts: StageOptions, total: int = 6):
        super().__init__(opts)
        self.total_steps = total
        self.schedule = LRSchedule(max_steps=total, warmup_steps=1)
        torch.manual_seed(0)
        self.model = nn.Linear(1, 1)
        self.ema = EMA(self.model, 0.5)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.base_lr)
        self.seen: list[int] = []

    def modules(self):
        return {"model": self.model, "ema": self.ema.shadow}

    def optimizer(self):
        return self.opt

    def config(self):
        return {"total": self.total_steps}

    def extra_state(self):
        return {"ema_updates": self.ema.updates}

    def load_extra_state(self, state):
        self.ema.updates = state["ema_updates"]

    def train_step(self, step, generator):
        self.seen.append(step)
        self.set_lr(self.opt, step)
        x = torch.randn(self.batch_size, 1, generator=generator)
        loss = ((self.model(x) - 3 * x) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.ema.update(self.model)
        return {"loss": loss.item()}

    def export_paths(self, world):
        return [world / "toy.json"]

    def export(self, world):
        world.mkdir(parents=True, exist_ok=True)
        (world / "toy.json").write_text(json.dumps(float(self.ema.shadow.weight)))
        return self.export_paths(world)


def test_runner_resumes_and_exports(tmp_path: Path):
    opts = StageOptions(out=tmp_path / "runs", world=tmp_path / "world", device=torch.device("cpu"), log_every=1)
    chunk = dataclasses.replace(opts, max_steps=3)  # a first chunk that stops early (as a time budget would)
    r = run_stage(ToyStage(chunk))
    assert r["step"] == 3 and not r["done"] and r["exported"] == []
    state = json.loads((tmp_path / "runs/toy/checkpoint/state.json").read_text())
    assert state["step"] == 3 and state["optimizer_files"] == ["optimizer.safetensors"]

    second = ToyStage(opts)
    r = run_stage(second)
    assert second.seen == [3, 4, 5] and r["done"] and r["step"] == 6
    assert second.ema.updates == 6
    assert (tmp_path / "world/toy.json").is_file()
    # a finished stage runs no step; it re-exports only what is missing
    (tmp_path / "world/toy.json").unlink()
    third = ToyStage(opts)
    r = run_stage(third)
    assert third.seen == [] and r["steps_run"] == 0 and (tmp_path / "world/toy.json").is_file()


def test_time_budget_zero_saves_without_stepping(tmp_path: Path):
    opts = StageOptions(out=tmp_path, world=tmp_path / "w", device=torch.device("cpu"), minutes=0.0)
    stage = ToyStage(opts)
    r = run_stage(stage)
    assert r["steps_run"] == 0 and not r["done"] and (tmp_path / "toy/checkpoint/state.json").is_file()


def test_parts_split_under_the_limit(tmp_path: Path):
    tensors = {f"t{i}": torch.full((100,), float(i), dtype=torch.bfloat16) for i in range(5)}
    names = write_parts(tensors, tmp_path, "m", limit=450)
    assert len(names) == 3 and all((tmp_path / n).stat().st_size < 450 + 400 for n in names)
    back = read_parts(tmp_path, names)
    assert all(torch.equal(back[k], v) for k, v in tensors.items())


def test_resume_without_optimizer_rewarms(tmp_path: Path, monkeypatch):
    import pretrain.world.common as common

    monkeypatch.setattr(common, "OPTIMIZER_LIMIT", 0)
    opts = StageOptions(out=tmp_path, world=tmp_path / "w", device=torch.device("cpu"))
    run_stage(ToyStage(dataclasses.replace(opts, max_steps=2)))
    state = json.loads((tmp_path / "toy/checkpoint/state.json").read_text())
    assert state["optimizer_files"] is None
    again = ToyStage(opts)
    again.rewarm_steps = 4
    common.load_checkpoint(again, tmp_path / "toy/checkpoint")
    assert again.resumed_without_optimizer_at == 2
    full = lambda step: again.base_lr * again.schedule.factor(step)  # noqa: E731
    assert abs(again.lr(2) - 0.25 * full(2)) < 1e-12 and abs(again.lr(5) - full(5)) < 1e-12


def test_resume_with_another_configuration_names_the_field(tmp_path: Path):
    opts = StageOptions(out=tmp_path, world=tmp_path / "w", device=torch.device("cpu"), max_steps=2)
    run_stage(ToyStage(opts, total=6))
    with pytest.raises(UserError, match=r"another toy configuration: total: 6 -> 9") as e:
        run_stage(ToyStage(opts, total=9))  # e.g. a resumed chunk without the first chunk's --total-steps
    assert "--total-steps" in e.value.hint
