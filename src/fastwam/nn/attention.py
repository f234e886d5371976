"""Attention pieces. Axis letters: B batch, N query tokens, M key tokens, L context tokens,
H heads, K head_dim, D expert width, A = H * K shared attention width."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastwam.nn.layers import RMSNorm


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, H*K) -> (B, H, N, K)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, K) -> (B, N, H*K)."""
    return x.transpose(1, 2).flatten(-2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention. q (B, H, N, K), k/v (B, H, M, K), mask (N, M) or
    (B, 1, N, M) bool (one per sample: dual-mode training), or None."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class AttentionProjections(nn.Module):
    """q, k, v: width D -> A; o: A -> D; RMSNorm on queries and keys (Wan's attention weights)."""

    def __init__(self, dim: int, attn_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, attn_dim), nn.Linear(dim, attn_dim), nn.Linear(dim, attn_dim)
        self.o = nn.Linear(attn_dim, dim)
        self.norm_q, self.norm_k = RMSNorm(attn_dim), RMSNorm(attn_dim)


class CrossAttention(AttentionProjections):
    """An expert's attention to its instruction + proprio context (Wan ``cross_attn``).

    The context is fixed during sampling, so its keys/values are computed once (``context_kv``)
    and reused by every denoising step.
    """

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context (B, L, D) -> keys, values (B, H, L, K)."""
        return split_heads(self.norm_k(self.k(context)), self.heads), split_heads(self.v(context), self.heads)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x (B, N, D) attends to precomputed context keys/values -> (B, N, D)."""
        q = split_heads(self.norm_q(self.q(x)), self.heads)
        return self.o(merge_heads(attend(q, *kv, mask=None)))
