"""eval.identity_diagnostic: the pretraining diagnostic for modules x backbones, uniform and at fixed timesteps."""

import json

import torch

from data_prep.synthetic import shapes_for, write_synthetic
from encoder.config import IdentityConfig
from encoder.identity import IdentityModule
from eval.identity_diagnostic import main
from models.errors import run_cli
from models.paths import read_model_configs
from models.uvit import UViTConfig
from tests.tiny_world import make_tiny_world


def test_closed_gates_gain_nothing_open_gates_do_and_timesteps_are_fixed(tmp_path, capsys):
    world = make_tiny_world(tmp_path / "world")
    ucfg = UViTConfig.from_dict(read_model_configs(world)["uvit"])
    write_synthetic(tmp_path / "shards", samples=16, shard_size=16, identities=4, shapes=shapes_for(ucfg),
                    progress=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = IdentityModule(IdentityConfig.for_uvit(ucfg, num_tokens=2, hidden_dim=16))
    module.save(tmp_path / "closed")
    with torch.no_grad():
        module.gate.fill_(0.5)
    module.save(tmp_path / "open")
    out = tmp_path / "d.json"
    argv = ["--shards", str(tmp_path / "shards"), "--backbone", f"tiny={world}", "--module",
            f"closed={tmp_path / 'closed'}", "--module", f"open={tmp_path / 'open'}", "--module",
            f"off={tmp_path / 'open'}:0", "--timesteps", "10,900", "--samples", "8", "--json", str(out)]
    assert run_cli(main, argv) == 0
    res = json.loads(out.read_text())["results"]
    assert set(res) == {"closed on tiny", "open on tiny", "off on tiny"}
    for name in ("closed on tiny", "off on tiny"):
        assert all(res[name][k]["id_gain"] == 0.0 for k in ("uniform", "10", "900"))
    opened = res["open on tiny"]
    assert all(opened[k]["id_gain"] != 0.0 for k in ("uniform", "10", "900"))
    assert len({opened[k]["loss_right"] for k in ("uniform", "10", "900")}) == 3  # a timestep each
    assert res["off on tiny"]["scale"] == 0.0 and res["open on tiny"]["scale"] == 1.0
    capsys.readouterr()
    assert run_cli(main, [*argv[:2], "--backbone", "tiny", "--module", "x=y"]) == 2
    assert "expected NAME=VALUE" in capsys.readouterr().err
