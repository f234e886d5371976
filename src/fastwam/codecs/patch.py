"""Pixel space-to-depth codec: each f x f block of RGB pixels becomes 3*f*f channels. No weights."""

from __future__ import annotations

import torch
from einops import rearrange

from fastwam.codecs import LatentCodec


class PatchCodec(LatentCodec):
    """(B, T, 3, H, W) <-> (B, T, 3*f*f, H/f, W/f), channels ordered (rgb, row in block, column in block).

    Exact: ``decode(encode(x))`` equals ``x`` bit for bit. Differentiable, device- and dtype-agnostic.
    """

    temporal = 1

    def __init__(self, factor: int):
        if factor < 1:
            raise ValueError(f"patch codec: factor must be >= 1, got {factor}")
        self.spatial = factor
        self.channels = 3 * factor * factor

    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        f = self.spatial
        return rearrange(frames, "b t c (h p) (w q) -> b t (c p q) h w", p=f, q=f)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        f = self.spatial
        return rearrange(latents, "b t (c p q) h w -> b t c (h p) (w q)", p=f, q=f)
