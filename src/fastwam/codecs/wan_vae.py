"""Wan2.2 VAE codec: diffusers' ``AutoencoderKLWan`` loaded from a local directory.

Latents are the posterior mode (deterministic), normalized per channel the way Wan's pipelines do:
``z_norm = (z - latents_mean) / latents_std`` with both vectors from the VAE's config.json.
The Wan2.2 VAE: z_dim 48, 16x spatial (8x from three downsampling stages, 2x from patch_size 2),
4x temporal, first frame encoded on its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fastwam.codecs import LatentCodec

_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
            "diffusion_pytorch_model.bin")


def resolve_vae_dir(path: str | Path) -> Path:
    """The AutoencoderKLWan directory at ``path``, or at ``path/vae`` for a diffusers pipeline root.

    Raises FileNotFoundError / ValueError naming the path and what is missing or wrong.
    """
    where = "wan22 codec (codec.path)"
    if not str(path):
        raise FileNotFoundError(f"{where} is empty: the wan22 codec needs a local diffusers AutoencoderKLWan "
                                "directory (config.json + diffusion_pytorch_model.safetensors)")
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{where}: {root} is not a directory")
    vae_dir = root / "vae" if not (root / "config.json").is_file() and (root / "vae").is_dir() else root
    config = vae_dir / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{where}: {vae_dir} has no config.json; expected a diffusers AutoencoderKLWan "
                                "directory or a pipeline directory with a vae/ subfolder")
    found = json.loads(config.read_text()).get("_class_name")
    if found != "AutoencoderKLWan":
        raise ValueError(f"{where}: {config} describes _class_name {found!r}, expected 'AutoencoderKLWan'")
    if not any((vae_dir / name).is_file() for name in _WEIGHTS):
        raise FileNotFoundError(f"{where}: {vae_dir} has no weights; expected one of {list(_WEIGHTS)}")
    return vae_dir


class WanVAECodec(LatentCodec):
    """(B, T, 3, H, W) in [-1, 1] <-> normalized latents (B, 1 + (T-1)//4, z_dim, H/s, W/s), float32.

    The VAE lives on ``device`` in ``dtype``; inputs are moved there, latents and decoded frames
    come back float32 on ``device``. Frozen: no gradients flow through it.
    """

    temporal = 4

    def __init__(self, path: str | Path, factor: int, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        from diffusers import AutoencoderKLWan

        vae_dir = resolve_vae_dir(path)
        self.vae = AutoencoderKLWan.from_pretrained(vae_dir, torch_dtype=dtype).to(device).eval().requires_grad_(False)
        cfg = self.vae.config
        stages = len(cfg.dim_mult) - 1
        spatial = 2**stages * (cfg.patch_size or 1)
        temporal = 2 ** sum(cfg.temperal_downsample[:stages])
        if temporal != self.temporal or spatial != factor:
            raise ValueError(f"wan22 codec: {vae_dir} compresses {spatial}x spatially and {temporal}x in time; "
                             f"expected {factor}x (codec.factor) and {self.temporal}x")
        if not len(cfg.latents_mean) == len(cfg.latents_std) == cfg.z_dim:
            raise ValueError(f"wan22 codec: {vae_dir} config has {len(cfg.latents_mean)} latents_mean and "
                             f"{len(cfg.latents_std)} latents_std values for z_dim {cfg.z_dim}")
        self.spatial, self.channels = spatial, cfg.z_dim
        self.device, self.dtype = torch.device(device), dtype
        self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32, device=device).view(-1, 1, 1)  # (C, 1, 1)
        self.std = torch.tensor(cfg.latents_std, dtype=torch.float32, device=device).view(-1, 1, 1)

    @torch.no_grad()
    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.to(self.device, self.dtype).transpose(1, 2)  # (B, 3, T, H, W)
        z = self.vae.encode(x).latent_dist.mode().float().transpose(1, 2)  # (B, T', C, h, w)
        return ((z - self.mean) / self.std).contiguous()

    @torch.no_grad()
    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.device, torch.float32) * self.std + self.mean  # (B, T', C, h, w)
        x = self.vae.decode(z.to(self.dtype).transpose(1, 2)).sample  # (B, 3, T, H, W)
        return x.float().transpose(1, 2).contiguous()
