"""The pretraining configuration: one frozen dataclass, from a JSON/YAML file plus command-line overrides.

    config = PretrainConfig.from_file("pretrain/configs/v1.json")
    config = apply_overrides(config, ["--lr", "1e-4", "--batch_size", "32", "--random_backbone"])

Every field is an option (`--batch_size 32` or `--batch-size 32`; booleans also as a bare flag or
`--no-<name>`; `none` for optional fields; dicts as JSON). Defaults are the full-size run's.

The objective's settings are a nested encoder.objective.LossConfig (`config.loss`), written nested
in config files (`"loss": {"p_drop_id": 0.1, ...}`). Their flat names work everywhere a field does:
`--p_drop_id 0.2`, a top-level `"p_drop_id"` key in a file (as files written before the nesting
have them), PretrainConfig(p_drop_id=0.2), dataclasses.replace(config, p_drop_id=0.2) and
config.p_drop_id.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from encoder.config import injection_problem
from encoder.objective import LossConfig
from models.config_dict import ConfigError, config_from_dict

LOSS_FIELDS = tuple(f.name for f in dataclasses.fields(LossConfig))  # their flat names


def with_flat_loss_fields(cls):
    """cls(p_drop_id=...), dataclasses.replace(c, p_drop_id=...) and c.p_drop_id reach c.loss's fields."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        flat = {k: kwargs.pop(k) for k in LOSS_FIELDS if k in kwargs}
        if flat:
            kwargs["loss"] = dataclasses.replace(kwargs.get("loss", LossConfig()), **flat)
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    for name in LOSS_FIELDS:
        setattr(cls, name, property(lambda self, name=name: getattr(self.loss, name), doc=f"loss.{name}"))
    return cls


def flat_fields(d: dict) -> dict:
    """A config dict (nested, or flat as written before the nesting) with the loss fields at the top level."""
    return {**{k: v for k, v in d.items() if k != "loss"}, **(d.get("loss") or {})}


@with_flat_loss_fields
@dataclass(frozen=True)
class PretrainConfig:
    # ---- data (shards written by `python -m data_prep`)
    shards: str = "shards"  # data_prep output folder, a glob or brace pattern of .tar; several comma-separated
    shuffle_buffer: int = 2000  # samples
    shards_per_group: int = 4  # shards read together (shuffling and identity pairing happen within a group)
    num_workers: int = 4  # DataLoader workers per process
    pair_identities: bool = True  # condition on another photo of the same person when labels exist
    reservoir_size: int = 8  # photos remembered per person for pairing
    # ---- frozen backbone
    weights: str | None = None  # weights folder (models.paths): uvit_v1.pth, and the VAE for sample grids
    random_backbone: bool = False  # UViT with random weights (benchmarks, tests): no weight files needed
    uvit: dict | None = None  # UViTConfig fields; None: v1, or the weights folder's model_configs.json
    backbone_dtype: str = "bfloat16"  # the frozen UViT's weights
    activation_checkpointing: bool = False  # recompute each block in the backward pass (less memory)
    fused_identity: bool = False  # identity tokens in the main GEMM chain (same function; slower to train eager)
    compile_blocks: bool = True  # CUDA: torch.compile the block once (regional); not with fused_identity (docs)
    # ---- identity module (encoder.config.IdentityConfig)
    num_tokens: int = 4
    hidden_dim: int = 1024
    injection: str = "extra_tokens"  # or "text_slots"
    kv_rank: int = 0  # extra_tokens: rank of the per-block identity key/value delta (0: none)
    init_from: str | None = None  # start from a saved identity-module folder instead of the zero-gate init
    # ---- objective (encoder.objective.LossConfig; its fields also go flat: see `with_flat_loss_fields`)
    loss: LossConfig = LossConfig()
    # ---- optimisation
    batch_size: int = 32  # per process and micro-step
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01  # projector matrices only (no decay on gates, positions, norms, biases)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_steps: int = 1000
    lr_schedule: str = "cosine"  # "cosine" (to min_lr_ratio * lr at max_steps) or "constant"
    min_lr_ratio: float = 0.1
    max_steps: int = 100_000
    grad_clip: float = 1.0  # 0 = no clipping (the norm is still logged)
    ema_decay: float = 0.9999
    mixed_precision: str = "bf16"  # accelerate: "no" or "bf16" (fp16 would need loss scaling)
    seed: int = 0
    # ---- run
    output_dir: str = "runs/faceid"
    resume: str = "auto"  # "auto" (latest checkpoint of output_dir, if any), "none", or a checkpoint folder
    stop_at_step: int | None = None  # checkpoint and stop here (time-limited jobs); resume continues
    checkpoint_every: int = 2000
    keep_checkpoints: int = 3
    export_every: int = 0  # the EMA module also to <output_dir>/exports/step_<n>/ every N steps (0 = never)
    log_every: int = 50
    max_bad_steps: int = 10  # consecutive non-finite steps before the run stops
    sample_every: int = 5000  # sample grid of the validation identities (0 = never)
    sample_steps: int = 20
    sample_cfg: float = 7.0
    # ---- validation (pretrain.validation.split_shards): grids and the identity diagnostic read held-out shards
    val_shards: str | None = None  # validation shards (left out of training); default: val_holdout_shards
    val_holdout_shards: int = 1  # the last N shards of `shards` are held out for validation (0: none)
    val_identities: int = 4  # sample grid rows
    val_every: int = 1000  # identity diagnostic (pretrain.diagnostic) every N steps and at the last (0 = never)
    val_samples: int = 256  # held-out samples of the identity diagnostic

    def __post_init__(self):
        checks = [
            (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1"),
            (self.max_steps >= 1, "max_steps must be >= 1"),
            (self.lr_schedule in ("cosine", "constant"), f"lr_schedule must be cosine or constant, got "
                                                         f"{self.lr_schedule!r}"),
            (self.mixed_precision in ("no", "bf16"),
             "mixed_precision must be no or bf16 (fp16 needs loss scaling, which this loop does not do)"),
            (self.backbone_dtype in ("float32", "bfloat16", "float16"),
             "backbone_dtype must be float32, bfloat16 or float16"),
            (self.mixed_precision != "no" or self.backbone_dtype == "float32",
             "mixed_precision no needs backbone_dtype float32 (a half-precision backbone runs under autocast)"),
            (not (problem := injection_problem(self.injection, self.kv_rank)), problem),
            (not (self.fused_identity and self.compile_blocks),
             "fused_identity with compile_blocks: Inductor's GPU code for the fused block's backward gives wrong "
             "identity gradients (docs/performance.md); set compile_blocks false, or fused_identity false (the "
             "two-stream form, which compiles right and trains as fast)"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
            (self.checkpoint_every >= 1 and self.keep_checkpoints >= 1 and self.log_every >= 1,
             "checkpoint_every, keep_checkpoints and log_every must be >= 1"),
            (self.export_every >= 0, "export_every must be >= 0 (0: no snapshots)"),
            (self.resume in ("auto", "none") or bool(self.resume), "resume must be auto, none or a folder"),
            (self.val_holdout_shards >= 0, "val_holdout_shards must be >= 0"),
            (self.val_every <= 0 or self.val_samples >= 2, "val_samples must be >= 2 (a standard error needs two)"),
        ]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise ConfigError("pretraining config: " + "; ".join(bad))

    # ------------------------------------------------------------------------------------------ io
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PretrainConfig:
        """From to_dict's form, or with the loss fields flat (files written before the nesting)."""
        rest = flat_fields(d)
        loss = config_from_dict(LossConfig, {k: rest.pop(k) for k in LOSS_FIELDS if k in rest}, "objective")
        return config_from_dict(cls, {**rest, "loss": loss}, "pretraining")

    @classmethod
    def from_file(cls, path: str | Path) -> PretrainConfig:
        """A .json, .yaml or .yml file holding a mapping of fields (missing ones keep their defaults)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist", hint="see pretrain/configs/")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as e:
                raise ConfigError(f"{path} is YAML, and PyYAML is not installed",
                                  hint="`pip install pyyaml`, or use a .json config") from e
            try:
                d = yaml.safe_load(text) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{path} is not valid YAML ({e})") from e
        else:
            try:
                d = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path} is not valid JSON ({e})") from e
        if not isinstance(d, dict):
            raise ConfigError(f"{path} must hold a mapping of config fields")
        return cls.from_dict(d)


# ---------------------------------------------------------------------------------- command line
def _str2bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def _parser_for(hint) -> tuple[typing.Callable, bool]:
    """(parse function, is_bool) for a field's type hint."""
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if hint is bool:
        return _str2bool, True
    base = {int: int, float: float, str: str, dict: json.loads}[hint]

    def parse(v: str):
        if optional and v.lower() in ("none", "null"):
            return None
        try:
            return base(v)
        except (ValueError, json.JSONDecodeError) as e:
            raise argparse.ArgumentTypeError(f"{v!r} is not a valid {hint.__name__}") from e

    return parse, False


def config_options() -> list[tuple[str, typing.Any, typing.Any]]:
    """(name, type hint, default) of every option: PretrainConfig's fields, LossConfig's in place of `loss`."""
    options = []
    for cls in (PretrainConfig, LossConfig):
        hints = typing.get_type_hints(cls)
        options += [(f.name, hints[f.name], f.default) for f in dataclasses.fields(cls) if f.name != "loss"]
    return options


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per config field (the loss fields flat); a field not given on the command line keeps its value."""
    group = parser.add_argument_group("config overrides (any field of pretrain.config.PretrainConfig)")
    for name, hint, default in config_options():
        parse, is_bool = _parser_for(hint)
        names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        default = default if default is not dataclasses.MISSING else None
        if is_bool:
            group.add_argument(*names, dest=name, type=parse, nargs="?", const=True,
                               default=argparse.SUPPRESS, metavar="BOOL", help=f"(default {default})")
            group.add_argument(f"--no-{name.replace('_', '-')}", dest=name, action="store_const",
                               const=False, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        else:
            group.add_argument(*names, dest=name, type=parse, default=argparse.SUPPRESS, metavar="X",
                               help=f"(default {default})")


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The config options given on the command line, by their flat names (for dataclasses.replace)."""
    names = {name for name, _, _ in config_options()}
    return {k: v for k, v in vars(args).items() if k in names}


def apply_overrides(config: PretrainConfig, argv: list[str]) -> PretrainConfig:
    """config with fields replaced by options like ["--lr", "1e-4", "--random_backbone", "--p_drop_id", "0"]."""
    parser = argparse.ArgumentParser(add_help=False)
    add_config_arguments(parser)
    return dataclasses.replace(config, **overrides_from_args(parser.parse_args(argv)))
