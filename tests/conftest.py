"""Shared fixtures: a tiny random Wan2.2-format VAE on disk."""

import pytest
import torch

WAN_Z_DIM = 48  # Wan2.2's latent channels, which the wan22 codec's config check expects


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory):
    """A random AutoencoderKLWan in the Wan2.2 format (residual blocks, patch_size 2), 16x spatial and 4x
    temporal compression like the real one, 48 latent channels, and base width 8 (a few thousand weights)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8, decoder_base_dim=8, z_dim=WAN_Z_DIM, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
        scale_factor_spatial=16, scale_factor_temporal=4,
        latents_mean=torch.randn(WAN_Z_DIM).tolist(), latents_std=(torch.rand(WAN_Z_DIM) + 0.5).tolist(),
    )
    path = tmp_path_factory.mktemp("wan_vae")
    vae.save_pretrained(path)
    return path
