"""Validation at the boundary: errors that name the tensor, the expected and the received shape."""

from __future__ import annotations

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
