"""Wan2.2 DiT weights -> the video expert.

The video expert is Wan2.2's DiT block for block (``fastwam.model.experts``), so a Wan2.2
checkpoint (e.g. Wan2.2-TI2V-5B for the ``wan22-5b`` preset) initializes it exactly. Two layouts
are read, each as one ``.safetensors`` file or a directory of shards (with or without an
``*.index.json``):

- Wan's own (the ``Wan-AI/Wan2.2-TI2V-5B`` repository): our names without the ``condition.`` /
  ``time.`` prefixes (``blocks.0.self_attn.q.weight``, ``text_embedding.0.weight``, ...);
- diffusers' ``WanTransformer3DModel`` (``Wan-AI/Wan2.2-TI2V-5B-Diffusers/transformer``).

What Wan has no counterpart for keeps its initialization: the proprio token's embedding
(``video.condition.state_embedding``) and the action expert. The action expert can then start
from the loaded video expert (``init_action_from_video``), as Fast-WAM's released recipe does: its
blocks, time and text embeddings are the video expert's, resized to the action expert's widths by
linear interpolation; its action input, output head and proprio embedding stay random.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

from fastwam.model.wam import WAM

FRESH = ("condition.state_embedding.",)  # video-expert parameters Wan has no weights for
ACTION_OWN = ("action_in.", "head.", *FRESH)  # action-expert parameters with no video counterpart to start from

# Wan's own names -> ours, by prefix.
_WAN = [("text_embedding.", "condition.text_embedding."), ("time_embedding.", "time.time_embedding."),
        ("time_projection.", "time.time_projection.")]

# diffusers' names -> ours: (regex, replacement), first match wins.
_DIFFUSERS = [
    (r"condition_embedder\.time_embedder\.linear_1\.", "time.time_embedding.0."),
    (r"condition_embedder\.time_embedder\.linear_2\.", "time.time_embedding.2."),
    (r"condition_embedder\.time_proj\.", "time.time_projection.1."),
    (r"condition_embedder\.text_embedder\.linear_1\.", "condition.text_embedding.0."),
    (r"condition_embedder\.text_embedder\.linear_2\.", "condition.text_embedding.2."),
    (r"blocks\.(\d+)\.attn1\.to_([qkv])\.", r"blocks.\1.self_attn.\2."),
    (r"blocks\.(\d+)\.attn1\.to_out\.0\.", r"blocks.\1.self_attn.o."),
    (r"blocks\.(\d+)\.attn1\.norm_([qk])\.", r"blocks.\1.self_attn.norm_\2."),
    (r"blocks\.(\d+)\.attn2\.to_([qkv])\.", r"blocks.\1.cross_attn.\2."),
    (r"blocks\.(\d+)\.attn2\.to_out\.0\.", r"blocks.\1.cross_attn.o."),
    (r"blocks\.(\d+)\.attn2\.norm_([qk])\.", r"blocks.\1.cross_attn.norm_\2."),
    (r"blocks\.(\d+)\.norm2\.", r"blocks.\1.norm3."),  # diffusers' norm2 is Wan's cross-attention norm3
    (r"blocks\.(\d+)\.ffn\.net\.0\.proj\.", r"blocks.\1.ffn.0."),
    (r"blocks\.(\d+)\.ffn\.net\.2\.", r"blocks.\1.ffn.2."),
    (r"blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation"),
    (r"scale_shift_table$", "head.modulation"),
    (r"proj_out\.", "head.head."),
]


def wan_files(path: str | Path) -> list[Path]:
    """The safetensors file(s) of a Wan checkpoint: ``path`` itself or every ``*.safetensors`` in it."""
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        return [path]
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        raise FileNotFoundError(f"Wan weights: {path} is neither a .safetensors file nor a directory holding some")
    return files


def rename(key: str, layout: str) -> str:
    """One checkpoint key -> the video expert's name for it (``layout``: ``wan`` or ``diffusers``)."""
    if layout == "wan":
        for old, new in _WAN:
            if key.startswith(old):
                return new + key[len(old):]
        return key
    for pattern, new in _DIFFUSERS:
        renamed, hits = re.subn("^" + pattern, new, key)
        if hits:
            return renamed
    return key


def load_wan_video_weights(model: WAM, path: str | Path) -> list[str]:
    """Copy a Wan2.2 DiT checkpoint into ``model.video``; returns the video-expert names it set.

    Every video-expert parameter except those in ``FRESH`` must come from the checkpoint and
    every checkpoint tensor must land somewhere, with its shape: otherwise a ValueError names
    the file, the keys, and the expected against the received shape. Values are cast to the
    parameters' dtype.
    """
    files = wan_files(path)
    sources: dict[str, tuple[Path, str]] = {}  # our name -> (file, checkpoint key)
    for file in files:
        with safe_open(file, framework="pt") as f:
            keys = list(f.keys())
        layout = "diffusers" if any(k.startswith("condition_embedder.") for k in keys) else "wan"
        for key in keys:
            sources[rename(key, layout)] = (file, key)
    params = model.video.state_dict()
    wanted = {name for name in params if not name.startswith(FRESH)}
    where = f"Wan weights {Path(path)}"
    missing, unexpected = sorted(wanted - sources.keys()), sorted(sources.keys() - wanted)
    if missing or unexpected:
        raise ValueError(f"{where}: the video expert needs {len(wanted)} tensors; missing {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected {[sources[k][1] for k in unexpected[:8]]}"
                         f"{' ...' if len(unexpected) > 8 else ''} (is the preset the checkpoint's size?)")
    by_file: dict[Path, list[str]] = {}
    for name in sorted(wanted):
        by_file.setdefault(sources[name][0], []).append(name)
    wrong = []  # every shape is checked before anything is copied: a failed load leaves the model as it was
    for file, names in by_file.items():
        with safe_open(file, framework="pt") as f:
            for name in names:
                got = tuple(f.get_slice(sources[name][1]).get_shape())
                if got != tuple(params[name].shape):
                    wrong.append(f"{file.name}:{sources[name][1]} is {got}, video.{name} is {tuple(params[name].shape)}")
    if wrong:
        raise ValueError(f"{where}: {len(wrong)} tensors have other shapes than the video expert's (is the preset "
                         f"the checkpoint's size?): {wrong[:4]}{' ...' if len(wrong) > 4 else ''}")
    with torch.no_grad():
        for file, names in by_file.items():
            with safe_open(file, framework="pt") as f:
                for name in names:
                    params[name].copy_(f.get_tensor(sources[name][1]).to(params[name].dtype))
    return sorted(wanted)


def resize(src: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``src`` resized to ``shape`` (same rank): linear interpolation with the end points kept
    (``align_corners``) along each dimension whose size differs, one dimension after the other.
    When the last dimension (a linear layer's inputs) changes on a tensor of rank >= 2, the result
    is scaled by sqrt(old / new), so that a layer summing over fewer inputs keeps its output scale
    (the rule of Fast-WAM's released ActionDiT initialization)."""
    if src.ndim != len(shape):
        raise ValueError(f"resize: tensor of shape {tuple(src.shape)} cannot become rank-{len(shape)} {tuple(shape)}")
    out = src.float()
    for dim, size in enumerate(shape):
        if out.shape[dim] != size:
            moved = out.movedim(dim, -1)  # (..., n)
            flat = F.interpolate(moved.reshape(-1, 1, moved.shape[-1]), size=size, mode="linear", align_corners=True)
            out = flat.reshape(*moved.shape[:-1], size).movedim(-1, dim)
    if src.ndim >= 2 and src.shape[-1] != shape[-1]:
        out = out * math.sqrt(src.shape[-1] / shape[-1])
    return out.to(src.dtype)


def init_action_from_video(model: WAM) -> list[str]:
    """Start ``model.action`` from ``model.video`` (load Wan weights into it first); returns the
    action-expert names it set: every parameter except those in ``ACTION_OWN``, each the
    video expert's parameter of the same name, ``resize``d to the action expert's shape."""
    video, action = model.video.state_dict(), model.action.state_dict()
    names = sorted(name for name in action if not name.startswith(ACTION_OWN))
    missing = [name for name in names if name not in video]
    if missing:
        raise ValueError(f"init_action_from_video: the video expert has no {missing[:8]} to start the action expert from")
    with torch.no_grad():
        for name in names:
            action[name].copy_(resize(video[name], tuple(action[name].shape)))
    return names
