"""Training samples: one window per frame t of every episode (DESIGN section 7).

Axis letters: H action chunk length, K context frames, F future frames, r frame stride, C
cameras, h x w pixels of one camera, A action dim, D state dim.

A sample at global frame t of an episode that ends at frame T-1 (frame indices within it):

- ``frames``: uint8 (K + F, 3, h, w * C): the context frames t - r*(K-1), ..., t - r, t, then
  the future frames t + r*k for k = 1..F; cameras side by side in the order given. Before the
  episode start the first frame repeats (the robot was at rest; Diffusion Policy pads its
  observation history the same way); past the episode end the last frame repeats and
  ``frame_pad`` (K + F,) is True there.
- ``actions``: float32 (H, A) raw units, actions t..t+H-1; past the end the last action repeats
  and ``action_pad`` (H,) is True there. Padded steps must not count in a loss.
- ``state``: float32 (D,) at t; ``task`` (str instruction), ``task_index``, ``episode_index``,
  ``frame_index`` (ints).

Frames are read from the dataset's decoded-frame cache (uint8, memory-mapped), so a sample
costs a few array lookups. A trainer that caches its own latents can use ``frame_indices(i)``
(global frame rows) and ``action_indices(i)`` instead of ``__getitem__``'s pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from fastwam.data.lerobot import DatasetError, LeRobotDataset, camera_key

STATE_KEY = "observation.state"
ACTION_KEY = "action"


class ChunkDataset(Dataset):
    """Windows (frames up to t, future frames, action chunk, state, instruction) over a LeRobot dataset.

    dataset: a ``LeRobotDataset`` or its directory. chunk: H. frame_stride: r. future_frames: F.
    context_frames: K (the current frame and K - 1 past ones, r frames apart).
    cameras: camera names or full video keys (default: all, in info.json order).
    episodes: restrict to these episode indices (default: all). Item i is the i-th frame of the
    selected episodes in row order.
    """

    def __init__(self, dataset: LeRobotDataset | str | Path, chunk: int, frame_stride: int, future_frames: int,
                 cameras: Sequence[str] | None = None, episodes: Sequence[int] | None = None, progress: bool = False,
                 context_frames: int = 1):
        if chunk < 1 or frame_stride < 1 or future_frames < 0 or context_frames < 1:
            raise ValueError(f"need chunk >= 1, frame_stride >= 1, future_frames >= 0, context_frames >= 1; "
                             f"got {chunk}, {frame_stride}, {future_frames}, {context_frames}")
        if not isinstance(dataset, LeRobotDataset):
            dataset = LeRobotDataset(dataset, require=(STATE_KEY, ACTION_KEY))
        self.dataset, self.chunk, self.frame_stride = dataset, chunk, frame_stride
        self.context_frames, self.future_frames = context_frames, future_frames
        self.camera_keys = [camera_key(c) for c in (cameras if cameras is not None else dataset.camera_keys)]
        unknown = [k for k in self.camera_keys if k not in dataset.camera_keys]
        if unknown or not self.camera_keys:
            raise DatasetError(f"{dataset.root}: cameras {unknown or '(none)'} not among video or image features {dataset.camera_keys}")
        self.state = float_column(dataset, STATE_KEY)  # (N, D)
        self.actions = float_column(dataset, ACTION_KEY)  # (N, A)
        self.task_index = dataset.column("task_index")
        self.episode_index = dataset.column("episode_index")
        self.frame_index = dataset.column("frame_index")
        chosen = [dataset.episode(e) for e in (episodes if episodes is not None else range(dataset.num_episodes))]
        self.rows = np.concatenate([np.arange(e.start, e.stop) for e in chosen])  # (S,) sample -> global row
        lengths = [e.length for e in dataset.episodes]
        self.episode_start = np.repeat([e.start for e in dataset.episodes], lengths)  # (N,)
        self.episode_stop = np.repeat([e.stop for e in dataset.episodes], lengths)  # (N,)
        self._frames = {k: dataset.frames(k, progress=progress) for k in self.camera_keys}  # each (N, h, w, 3)

    def __len__(self) -> int:
        return len(self.rows)

    def frame_indices(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Global frame rows (K + F,) of sample i's frames, clamped to its episode, and pad flags."""
        return self._window(i, self.frame_stride * np.arange(1 - self.context_frames, self.future_frames + 1))

    def action_indices(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Global rows (H,) of sample i's action chunk, clamped to its episode, and pad flags."""
        return self._window(i, np.arange(self.chunk))

    def __getitem__(self, i: int) -> dict:
        frame_rows, frame_pad = self.frame_indices(i)
        action_rows, action_pad = self.action_indices(i)
        row = self.rows[i]
        views = [self._frames[k][frame_rows] for k in self.camera_keys]  # each (K + F, h, w, 3)
        frames = np.concatenate(views, axis=2).transpose(0, 3, 1, 2)  # (K + F, 3, h, w * C)
        return {
            "frames": torch.from_numpy(np.ascontiguousarray(frames)),
            "frame_pad": torch.from_numpy(frame_pad),
            "actions": torch.from_numpy(self.actions[action_rows]),
            "action_pad": torch.from_numpy(action_pad),
            "state": torch.from_numpy(self.state[row].copy()),
            "task": self.dataset.task(row),
            "task_index": int(self.task_index[row]),
            "episode_index": int(self.episode_index[row]),
            "frame_index": int(self.frame_index[row]),
        }

    def _window(self, i: int, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= i < len(self.rows):
            raise IndexError(f"sample index {i} out of range 0..{len(self.rows) - 1}")
        row = int(self.rows[i])
        first, last = int(self.episode_start[row]), int(self.episode_stop[row]) - 1
        wanted = row + offsets
        return np.clip(wanted, first, last), wanted > last


def float_column(dataset: LeRobotDataset, key: str) -> np.ndarray:
    values = dataset.column(key)
    if values.dtype != np.float32 or values.ndim != 2:
        raise DatasetError(f"{dataset.root}: {key} must be float32 (N, dim), got {values.dtype} {values.shape}")
    return np.ascontiguousarray(values)
