"""The Mixture-of-Transformers layer loop, with a K/V cache for prefixes.

Every layer runs both experts in lockstep: each expert projects its own tokens to q, k, v; one
attention runs over the concatenation ``[cached | video | action]`` under the variant's mask; each
expert then applies its own output projection, cross-attention and FFN. An expert entry of
``None`` means its tokens are absent this call (served from the cache, or not needed). Training,
prefill and cached denoising steps all go through ``run_layers``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.utils.checkpoint
from torch import nn

from fastwam.model.experts import Tokens
from fastwam.model.masks import Layout, attention_mask, dual_mask, layout_length
from fastwam.nn.attention import attend


@dataclass
class KVCache:
    """Per-layer keys/values (B, H, M, K) of prefix tokens, and the layout of those M tokens."""

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    layout: Layout = ()

    @property
    def length(self) -> int:
        return layout_length(self.layout)

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return (self.keys[i], self.values[i]) if i < len(self.keys) else None

    def set_layer(self, i: int, k: torch.Tensor, v: torch.Tensor) -> None:
        if i == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[i], self.values[i] = k, v


def run_layers(
    video_blocks: nn.ModuleList,
    action_blocks: nn.ModuleList,
    video: Tokens | None,
    action: Tokens | None,
    rule: str,
    cache: KVCache | None = None,
    store: bool = False,
    idm_samples: torch.Tensor | None = None,
    checkpoint: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Run all layers; returns final hidden states (video (B, Nv, Dv), action (B, Na, Da)), None if absent.

    With ``cache``, queries also attend to the cached prefix. With ``store``, this call's keys and
    values are appended to ``cache`` (prefill); otherwise the cache is read only (denoising steps).
    ``idm_samples`` (B,) bool: dual-mode training, the rule per sample (``masks.dual_mask``).
    ``checkpoint``: activation checkpointing per layer when gradients are on (training memory).
    """
    streams = [(blocks, t) for blocks, t in ((video_blocks, video), (action_blocks, action)) if t is not None]
    if not streams:
        raise ValueError("run_layers: at least one of video/action tokens is required")
    if store and cache is None:
        raise ValueError("run_layers: store=True needs a cache to store into")
    query_layout = sum((t.layout for _, t in streams), ())
    key_layout = query_layout if cache is None else cache.layout + query_layout
    if idm_samples is None:
        mask = attention_mask(query_layout, key_layout, rule, streams[0][1].x.device)
    else:
        mask = dual_mask(query_layout, key_layout, idm_samples)
    lengths = [t.length for _, t in streams]
    inputs = [t for _, t in streams]

    def layer(i: int, *xs: torch.Tensor) -> list[torch.Tensor]:
        """Layer i on the streams' hidden states xs -> their new hidden states."""
        tokens = [dataclasses.replace(t, x=x) for t, x in zip(inputs, xs)]
        qkv = [blocks[i].attention_inputs(t) for (blocks, _), t in zip(streams, tokens)]
        q, k, v = qkv[0] if len(qkv) == 1 else (torch.cat(parts, dim=2) for parts in zip(*qkv))  # (B, H, N, K)
        past = cache.layer(i) if cache is not None else None
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, H, M + N, K)
        if store:
            cache.set_layer(i, k, v)
        out = attend(q, k, v, mask).split(lengths, dim=2)
        return [blocks[i].attention_output(t, o, i) for (blocks, _), t, o in zip(streams, tokens, out)]

    xs = [t.x for t in inputs]
    recompute = checkpoint and torch.is_grad_enabled() and not store
    for i in range(len(video_blocks)):
        # activation checkpointing: keep only each layer's inputs, recompute the rest in the backward pass
        xs = torch.utils.checkpoint.checkpoint(layer, i, *xs, use_reentrant=False) if recompute else layer(i, *xs)

    if store:
        cache.layout = key_layout
    video_x = xs[0] if video is not None else None
    action_x = xs[-1] if action is not None else None
    return video_x, action_x
