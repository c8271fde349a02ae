"""IP-Adapter-FaceID style projector: ArcFace embedding -> K identity tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class IDProjector(nn.Module):
    """[B, face_dim] L2-normalised embedding -> [B, K, token_dim] tokens.

    Linear(face_dim -> hidden) -> GELU -> Linear(hidden -> K * token_dim) -> LayerNorm per token.
    """

    def __init__(self, face_dim: int, hidden_dim: int, num_tokens: int, token_dim: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.fc1 = nn.Linear(face_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, num_tokens * token_dim)
        self.norm = nn.LayerNorm(token_dim)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        x = self.fc2(self.act(self.fc1(face)))
        return self.norm(rearrange(x, "b (k d) -> b k d", k=self.num_tokens))


def pool_embeddings(emb: torch.Tensor, emb_flip: torch.Tensor | None = None) -> torch.Tensor:
    """Photos of one person -> one identity vector.

    emb, emb_flip [N, 512] (or [B, N, 512]) -> [512] (or [B, 512]): the mean over photos (and
    their mirrored crops, when given), re-normalised to unit length like a single ArcFace
    embedding, which is what the projector sees in pretraining.
    """
    x = emb if emb_flip is None else (emb + emb_flip) / 2
    return F.normalize(x.mean(dim=-2), dim=-1)
