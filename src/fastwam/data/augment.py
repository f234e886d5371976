"""Training-time image augmentation.

Random shift (DrQ; Diffusion Policy's random crop): pad each camera image by ``pad`` pixels with
its edge values and crop it back at a random offset. One offset per sample and camera, shared by
all of the sample's frames (current and future), so the video target stays consistent with the
context it is predicted from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(frames: torch.Tensor, pad: int, cameras: int, generator: torch.Generator) -> torch.Tensor:
    """(B, T, 3, H, W) -> (B, T, 3, H, W): each of the ``cameras`` side-by-side tiles shifted by up
    to ``pad`` pixels in rows and columns (replicate padding), the same shift for every frame t."""
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"frames: expected (B, T, 3, H, W), got {tuple(frames.shape)}")
    b, t, c, h, w = frames.shape
    if cameras < 1 or w % cameras:
        raise ValueError(f"frames: width {w} does not split into {cameras} camera tile(s)")
    tile = w // cameras
    if not 0 <= pad < min(h, tile):
        raise ValueError(f"random_shift: pad must be in [0, {min(h, tile)}) for {h}x{tile} px tiles, got {pad}")
    if pad == 0:
        return frames
    # (B*cams, T*3, H, W): every tile of a sample is its own image, its frames stacked as channels
    tiles = frames.reshape(b, t * c, h, cameras, tile).permute(0, 3, 1, 2, 4).reshape(b * cameras, t * c, h, tile)
    padded = F.pad(tiles, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (b * cameras, 2), generator=generator).tolist()
    shifted = torch.stack([img[:, dy:dy + h, dx:dx + tile] for img, (dy, dx) in zip(padded, offsets)])
    return shifted.reshape(b, cameras, t * c, h, tile).permute(0, 2, 3, 1, 4).reshape(b, t, c, h, w)
