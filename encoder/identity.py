"""The trainable identity module: projector, identity position embeddings and gates.

It is the only thing pretraining learns. On disk it is a folder with `identity.safetensors`
and `config.json` (format name, version, config); see `save` / `load`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch import nn

from encoder.config import FORMAT_NAME, FORMAT_VERSION, ID_START_MIN, IdentityConfig
from encoder.projector import IDProjector, pool_embeddings
from models.atomic import atomic_write, write_json_atomic
from models.paths import WeightsError, file_sha256

WEIGHTS_FILE = "identity.safetensors"
CONFIG_FILE = "config.json"


class IdentityModule(nn.Module):
    """Identity embedding(s) -> tokens, plus the parameters that inject them into the UViT.

    extra_tokens: `pos` [1, K, D] position embeddings of the identity tokens and `gate`
      [n_blocks, heads], the weight of the identity attention term in each block (zero at init);
      with kv_rank r > 0 also `kv_down` [n_blocks, 2, D, r] and `kv_up` [n_blocks, 2, r, D] (zero at
      init): block i adds x_id kv_down[i, 0] kv_up[i, 0] to the identity tokens' keys and
      x_id kv_down[i, 1] kv_up[i, 1] to their values (`kv_delta`).
    text_slots: `gate` [1], the blend of identity tokens into the text slots (zero at init).
    """

    def __init__(self, config: IdentityConfig):
        super().__init__()
        self.config = c = config
        self.projector = IDProjector(c.face_dim, c.hidden_dim, c.num_tokens, c.token_dim)
        if c.injection == "extra_tokens":
            self.pos = nn.Parameter(torch.zeros(1, c.num_tokens, c.embed_dim))
            nn.init.trunc_normal_(self.pos, std=0.02)
            self.gate = nn.Parameter(torch.zeros(c.num_blocks, c.num_heads))
            if c.kv_rank:
                self.kv_down = nn.Parameter(torch.randn(c.num_blocks, 2, c.embed_dim, c.kv_rank) / c.embed_dim ** 0.5)
                self.kv_up = nn.Parameter(torch.zeros(c.num_blocks, 2, c.kv_rank, c.embed_dim))
        else:
            self.gate = nn.Parameter(torch.zeros(1))

    def tokens(self, face: torch.Tensor) -> torch.Tensor:
        """[B, face_dim] pooled L2-normalised embedding -> [B, K, token_dim] identity tokens."""
        return self.projector(face)

    def kv_delta(self, block: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Block `block`'s additions to the identity tokens' keys and values: x [B, K, D] (the block's
        attention input for the identity tokens) -> ([B, K, D], [B, K, D]), before the split into heads."""
        return low_rank_kv(x, self.kv_down[block], self.kv_up[block])

    def tokens_from_photos(self, emb: torch.Tensor, emb_flip: torch.Tensor | None = None,
                           per_photo: bool = False) -> torch.Tensor:
        """One person's photos [N, face_dim] (+ mirrored) -> tokens [1, K, token_dim] of their pooled
        embedding (what pretraining conditions on), or with `per_photo` [1, N x K, token_dim]: each photo's
        own K tokens (pooled with its mirrored crop), side by side. Per-photo tokens need the extra_tokens
        injection (text slots hold K tokens); they share the K position embeddings (`position`)."""
        flip = emb_flip if self.config.use_flip else None
        if not per_photo:
            return self.tokens(pool_embeddings(emb, flip)[None])
        if self.config.injection != "extra_tokens":
            raise ValueError("per-photo identity tokens need a module with the extra_tokens injection; "
                             f"this one uses {self.config.injection}")
        each = pool_embeddings(emb[:, None], None if flip is None else flip[:, None])  # [N, face_dim]
        return rearrange(self.tokens(each), "n k d -> 1 (n k) d")

    def position(self, n: int) -> torch.Tensor:
        """[1, n, D] position embeddings of n identity tokens: `pos` for the K trained ones, repeated for each
        photo's K tokens when n = N x K (per-photo tokens)."""
        k = self.config.num_tokens
        if n % k:
            raise ValueError(f"{n} identity tokens are not whole groups of this module's K = {k}")
        return self.pos.repeat(1, n // k, 1)

    @torch.no_grad()
    def fold_scale_(self, scale: float) -> IdentityModule:
        """Multiply the gates by `scale` in place: the module then samples at --id-scale s as it did at
        --id-scale scale * s, exactly (every injection uses g = gate x id_scale, and nothing else reads the
        gate or the scale). This is how a strength chosen on validation identities becomes the default."""
        if not scale > 0:
            raise ValueError(f"the folded identity scale must be positive, got {scale}")
        self.gate.mul_(scale)
        return self

    # ----------------------------------------------------------------------------- disk format
    def save(self, folder: str | os.PathLike, extra: dict | None = None,
             dtype: torch.dtype = torch.float32) -> Path:
        """Write `identity.safetensors` and `config.json` into folder, each atomically. `dtype`: how the
        weights are stored (float16 halves a shipped module; `load` reads either into float32)."""
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"identity module weights are stored as float32, float16 or bfloat16, not {dtype}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in self.state_dict().items()}
        if bad := [k for k, v in tensors.items() if not torch.isfinite(v).all()]:
            raise ValueError(f"identity module: {bad[:4]} are not finite once stored as {dtype}; store it in float32")
        atomic_write(folder / WEIGHTS_FILE, lambda p: save_file(tensors, str(p)))
        meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": self.config.to_dict(),
                **(extra or {})}
        write_json_atomic(folder / CONFIG_FILE, meta)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, expect: IdentityConfig | None = None,
             uvit_config=None) -> IdentityModule:
        """Load a saved module; a config that differs from `expect` or the backbone fails clearly."""
        folder = Path(folder)
        cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise WeightsError(
                    f"identity module: {p} is missing. An identity-module checkpoint is a folder with "
                    f"{CONFIG_FILE} and {WEIGHTS_FILE}, written by pretraining (scripts/pretrain.sh).")
        meta = read_metadata(folder)
        if meta.get("format") != FORMAT_NAME:
            raise WeightsError(f"identity module: {cfg_path} is not an identity-module config "
                               f"(format {meta.get('format')!r}, expected {FORMAT_NAME!r}).")
        if meta.get("version") != FORMAT_VERSION:
            raise WeightsError(f"identity module: {cfg_path} has format version {meta.get('version')}; "
                               f"this code reads version {FORMAT_VERSION}. Re-export it or use a matching "
                               "release of this project.")
        try:
            config = IdentityConfig.from_dict(meta["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"identity module: bad config in {cfg_path}: {e}") from e
        if expect is not None and config != expect:
            diff = [f"{k}: checkpoint {v!r} vs requested {getattr(expect, k)!r}"
                    for k, v in config.to_dict().items() if getattr(expect, k) != v]
            raise WeightsError(f"identity module {folder} was trained with another config: "
                               + "; ".join(diff))
        if uvit_config is not None and (bad := config.backbone_mismatch(uvit_config)):
            raise WeightsError(f"identity module {folder} does not fit this UViT: " + "; ".join(bad)
                               + ". It was pretrained for a different backbone configuration.")
        module = cls(config)
        try:
            state = load_file(str(w_path))
        except Exception as e:  # safetensors raises several types for damaged files
            raise WeightsError(f"identity module: cannot read {w_path} ({e}); the file is damaged or "
                               "truncated. Copy it again from the pretraining output.") from e
        own = module.state_dict()
        bad = [f"{k}: expected {list(own[k].shape)}, found {list(v.shape)}"
               for k, v in state.items() if k in own and own[k].shape != v.shape]
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if bad or missing or unexpected:
            raise WeightsError(f"identity module {w_path} does not match its config: "
                               f"shape mismatches {bad[:8]}, missing {missing[:8]}, unexpected {unexpected[:8]}")
        module.load_state_dict(state)
        return module


def read_metadata(folder: str | os.PathLike) -> dict:
    """A saved module's config.json: format, version, config, and what pretraining added (`pretraining`,
    `identity_diagnostic`, `face_model`; modules exported before these lack them)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise WeightsError(f"identity module: {path} is missing. An identity-module checkpoint is a folder with "
                           f"{CONFIG_FILE} and {WEIGHTS_FILE}, written by pretraining (scripts/pretrain.sh).")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"identity module: {path} is not valid JSON ({e}).") from e
    if not isinstance(meta, dict):
        raise WeightsError(f"identity module: {path} is not an identity-module config (not a JSON object).")
    return meta


SAMPLING_DEFAULTS = {"id_start": 1.0}  # what sample.py uses when neither its flags nor the module say otherwise


def sampling_defaults(folder: str | os.PathLike | None) -> dict:
    """The sampling settings a module ships with, over SAMPLING_DEFAULTS: its config.json's optional `sampling`
    block (written by `python -m eval.identity_grid --export` when the chosen setting has one; today only
    `id_start`, the noise level from which the identity is used). A value chosen for one module on validation
    identities belongs to that module, not to sample.py: another module may want another. None (an untrained
    module): the built-in defaults."""
    if folder is None:
        return dict(SAMPLING_DEFAULTS)
    block = read_metadata(folder).get("sampling", {})
    path = Path(folder) / CONFIG_FILE
    if not isinstance(block, dict) or (unknown := sorted(set(block) - set(SAMPLING_DEFAULTS))):
        raise WeightsError(f"identity module: {path}'s `sampling` block must be an object with keys among "
                           f"{sorted(SAMPLING_DEFAULTS)}, found {block if not isinstance(block, dict) else unknown}")
    start = block.get("id_start", SAMPLING_DEFAULTS["id_start"])
    if isinstance(start, bool) or not isinstance(start, (int, float)) or not ID_START_MIN <= start <= 1:
        raise WeightsError(f"identity module: {path}'s sampling.id_start must be a noise level in "
                           f"[{ID_START_MIN:g}, 1], found {start!r}")
    return {**SAMPLING_DEFAULTS, **block, "id_start": float(start)}


def checkpoint_hash(folder: str | os.PathLike) -> str:
    """SHA-256 of the identity module's weights file (recorded in identity records)."""
    return file_sha256(Path(folder) / WEIGHTS_FILE)


def low_rank_kv(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, K, D] through one block's factors down [2, D, r], up [2, r, D] -> (keys, values) deltas,
    [B, K, D] each, in x's dtype."""
    low = torch.einsum("bkd,tdr->tbkr", x, down.to(x.dtype))  # t: keys, values
    k, v = torch.einsum("tbkr,tre->tbke", low, up.to(x.dtype))
    return k, v
