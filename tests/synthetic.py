"""A synthetic world the tests can learn: a bright dot that glides toward the image centre.

Frames are (3, S, S) in [-1, 1]; the action at each step is the dot's next displacement (dy, dx),
scaled to about [-1, 1]. Everything is a deterministic function of the current frame, so a model
that reads the frame can predict both the action chunk and the future frames.
"""

from __future__ import annotations

import torch

GAIN = 0.25  # fraction of the way to the centre covered per step
SCALE = 3.0  # pixels per unit of action


def render(pos: torch.Tensor, size: int, radius: float = 1.5) -> torch.Tensor:
    """pos (B, 2) in pixels -> frames (B, 3, size, size) in [-1, 1] with a soft dot."""
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    dy = grid[None, :, None] - pos[:, 0, None, None]
    dx = grid[None, None, :] - pos[:, 1, None, None]
    blob = torch.exp(-(dy**2 + dx**2) / (2 * radius**2))  # (B, S, S)
    colour = torch.tensor([1.0, 0.2, -0.6])[None, :, None, None]
    return -1 + (colour + 1) * blob[:, None]


def rollout(batch: int, size: int, steps: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (B, steps + 1, 2) and actions (B, steps, 2) of dots starting anywhere."""
    pos = [torch.rand(batch, 2, generator=generator) * (size - 4) + 2]
    actions = []
    centre = torch.full((batch, 2), size / 2)
    for _ in range(steps):
        move = GAIN * (centre - pos[-1])
        actions.append(move / SCALE)
        pos.append(pos[-1] + move)
    return torch.stack(pos, 1), torch.stack(actions, 1)


def make_batch(cfg, codec, batch: int, image_size: int, stride: int, generator: torch.Generator):
    """A ``fastwam.model.Batch`` of dot worlds for model config ``cfg`` (patch codec latents)."""
    from fastwam.model import Batch

    pos, actions = rollout(batch, image_size, cfg.chunk, generator)
    frame_steps = [0] + [stride * k for k in range(1, cfg.future_frames + 1)]
    frames = torch.stack([render(pos[:, s], image_size) for s in frame_steps], 1)  # (B, 1 + Tf, 3, S, S)
    latents = codec.encode(frames)
    action_dim = cfg.action_dim
    padded = torch.zeros(batch, cfg.chunk, action_dim)
    padded[..., :2] = actions
    return Batch(
        context=latents[:, :1], future=latents[:, 1:], actions=padded,
        action_pad=torch.zeros(batch, cfg.chunk, dtype=torch.bool),
        future_pad=torch.zeros(batch, cfg.future_frames, dtype=torch.bool),
        state=torch.zeros(batch, cfg.state_dim), text=torch.zeros(batch, cfg.text_tokens, cfg.text_dim),
    )
