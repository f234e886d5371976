"""Validation at the boundary: errors that name the tensor, the expected and the received shape."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch


def expect(name: str, tensor, shape: tuple, dims: dict[str, int] | None = None, dtype: str | torch.dtype = "float") -> dict[str, int]:
    """Check ``tensor`` against ``shape`` (ints, or letters bound consistently through ``dims``).

    ``dtype``: a torch dtype, or "float" (any floating type), "bool", "int" (any integer type).
    Returns ``dims`` updated with the letters bound here, so several tensors can share "B".
    """
    dims = {} if dims is None else dims
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape {_fmt(shape, dims)}, got {type(tensor).__name__}")
    got = tuple(tensor.shape)
    ok = len(got) == len(shape)
    bound = dict(dims)
    if ok:
        for want, have in zip(shape, got):
            if isinstance(want, str):
                if bound.setdefault(want, have) != have:
                    ok = False
            elif want != have:
                ok = False
    if not ok:
        raise ValueError(f"{name}: expected shape {_fmt(shape, dims)}, got {got}")
    if not _dtype_ok(tensor.dtype, dtype):
        raise TypeError(f"{name}: expected dtype {dtype}, got {tensor.dtype}")
    dims.update(bound)
    return dims


def _dtype_ok(have: torch.dtype, want) -> bool:
    if want == "float":
        return have.is_floating_point
    if want == "bool":
        return have == torch.bool
    if want == "int":
        return not have.is_floating_point and not have.is_complex and have != torch.bool
    return have == want


def _fmt(shape: tuple, dims: dict[str, int]) -> str:
    parts = [str(dims.get(s, s)) if isinstance(s, str) else str(s) for s in shape]
    return "(" + ", ".join(parts) + ")"


def check_device(option: str, name: str) -> torch.device:
    """``--device``: a device torch knows and this machine has, else ValueError naming the option."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{option}: expected a device such as cpu, cuda or cuda:1, got {name!r} ({e})") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"{option}: {name!r} is not available here ({torch.cuda.device_count()} CUDA devices)")
    if device.type not in ("cpu", "cuda", "mps") or (device.type == "mps" and not torch.backends.mps.is_available()):
        raise ValueError(f"{option}: {name!r} is not available here (expected cpu or cuda)")
    return device


def check_threads(option: str, threads: int) -> int:
    """``--threads``: 0 (torch's default) or a positive count."""
    if threads < 0:
        raise ValueError(f"{option}: expected a thread count >= 1 (0: torch's default), got {threads}")
    return threads


def check_output_file(option: str, path: str | Path) -> Path:
    """An output file's path checked before the work that fills it: not a directory, and its
    folder exists or can be made and is writable (else results computed for hours would be lost)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a directory; expected a file path")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: {folder} is a file, so the folder cannot be made")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: {folder} is not writable")
    return path


def file_sha256(path: str | Path) -> str:
    """A file's SHA-256 (hex), read in 1 MiB blocks: checkpoints' and datasets' integrity records."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
