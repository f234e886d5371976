"""Small layers used by both experts (Wan2.2 block conventions).

Axis letters: B batch, N tokens, D expert width.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale (used on queries and keys)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.rms_norm(x, self.weight.shape, self.weight, self.eps)


def layer_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine parameters (adaptive norm supplies scale and shift)."""
    return nn.functional.layer_norm(x.float(), x.shape[-1:], eps=eps).type_as(x)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Adaptive-norm modulation: norm(x) * (1 + scale) + shift; shift/scale broadcast over N."""
    return layer_norm(x) * (1 + scale) + shift


class FeedForward(nn.Sequential):
    """Linear -> GELU(tanh) -> Linear; indices 0 and 2 match Wan's ``ffn`` weights."""

    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


def sinusoidal_embedding(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of flow time. sigma: (...) in [0, 1] -> (..., dim), on t = 1000 * sigma."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=sigma.device, dtype=torch.float64) / half)
    angles = (1000.0 * sigma.double()).unsqueeze(-1) * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).float()


def grid_sincos_embedding(rows: int, cols: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position features of a rows x cols token grid (DiT / MAE) -> (rows * cols, dim).

    Half the channels encode the row, half the column, each as sin and cos at dim / 4 frequencies
    from 1 to 1/10000 per token; tokens are in row-major order.
    """
    if dim % 4:
        raise ValueError(f"grid_sincos_embedding: dim must be divisible by 4, got {dim}")
    freqs = 10000.0 ** (-torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    parts = []
    for pos in (row.flatten(), col.flatten()):
        angles = pos[:, None].double() * freqs
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=-1).float()


class TimeEmbedding(nn.Module):
    """Flow time -> (embedding for the head, six modulation vectors per block).

    Mirrors Wan: ``time_embedding`` (freq -> D -> D) and a shared ``time_projection`` (D -> 6D);
    each block adds its own learned ``modulation`` offset.
    """

    def __init__(self, freq_dim: int, dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sigma: (B,) -> temb (B, D), mod (B, 6, D)."""
        dtype = self.time_embedding[0].weight.dtype
        temb = self.time_embedding(sinusoidal_embedding(sigma, self.freq_dim).to(dtype))
        mod = self.time_projection(temb).unflatten(-1, (6, -1))
        return temb, mod


class ConditionEmbedding(nn.Module):
    """Instruction embeddings plus one proprio token -> an expert's cross-attention context."""

    def __init__(self, text_dim: int, state_dim: int, dim: int):
        super().__init__()
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.state_embedding = nn.Linear(state_dim, dim)

    def forward(self, text: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """text (B, L, E), state (B, S) -> context (B, L + 1, D)."""
        return torch.cat([self.text_embedding(text), self.state_embedding(state).unsqueeze(1)], dim=1)


class OutputHead(nn.Module):
    """Final adaptive norm + linear projection (Wan ``head``)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.modulation = nn.Parameter(torch.zeros(1, 2, dim))
        self.head = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x (B, N, D), temb (B, N, D) -> (B, N, out_dim)."""
        shift, scale = (self.modulation.unsqueeze(1) + temb.unsqueeze(2)).unbind(2)
        return self.head(modulate(x, shift, scale))
