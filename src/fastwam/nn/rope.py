"""Rotary position embeddings over one or several axes (Wan's 3-D split of head_dim).

A head of size K holds K/2 rotation pairs; ``axis_split`` assigns them to axes (frame, row,
column for video; one axis for actions). Pairs are consecutive channels (2i, 2i+1).
"""

from __future__ import annotations

import torch


def wan_axis_split(head_dim: int) -> tuple[int, int, int]:
    """Rotation pairs per axis (frame, row, column), as Wan2.2 divides a head of ``head_dim``."""
    pairs = head_dim // 2
    spatial = pairs // 3
    return pairs - 2 * spatial, spatial, spatial


def rope_angles(positions: torch.Tensor, axis_split: tuple[int, ...], theta: float = 10000.0) -> torch.Tensor:
    """positions (N, n_axes) integer grid coordinates -> angles (N, K/2)."""
    if positions.shape[-1] != len(axis_split):
        raise ValueError(f"positions: expected (N, {len(axis_split)}) for axis_split {axis_split}, got {tuple(positions.shape)}")
    parts = []
    for axis, pairs in enumerate(axis_split):
        freqs = theta ** (-torch.arange(pairs, dtype=torch.float64, device=positions.device) / pairs)
        parts.append(positions[:, axis, None].double() * freqs)
    return torch.cat(parts, dim=-1)


def rope_rotations(angles: torch.Tensor) -> torch.Tensor:
    """angles (N, K/2) -> rotations (2, N, K), float32: per channel, cos and signed sin of its pair's angle.

    Channel 2i gets (cos, -sin), channel 2i+1 gets (cos, +sin), so that ``apply_rope`` is two
    multiplies and an add (real arithmetic, which compiled graphs fuse; complex numbers they do not).
    """
    cos = angles.cos().repeat_interleave(2, dim=-1)
    sin = torch.stack([-angles.sin(), angles.sin()], dim=-1).flatten(-2)
    return torch.stack([cos, sin]).float()


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs (a, b) of x (B, H, N, K) to (a cos - b sin, b cos + a sin), in float32."""
    x32 = x.float()
    swapped = x32.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (b, a) per pair
    return (x32 * rotations[0] + swapped * rotations[1]).type_as(x)


def video_positions(frames: int, rows: int, cols: int, frame_offset: int = 0) -> torch.Tensor:
    """Token grid coordinates (frames * rows * cols, 3) in (frame, row, column) order."""
    f, r, c = torch.meshgrid(torch.arange(frames) + frame_offset, torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([f.flatten(), r.flatten(), c.flatten()], dim=-1)
