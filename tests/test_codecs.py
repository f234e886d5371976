"""Latent codecs: the pixel patch codec (exact) and the Wan VAE codec on a tiny random VAE."""

import json
import re

import pytest
import torch
from conftest import WAN_Z_DIM as Z_DIM

from fastwam.codecs import LatentCodec, build_codec, frames_to_unit, unit_to_frames
from fastwam.config import CodecConfig


def test_frames_unit_round_trip():
    frames = torch.arange(256, dtype=torch.uint8).repeat(3 * 4, 1).view(2, 3, 16, 32)  # every value
    unit = frames_to_unit(frames)
    assert unit.dtype == torch.float32 and unit.min() == -1 and unit.max() == 1
    assert torch.equal(unit_to_frames(unit), frames)
    with pytest.raises(ValueError, match=r"frames: expected uint8 \(\.\.\., 3, H, W\), got torch.uint8 \(2, 16, 32, 3\)"):
        frames_to_unit(frames.permute(0, 2, 3, 1))


def test_patch_codec_exact_round_trip():
    codec = build_codec(CodecConfig(name="patch", factor=8))
    assert isinstance(codec, LatentCodec)
    assert (codec.channels, codec.spatial, codec.temporal, codec.latent_frames(3)) == (192, 8, 1, 3)
    frames = torch.rand(2, 3, 3, 64, 128) * 2 - 1
    latents = codec.encode(frames)
    assert latents.shape == (2, 3, 192, 8, 16)
    assert torch.equal(codec.decode(latents), frames)
    # Channel c*f*f + p*f + q of latent pixel (i, j) is rgb c of pixel (i*f + p, j*f + q).
    assert latents[1, 2, 1 * 64 + 3 * 8 + 5, 4, 7] == frames[1, 2, 1, 4 * 8 + 3, 7 * 8 + 5]


def test_patch_codec_rejects_bad_input():
    codec = build_codec(CodecConfig(name="patch", factor=8))
    with pytest.raises(ValueError, match=r"frames: expected \(B, T, 3, H, W\) with H, W divisible by 8, got \(2, 3, 3, 60, 64\)"):
        codec.encode(torch.zeros(2, 3, 3, 60, 64))
    with pytest.raises(ValueError, match=r"frames: expected a float tensor .* got torch.uint8"):
        codec.encode(torch.zeros(2, 3, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"latents: expected \(B, T', 192, h, w\), got \(2, 3, 48, 8, 8\)"):
        codec.decode(torch.zeros(2, 3, 48, 8, 8))


@pytest.fixture(scope="module")
def wan_codec(tiny_wan_dir):
    return build_codec(CodecConfig(name="wan22", factor=16, path=str(tiny_wan_dir)))


def test_wan_codec_shapes_and_determinism(wan_codec):
    assert (wan_codec.channels, wan_codec.spatial, wan_codec.temporal) == (Z_DIM, 16, 4)
    assert [wan_codec.latent_frames(t) for t in (1, 5, 9)] == [1, 2, 3]
    frames = torch.rand(2, 9, 3, 32, 48) * 2 - 1
    latents = wan_codec.encode(frames)
    assert latents.shape == (2, 3, Z_DIM, 2, 3) and latents.dtype == torch.float32
    assert torch.equal(wan_codec.encode(frames), latents)  # posterior mode, not a sample
    decoded = wan_codec.decode(latents)
    assert decoded.shape == frames.shape and decoded.abs().max() <= 1
    # Causal: the first latent frame is the first pixel frame encoded on its own.
    assert torch.allclose(wan_codec.encode(frames[:, :1]), latents[:, :1], atol=1e-5)


def test_wan_codec_normalizes_like_wan(wan_codec):
    frames = torch.rand(1, 5, 3, 32, 32) * 2 - 1
    vae = wan_codec.vae
    raw = vae.encode(frames.transpose(1, 2)).latent_dist.mode().transpose(1, 2)  # (B, T', C, h, w)
    mean = torch.tensor(vae.config.latents_mean).view(-1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(-1, 1, 1)
    latents = wan_codec.encode(frames)
    assert torch.allclose(latents, (raw - mean) / std, atol=1e-5)
    # Decoding un-normalizes: same frames as the VAE decoding the raw latents.
    expected = vae.decode(raw.transpose(1, 2)).sample.transpose(1, 2)
    assert torch.allclose(wan_codec.decode(latents), expected, atol=1e-5)


def test_wan_codec_rejects_bad_input(wan_codec):
    with pytest.raises(ValueError, match=r"frames: expected T = 1 \+ 4\*n frames .* got T = 4"):
        wan_codec.encode(torch.zeros(1, 4, 3, 32, 32))
    with pytest.raises(ValueError, match=r"divisible by 16, got \(1, 5, 3, 24, 32\)"):
        wan_codec.encode(torch.zeros(1, 5, 3, 24, 32))


def test_wan_codec_bad_paths(tmp_path, tiny_wan_dir):
    with pytest.raises(FileNotFoundError, match="codec.path.* is empty"):
        build_codec(CodecConfig(name="wan22", factor=16))
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing} is not a directory")):
        build_codec(CodecConfig(name="wan22", factor=16, path=str(missing)))
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path} has no config.json")):
        build_codec(CodecConfig(name="wan22", factor=16, path=str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="_class_name 'AutoencoderKL', expected 'AutoencoderKLWan'"):
        build_codec(CodecConfig(name="wan22", factor=16, path=str(tmp_path)))
    (tmp_path / "config.json").write_text((tiny_wan_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path} has no weights")):
        build_codec(CodecConfig(name="wan22", factor=16, path=str(tmp_path)))
    with pytest.raises(ValueError, match="compresses 16x spatially and 4x in time; expected 8x"):
        build_codec(CodecConfig(name="wan22", factor=8, path=str(tiny_wan_dir)))


def test_wan_codec_accepts_pipeline_root(tmp_path, tiny_wan_dir):
    (tmp_path / "vae").symlink_to(tiny_wan_dir, target_is_directory=True)
    codec = build_codec(CodecConfig(name="wan22", factor=16, path=str(tmp_path)))
    assert codec.channels == Z_DIM
