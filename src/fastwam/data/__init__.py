"""Datasets: the LeRobot format (``lerobot``), training windows (``windows``), normalization.

Names are imported lazily so that ``fastwam.data.lerobot`` (used by collection workers) loads
without torch.
"""

import importlib

_EXPORTS = {
    "DatasetError": "lerobot", "DatasetFileNotFoundError": "lerobot", "EpisodeIndexError": "lerobot",
    "LeRobotDataset": "lerobot", "LeRobotWriter": "lerobot", "VideoSettings": "lerobot",
    "build_features": "lerobot", "Normalizer": "normalize", "compute_stats": "normalize",
    "ChunkDataset": "windows",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastwam.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fastwam.data.{_EXPORTS[name]}"), name)
