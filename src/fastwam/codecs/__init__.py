"""Latent codecs: video frames <-> latents behind one small interface.

Axis letters: B batch, T pixel frames, T' latent frames, C latent channels, H W pixel rows and
columns, h w latent rows and columns (h = H / spatial, w = W / spatial).

Frames are float in [-1, 1] shaped (B, T, 3, H, W); latents are (B, T', C, h, w). A codec with
``temporal = k > 1`` is causal in Wan's way: the first frame is encoded on its own, then each
group of k frames becomes one latent frame, so T' = 1 + (T - 1) // k and T must be 1 + k*n.

- ``patch`` (:class:`~fastwam.codecs.patch.PatchCodec`): pixel space-to-depth, no weights.
- ``wan22`` (:class:`~fastwam.codecs.wan_vae.WanVAECodec`): diffusers' AutoencoderKLWan.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from fastwam.config import CodecConfig

__all__ = ["LatentCodec", "build_codec", "frames_to_unit", "unit_to_frames"]


class LatentCodec(ABC):
    """Frames (B, T, 3, H, W) in [-1, 1] <-> latents (B, T', C, h, w).

    ``encode`` and ``decode`` validate their input and then call ``_encode`` / ``_decode``.
    """

    channels: int  # C
    spatial: int  # H / h
    temporal: int  # pixel frames per latent frame after the first (1: frame by frame)

    def latent_frames(self, frames: int) -> int:
        """T' for T pixel frames: T for temporal 1, else 1 + (T - 1) // temporal (T = 1 + temporal*n)."""
        if frames < 1 or (frames - 1) % self.temporal:
            raise ValueError(f"frames: expected T = 1 + {self.temporal}*n frames (the first frame is encoded "
                             f"on its own, then {self.temporal} per latent frame), got T = {frames}")
        return 1 + (frames - 1) // self.temporal

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) float in [-1, 1] -> (B, T', C, H / spatial, W / spatial)."""
        s = self.spatial
        if frames.ndim != 5 or frames.shape[2] != 3 or frames.shape[3] % s or frames.shape[4] % s:
            raise ValueError(f"frames: expected (B, T, 3, H, W) with H, W divisible by {s}, got {tuple(frames.shape)}")
        if not frames.is_floating_point():
            raise ValueError(f"frames: expected a float tensor in [-1, 1] (see frames_to_unit), got {frames.dtype}")
        self.latent_frames(frames.shape[1])
        return self._encode(frames)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, T', C, h, w) -> (B, T, 3, h * spatial, w * spatial) in [-1, 1], T = 1 + temporal * (T' - 1)."""
        if latents.ndim != 5 or latents.shape[2] != self.channels or latents.shape[1] < 1:
            raise ValueError(f"latents: expected (B, T', {self.channels}, h, w), got {tuple(latents.shape)}")
        if not latents.is_floating_point():
            raise ValueError(f"latents: expected a float tensor, got {latents.dtype}")
        return self._decode(latents)

    @abstractmethod
    def _encode(self, frames: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _decode(self, latents: torch.Tensor) -> torch.Tensor: ...


def build_codec(cfg: CodecConfig, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> LatentCodec:
    """The codec named by ``cfg``.

    ``device`` and ``dtype`` place the wan22 VAE's weights (its latents are returned float32 on
    that device). The patch codec has no weights and works wherever its input lives.
    """
    if cfg.name == "patch":
        from fastwam.codecs.patch import PatchCodec

        return PatchCodec(cfg.factor)
    from fastwam.codecs.wan_vae import WanVAECodec

    return WanVAECodec(cfg.path, cfg.factor, device=device, dtype=dtype)


def frames_to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) in [0, 255] -> float32 in [-1, 1]."""
    if frames.dtype != torch.uint8 or frames.ndim < 3 or frames.shape[-3] != 3:
        raise ValueError(f"frames: expected uint8 (..., 3, H, W), got {frames.dtype} {tuple(frames.shape)}")
    return frames.float() / 127.5 - 1.0


def unit_to_frames(frames: torch.Tensor) -> torch.Tensor:
    """float (..., 3, H, W) in [-1, 1] -> uint8 in [0, 255] (clamped, rounded); inverts frames_to_unit."""
    if not frames.is_floating_point() or frames.ndim < 3 or frames.shape[-3] != 3:
        raise ValueError(f"frames: expected float (..., 3, H, W), got {frames.dtype} {tuple(frames.shape)}")
    return ((frames.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
