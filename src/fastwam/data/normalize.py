"""Per-dimension normalization of vector features (state, action), invertible.

Modes, per feature:
- ``min_max``: x -> 2 (x - min) / (max - min) - 1, the data range onto [-1, 1];
- ``mean_std``: x -> (x - mean) / std;
- ``quantiles``: x -> 2 (x - q01) / (q99 - q01) - 1, the central 98 % onto [-1, 1] (LeRobot's
  QUANTILES mode, robust to outliers; needs q01/q99 in the stats, which fastwam writes and
  ``--recompute-stats`` computes).

A constant dimension (max == min, or std == 0) gets scale 1 instead of 0: it maps to 0 (for
its constant value) and still round-trips exactly, with no NaN or inf. Stats come from
``meta/stats.json`` (``Normalizer.from_dataset``) or are recomputed from the data
(``compute_stats``); ``to_dict`` / ``from_dict`` serialize the normalizer (saved as
``stats.json`` next to a checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Mapping, TypeVar

import numpy as np
import torch

from fastwam.data.lerobot import DatasetError, LeRobotDataset, vector_stats

Mode = Literal["min_max", "mean_std", "quantiles"]
MODES = ("min_max", "mean_std", "quantiles")
NEEDS = {"min_max": ("min", "max"), "mean_std": ("mean", "std"), "quantiles": ("q01", "q99")}
Array = TypeVar("Array", np.ndarray, torch.Tensor)
DEFAULT_MODES: dict[str, Mode] = {"observation.state": "min_max", "action": "min_max"}
_EPS = 1e-8


def compute_stats(dataset: LeRobotDataset, keys: tuple[str, ...] = ("observation.state", "action")) -> dict[str, dict[str, np.ndarray]]:
    """Recompute min/max/mean/std/count per dimension of float features from the data itself."""
    return {k: vector_stats(dataset.column(k).reshape(dataset.num_frames, -1)) for k in keys}


class Normalizer:
    """Affine map per feature and dimension: normalize(x) = (x - offset) / scale."""

    def __init__(self, stats: Mapping[str, Mapping[str, np.ndarray]], modes: Mapping[str, Mode] = DEFAULT_MODES):
        self.modes = dict(modes)
        self.stats = {k: {s: np.asarray(v, dtype=np.float64) for s, v in stats[k].items()} for k in self._present(stats)}
        self._offset, self._scale = {}, {}
        for key, mode in self.modes.items():
            offset, scale = _affine(self.stats[key], mode, key)
            self._offset[key], self._scale[key] = offset, scale

    @classmethod
    def from_dataset(cls, dataset: LeRobotDataset, modes: Mapping[str, Mode] = DEFAULT_MODES,
                     recompute: bool = False) -> "Normalizer":
        """From meta/stats.json, or from the data when ``recompute`` is True."""
        stats = compute_stats(dataset, tuple(modes)) if recompute else dataset.stats
        where = "the data" if recompute else dataset.root / "meta/stats.json"
        try:
            normalizer = cls(stats, modes)
        except DatasetError as e:
            raise DatasetError(f"{where}: {e}" + ("" if recompute else " (train --recompute-stats computes them "
                                                                         "from the data)")) from None
        for key in modes:
            dim = int(np.prod(dataset.features[key]["shape"])) if key in dataset.features else None
            if dim is not None and normalizer._offset[key].shape != (dim,):
                raise DatasetError(f"{where}: stats of {key!r} have {normalizer._offset[key].shape[0]} dimensions, the "
                                   f"feature has {dim} (train --recompute-stats computes them from the data)")
        return normalizer

    def normalize(self, key: str, x: Array) -> Array:
        """x (..., dim) in raw units -> normalized."""
        offset, scale = self._params(key, x)
        return (x - offset) / scale

    def unnormalize(self, key: str, y: Array) -> Array:
        """Inverse of ``normalize``."""
        offset, scale = self._params(key, y)
        return y * scale + offset

    def to_dict(self) -> dict:
        keep = ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99")
        return {"modes": self.modes,
                "stats": {k: {s: v.tolist() for s, v in d.items() if s in keep} for k, d in self.stats.items()}}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Normalizer":
        if not isinstance(data, Mapping) or "modes" not in data or "stats" not in data:
            raise ValueError("normalizer dict needs 'modes' and 'stats'")
        return cls(data["stats"], data["modes"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Normalizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: normalizer stats file not found")
        return cls.from_dict(json.loads(path.read_text()))

    def _present(self, stats: Mapping) -> list[str]:
        missing = [k for k in self.modes if k not in stats]
        if missing:
            raise DatasetError(f"stats lack feature(s) {missing}; available: {sorted(stats)}")
        bad = {k: m for k, m in self.modes.items() if m not in MODES}
        if bad:
            raise ValueError(f"unknown normalization mode(s) {bad}: expected one of {', '.join(MODES)}")
        return list(self.modes)

    def _params(self, key: str, like: Array) -> tuple[Array, Array]:
        if key not in self._offset:
            raise KeyError(f"no normalization stats for {key!r}; known: {sorted(self._offset)}")
        offset, scale = self._offset[key], self._scale[key]
        if like.shape[-1:] != offset.shape:
            raise ValueError(f"{key}: last dim of input {tuple(like.shape)} does not match stats dim {offset.shape[0]}")
        if isinstance(like, torch.Tensor):
            return (torch.as_tensor(offset, dtype=like.dtype, device=like.device),
                    torch.as_tensor(scale, dtype=like.dtype, device=like.device))
        dtype = like.dtype if np.issubdtype(like.dtype, np.floating) else np.float64
        return offset.astype(dtype), scale.astype(dtype)


def _affine(stats: Mapping[str, np.ndarray], mode: Mode, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) per dimension; constant dimensions get scale 1."""
    needed = NEEDS[mode]
    missing = [s for s in needed if s not in stats]
    if missing:
        raise DatasetError(f"stats of {key!r} lack {missing} needed for {mode} normalization "
                           "(train --recompute-stats computes them from the data)")
    a, b = (np.ravel(stats[s]).astype(np.float64) for s in needed)
    if a.shape != b.shape:
        raise DatasetError(f"stats of {key!r}: {needed[0]} has {a.size} values, {needed[1]} has {b.size}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise DatasetError(f"stats of {key!r} contain NaN or inf")
    if mode in ("min_max", "quantiles"):
        offset, scale = (a + b) / 2, (b - a) / 2
    else:
        offset, scale = a, b
    if np.any(scale < 0):
        raise DatasetError(f"stats of {key!r}: negative range or std {scale}")
    return offset, np.where(scale < _EPS, 1.0, scale)
