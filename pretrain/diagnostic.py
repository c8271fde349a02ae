"""The identity diagnostic: does the module use *who* the face is, or only *that* there is a face?

On fixed held-out samples (the validation split, pretrain.validation.split_shards), with fixed noise
and timesteps, the pretraining objective (encoder.objective, condition dropout off) is evaluated
three times per sample i, each time from the same random draws:

    right  conditioned on the right person: another photo of the same person when the corpus knows
           identities (a label, or a cluster of `python -m data_prep cluster`), else the augmented
           view of its own face (arcface_aug), else (older shards) its own face
    other  conditioned on another person: the right face of sample sigma(i), where sigma is a fixed
           derangement of the held-out samples that never maps a sample to its own identity
    none   the identity dropped (id_scale 0, as condition dropout trains it)

and reports, over the samples, with the standard error of the mean of the paired differences:

    id_gain      = mean(loss_other - loss_right)   what the module gains from the *right* face
    generic_gain = mean(loss_none - loss_other)    what any face buys: a generic bias

A module that learned identity has id_gain clearly above its standard error; one whose gain is all
generic (the corpus's look) has id_gain within noise of zero whatever its loss says. Closed gates
(an untrained module) give exactly 0 for both: with a zero gate the backbone never sees the face.

Everything is fixed by the shards and the seed: the samples (read in shard order), the pairs and
the derangement (seeded), the noise and timesteps (a generator reseeded per chunk at every call),
so every validation of a run, resumed or not, measures on the same draws.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_prep.format import CorruptSample, decode_arrays, decode_meta
from encoder.objective import LossConfig, noise_prediction_loss
from models.noise_schedule import NoiseScheduleVP
from pretrain.data import expected_shapes, load_clusters, readable_samples
from pretrain.model import PretrainNet

SCAN_FACTOR = 4  # samples read per held-out sample wanted (to find each one's pair)
PER_ROUND = 2  # samples of one person taken per round of the selection (two: each one the other's pair)
CONDITIONS = ("right", "other", "none")


@dataclass
class HeldOut:
    """The held-out samples, in float32 on one device (N samples).

    moments [N, 2C, h, w], text [N, L, Dt], clip [N, Dc], box [N, 4]; right / right_flip [N, 512]
    (the right face, see the module docstring), other / other_flip [N, 512] (another person's);
    how: per sample, "paired" (right = another photo), "augmented" or "self"; keys: sample keys.
    """

    moments: torch.Tensor
    text: torch.Tensor
    clip: torch.Tensor
    box: torch.Tensor
    right: torch.Tensor
    right_flip: torch.Tensor
    other: torch.Tensor
    other_flip: torch.Tensor
    how: list[str]
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)


def derangement(identities: list[str | None], rng: np.random.Generator) -> np.ndarray | None:
    """sigma [N] int64 with identities[sigma[i]] != identities[i] for every i (None = a person of its
    own), or None when no such permutation exists (one person holds more than half the samples).

    The people in a seeded random order, each person's samples together; sigma shifts this order by
    the size of the largest group, so no sample lands in its own group.
    """
    groups: dict[object, list[int]] = {}
    for i, ident in enumerate(identities):
        groups.setdefault(("key", i) if ident is None else ident, []).append(i)
    n, order = len(identities), list(groups.values())
    largest = max((len(g) for g in order), default=0)
    if n < 2 or 2 * largest > n:
        return None
    order = [order[j] for j in rng.permutation(len(order))]
    flat = np.array([i for g in order for i in g], dtype=np.int64)
    sigma = np.empty(n, dtype=np.int64)
    sigma[flat] = np.roll(flat, -largest)
    return sigma


def _identity_of(raw: dict, meta: dict, clusters) -> str | None:
    """A sample's person: its label, else its cluster, else None (unknown: a person of its own)."""
    if meta.get("identity") is not None:
        return f"label:{meta['identity']}"
    c = clusters.get(str(Path(raw["__url__"]).parent)) if clusters else None
    label = c.label_of(raw["__key__"]) if c is not None else None
    return None if label is None else f"cluster:{Path(raw['__url__']).parent}:{label}"


def read_held_out(shards: list[Path], n: int, uvit_config, *, seed: int = 0, clusters: dict | None = None,
                  device: torch.device | str = "cpu") -> HeldOut | str:
    """Up to n held-out samples of `shards` with their right and other faces, or why there are none.

    Reads at most SCAN_FACTOR x n readable samples in shard order and takes them in rounds: PER_ROUND
    photos of every person first (those with a real pair before the others), then PER_ROUND more of
    every person, and so on, so that many people come before many photos of one; then drops samples
    of the largest person until a derangement exists. clusters: pretrain.data.load_clusters's, for
    corpora without labels.
    """
    shapes = expected_shapes(uvit_config)
    rows: list[dict] = []  # every scanned sample: raw, identity, own faces
    by_identity: dict[str, list[int]] = {}
    for raw in readable_samples(shards):
        try:
            meta = decode_meta(raw)
            own = decode_arrays(raw, ("arcface", "arcface_flip"))
        except CorruptSample:
            continue
        ident = _identity_of(raw, meta, clusters)
        if ident is not None:
            by_identity.setdefault(ident, []).append(len(rows))
        rows.append({"raw": raw, "identity": ident, "own": (own["arcface"], own["arcface_flip"])})
        if len(rows) >= SCAN_FACTOR * n:
            break
    if not rows:
        return "no readable sample in the validation shards"

    def right_face(i: int) -> tuple[tuple[np.ndarray, np.ndarray], str]:
        row, ident = rows[i], rows[i]["identity"]
        mates = [j for j in by_identity.get(ident, []) if j != i]
        if mates:  # the nearest other photo of the person in reading order
            return rows[min(mates, key=lambda j: (abs(j - i), j))]["own"], "paired"
        raw = row["raw"]
        if ident is not None and ident.startswith("cluster:"):  # its mates were read elsewhere
            c = clusters[str(Path(raw["__url__"]).parent)]
            mate = c.mate(raw["__key__"], np.random.default_rng([seed, i]))
            if mate is not None:
                return mate, "paired"
        if "arcface_aug.npy" in raw:
            try:
                aug = decode_arrays(raw, ("arcface_aug",))["arcface_aug"]
                return (aug, aug), "augmented"  # one view stands for the mirrored one too (as in training)
            except CorruptSample:
                pass
        return row["own"], "self"

    faces = [right_face(i) for i in range(len(rows))]
    rank = [0] * len(rows)  # the how-many-th photo of its person each row is
    for members in by_identity.values():
        for r, i in enumerate(members):
            rank[i] = r
    order = sorted(range(len(rows)), key=lambda i: (rank[i] // PER_ROUND, faces[i][1] != "paired", i))
    chosen: list[dict] = []
    for i in order:
        ident = rows[i]["identity"]
        try:
            arrays = decode_arrays(rows[i]["raw"], ("moments", "text", "clip", "box"))
        except CorruptSample:
            continue
        if any(arrays[k].shape != s for k, s in shapes.items()) or arrays["box"].shape != (4,):
            continue
        chosen.append({**arrays, "identity": ident, "face": faces[i][0], "how": faces[i][1],
                       "key": rows[i]["raw"]["__key__"]})
        if len(chosen) == n:
            break
    rng = np.random.default_rng([seed, 7])
    sigma = derangement([s["identity"] for s in chosen], rng)
    while sigma is None and len(chosen) > 2:  # one person holds more than half: drop its last samples
        counts: dict[str, int] = {}
        for s in chosen:
            if s["identity"] is not None:  # an unknown person is a person of its own
                counts[s["identity"]] = counts.get(s["identity"], 0) + 1
        top = max(counts, key=counts.get)
        last = max(j for j, s in enumerate(chosen) if s["identity"] == top)
        chosen.pop(last)
        sigma = derangement([s["identity"] for s in chosen], rng)
    if sigma is None:
        return f"the validation shards hold fewer than two people among {len(chosen)} usable sample(s)"

    def stack(values) -> torch.Tensor:
        return torch.from_numpy(np.stack(values)).to(device=device, dtype=torch.float32)

    right = [s["face"] for s in chosen]
    return HeldOut(moments=stack([s["moments"] for s in chosen]), text=stack([s["text"] for s in chosen]),
                   clip=stack([s["clip"] for s in chosen]), box=stack([s["box"] for s in chosen]),
                   right=stack([f[0] for f in right]), right_flip=stack([f[1] for f in right]),
                   other=stack([right[j][0] for j in sigma]), other_flip=stack([right[j][1] for j in sigma]),
                   how=[s["how"] for s in chosen], keys=[s["key"] for s in chosen])


def mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    """(mean, standard error of the mean) of [N] values, in float64 (se NaN for one value)."""
    v = values.double()
    se = float(v.std(unbiased=True) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return float(v.mean()), se


class IdentityDiagnostic:
    """diagnostic(uvit, identity) -> {"id_gain", "id_gain_se", "generic_gain", "generic_gain_se",
    "loss_right", "loss_other", "loss_none", "samples", "real_pairs"} on the held-out samples."""

    def __init__(self, held: HeldOut, objective: LossConfig, *, batch_size: int, seed: int, latent_scale: float,
                 fused: bool = False):
        self.held, self.batch_size, self.seed, self.fused = held, max(1, batch_size), seed, fused
        self.latent_scale = latent_scale  # the weights' image space (pretrain.model.latent_scale), as training's
        # the training objective with condition dropout off: every sample keeps its text and its face
        self.objective = dataclasses.replace(objective, p_drop_id=0.0, p_drop_text=0.0, p_drop_both=0.0)
        self.schedule = NoiseScheduleVP.stable_diffusion()

    @classmethod
    def create(cls, config, uvit_config, val_shards: list[Path], device: torch.device,
               log: logging.Logger) -> IdentityDiagnostic | None:
        """The diagnostic of a PretrainConfig, or None (with a log line saying why)."""
        if config.val_every <= 0:
            return None
        clusters = load_clusters(val_shards) if config.pair_identities else None
        held = read_held_out(val_shards, config.val_samples, uvit_config, seed=config.seed, clusters=clusters,
                             device=device)
        if isinstance(held, str):
            log.info("identity diagnostic off: %s", held)
            return None
        pairs = sum(h == "paired" for h in held.how)
        log.info("identity diagnostic: %d held-out samples (%d with another photo of the same person, %d with an "
                 "augmented view, %d with their own face) every %d steps", len(held), pairs,
                 held.how.count("augmented"), held.how.count("self"), config.val_every)
        from pretrain.model import latent_scale

        return cls(held, config.loss, batch_size=config.batch_size, seed=config.seed, fused=config.fused_identity,
                   latent_scale=latent_scale(config))

    @torch.no_grad()
    def __call__(self, uvit, identity, autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
                 timestep: int | None = None) -> dict:
        """timestep: every sample at that timestep instead of the training's uniform draw."""
        net = PretrainNet(uvit, identity, fused=self.fused)
        h = self.held
        losses = {c: [] for c in CONDITIONS}
        for start in range(0, len(h), self.batch_size):
            part = slice(start, start + self.batch_size)
            faces = {"right": (h.right[part], h.right_flip[part], 1.0),
                     "other": (h.other[part], h.other_flip[part], 1.0),
                     "none": (h.right[part], h.right_flip[part], 0.0)}  # the face is not seen: id_scale 0
            for condition, (face, face_flip, keep) in faces.items():
                def predict(z_n, clip_n, text, t_img, t_text, data_type, id_scale, face=face, face_flip=face_flip,
                            keep=keep):
                    return net(z_n, clip_n, text, t_img, t_text, data_type, face, face_flip, id_scale * keep)

                # the same draws (timesteps, latents, noise) for the three conditions, at every call
                generator = torch.Generator(h.moments.device).manual_seed(self.seed * 1_000_003 + start)
                with autocast() if autocast is not None else contextlib.nullcontext():
                    loss, _ = noise_prediction_loss(predict, h.moments[part], h.clip[part], h.text[part],
                                                    self.schedule, self.objective, generator, box=h.box[part],
                                                    per_sample=True, timestep=timestep, latent_scale=self.latent_scale)
                losses[condition].append(loss.float().cpu())
        loss = {c: torch.cat(v) for c, v in losses.items()}
        id_gain, id_se = mean_and_se(loss["other"] - loss["right"])
        generic, generic_se = mean_and_se(loss["none"] - loss["other"])
        return {"id_gain": id_gain, "id_gain_se": id_se, "generic_gain": generic, "generic_gain_se": generic_se,
                **{f"loss_{c}": float(loss[c].double().mean()) for c in CONDITIONS},
                "samples": len(h), "real_pairs": sum(x == "paired" for x in h.how)}


def verdict(result: dict, sigmas: float = 2.0) -> str:
    """A few words on id_gain: clearly above zero, clearly below, or within `sigmas` standard errors of it."""
    gain, se = result["id_gain"], result["id_gain_se"]
    if gain > 0 and gain > sigmas * se:
        return f"identity used (more than {sigmas:g} standard errors above zero)"
    if gain < 0 and -gain > sigmas * se:
        return "the right face does worse than another person's"
    return f"within {sigmas:g} standard errors of zero: no sign that identity is learned"
