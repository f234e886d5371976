"""The two experts of the Mixture-of-Transformers.

Each expert has its own residual width D, time modulation, cross-attention to the instruction and
proprio, and FFN; both project queries/keys/values to the same H x K so that one attention runs
over their concatenated tokens (see ``fastwam.model.mot``).

Axis letters: B batch, T latent frames, C latent channels, h/w latent rows/columns, N tokens,
D expert width, H heads, K head_dim, L context tokens, S action chunk steps, A action dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from fastwam.config import ModelConfig
from fastwam.model.masks import ACTION, Layout
from fastwam.nn.attention import AttentionProjections, CrossAttention, merge_heads, split_heads
from fastwam.nn.layers import (ConditionEmbedding, FeedForward, OutputHead, TimeEmbedding, grid_sincos_embedding,
                               modulate)
from fastwam.nn.rope import apply_rope, rope_angles, rope_rotations, video_positions, wan_axis_split

ContextKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: cross-attention keys, values (B, H, L, K)


@dataclass
class Tokens:
    """One expert's tokens entering the layer loop."""

    x: torch.Tensor  # (B, N, D) hidden states
    temb: torch.Tensor  # (B, N or 1, D) time embedding (read by the output head); 1 = shared by all N
    mod: torch.Tensor  # (B, N or 1, 6, D) time modulation (shift/scale/gate for attention and FFN)
    rope: torch.Tensor  # (2, N, K) RoPE rotations, see fastwam.nn.rope
    layout: Layout  # token kinds as runs of (kind, count), see fastwam.model.masks
    context: ContextKV  # cross-attention keys/values per layer

    @property
    def length(self) -> int:
        return self.x.shape[1]

    @staticmethod
    def cat(parts: list["Tokens"]) -> "Tokens":
        """Concatenate segments of one expert along N (they share the cross-attention context)."""
        if len(parts) == 1:
            return parts[0]
        return Tokens(
            x=torch.cat([p.x for p in parts], 1),
            temb=torch.cat([p.temb.expand(-1, p.length, -1) for p in parts], 1),
            mod=torch.cat([p.mod.expand(-1, p.length, -1, -1) for p in parts], 1),
            rope=torch.cat([p.rope for p in parts], 1), layout=sum((p.layout for p in parts), ()),
            context=parts[0].context,
        )


class SelfAttentionProjections(AttentionProjections):
    """An expert's projections into and out of the shared attention (Wan ``self_attn``)."""

    def qkv(self, x: torch.Tensor, rope: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (B, N, D) -> q, k, v (B, H, N, K), RoPE applied to q and k."""
        q = apply_rope(split_heads(self.norm_q(self.q(x)), self.heads), rope)
        k = apply_rope(split_heads(self.norm_k(self.k(x)), self.heads), rope)
        return q, k, split_heads(self.v(x), self.heads)


class ExpertBlock(nn.Module):
    """One expert's half of an MoT layer: everything of a Wan block except the attention itself."""

    def __init__(self, dim: int, attn_dim: int, heads: int, ffn: int):
        super().__init__()
        self.modulation = nn.Parameter(torch.zeros(1, 6, dim))
        self.self_attn = SelfAttentionProjections(dim, attn_dim, heads)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = CrossAttention(dim, attn_dim, heads)
        self.ffn = FeedForward(dim, ffn)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedded instruction + proprio (B, L, D) -> this layer's cross-attention keys, values (B, H, L, K)."""
        return self.cross_attn.context_kv(context)

    def attention_inputs(self, t: Tokens) -> tuple[torch.Tensor, ...]:
        """Modulated pre-norm, then q, k, v (B, H, N, K) for the shared attention."""
        shift, scale = (self.modulation[:, :2] + t.mod[:, :, :2]).unbind(2)
        return self.self_attn.qkv(modulate(t.x, shift, scale), t.rope)

    def attention_output(self, t: Tokens, attn: torch.Tensor, layer: int) -> torch.Tensor:
        """attn (B, H, N, K) from the shared attention -> new hidden states (B, N, D)."""
        gate_attn, shift, scale, gate_ffn = (self.modulation[:, 2:] + t.mod[:, :, 2:]).unbind(2)
        x = t.x + self.self_attn.o(merge_heads(attn)) * gate_attn
        x = x + self.cross_attn(self.norm3(x), t.context[layer])
        return x + self.ffn(modulate(x, shift, scale)) * gate_ffn


class Expert(nn.Module):
    """What both experts share: condition and time embeddings, blocks, output head."""

    def __init__(self, cfg: ModelConfig, width: int, ffn: int, freq_dim: int, out_dim: int):
        super().__init__()
        self.condition = ConditionEmbedding(cfg.text_dim, cfg.state_dim, width)
        self.time = TimeEmbedding(freq_dim, width)
        self.blocks = nn.ModuleList(ExpertBlock(width, cfg.attn_dim, cfg.heads, ffn) for _ in range(cfg.layers))
        self.head = OutputHead(width, out_dim)
        self._rope_cache: dict[tuple, torch.Tensor] = {}

    def context_kv(self, text: torch.Tensor, state: torch.Tensor) -> ContextKV:
        """Instruction (B, L, E) and proprio (B, S) -> cross-attention keys/values for every layer."""
        context = self.condition(text, state)
        return [block.context_kv(context) for block in self.blocks]

    def _tokens(self, x: torch.Tensor, sigma: torch.Tensor, rope: torch.Tensor, kind: int, context: ContextKV) -> Tokens:
        """x (B, N, D) embedded inputs, sigma (B,) one flow time shared by all N tokens."""
        temb, mod = self.time(sigma)  # (B, D), (B, 6, D)
        return Tokens(x, temb[:, None], mod[:, None], rope, ((kind, x.shape[1]),), context)

    def _rope(self, positions: tuple, axis_split: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """RoPE rotations for a token layout, computed once per (layout, device) and reused."""
        key = (positions, device)
        if key not in self._rope_cache:
            grid = video_positions(*positions) if len(positions) == 4 else torch.arange(positions[0])[:, None]
            self._rope_cache[key] = rope_rotations(rope_angles(grid, axis_split)).to(device)
        return self._rope_cache[key]


def conv_stem(in_channels: int, channels: int) -> nn.Sequential:
    """Two 3x3 convolutions with GELU over each latent frame, (B, C, T, h, w) -> (B, channels, T, h, w)."""
    def conv(c_in: int) -> nn.Conv3d:
        return nn.Conv3d(c_in, channels, kernel_size=(1, 3, 3), padding=(0, 1, 1))
    return nn.Sequential(conv(in_channels), nn.GELU(approximate="tanh"), conv(channels), nn.GELU(approximate="tanh"))


class VideoExpert(Expert):
    """Video DiT: latent frames <-> patch tokens with 3-D RoPE (frame, row, column)."""

    def __init__(self, cfg: ModelConfig):
        v = cfg.video
        super().__init__(cfg, v.width, v.ffn, v.freq_dim, out_dim=math.prod(v.patch) * cfg.latent_channels)
        self.patch = v.patch
        self.axis_split = wan_axis_split(cfg.head_dim)
        self.stem = conv_stem(cfg.latent_channels, v.conv_stem) if v.conv_stem else None
        self.patch_embedding = nn.Conv3d(v.conv_stem or cfg.latent_channels, v.width, kernel_size=v.patch, stride=v.patch)
        if v.grid_position:  # (h' * w', D) fixed features, moved and cast with the module, not saved
            _, ph, pw = v.patch
            self.register_buffer("grid", grid_sincos_embedding(cfg.latent_height // ph, cfg.latent_width // pw, v.width),
                                 persistent=False)
        else:
            self.grid = None

    def tokens(self, latents: torch.Tensor, sigma: torch.Tensor, kind: int, frame_offset: int, context: ContextKV) -> Tokens:
        """latents (B, T, C, h, w) at flow time sigma (B,) -> tokens of one kind."""
        x = rearrange(latents, "b t c h w -> b c t h w")
        if self.stem is not None:
            x = self.stem(x)  # (B, conv_stem, T, h, w)
        x = self.patch_embedding(x)  # (B, D, T', h', w')
        _, _, t, h, w = x.shape
        rope = self._rope((t, h, w, frame_offset // self.patch[0]), self.axis_split, x.device)
        x = rearrange(x, "b d t h w -> b t (h w) d")
        if self.grid is not None:
            x = x + self.grid  # the same (row, column) features in every frame
        return self._tokens(x.flatten(1, 2), sigma, rope, kind, context)

    def output(self, x: torch.Tensor, temb: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        """Hidden states (B, N, D) of ``frames`` latent frames -> velocity (B, T, C, h, w)."""
        pt, ph, pw = self.patch
        out = self.head(x, temb)
        return rearrange(out, "b (t h w) (pt ph pw c) -> b (t pt) c (h ph) (w pw)",
                         t=frames // pt, h=height // ph, w=width // pw, pt=pt, ph=ph, pw=pw)


class ActionExpert(Expert):
    """Action DiT: one token per step of the chunk, 1-D RoPE over the step index."""

    def __init__(self, cfg: ModelConfig):
        a = cfg.action
        super().__init__(cfg, a.width, a.ffn, a.freq_dim, out_dim=cfg.action_dim)
        self.action_in = nn.Linear(cfg.action_dim, a.width)
        self.head_dim = cfg.head_dim

    def tokens(self, actions: torch.Tensor, sigma: torch.Tensor, context: ContextKV) -> Tokens:
        """actions (B, S, A) at flow time sigma (B,) -> action tokens."""
        rope = self._rope((actions.shape[1],), (self.head_dim // 2,), actions.device)
        return self._tokens(self.action_in(actions), sigma, rope, ACTION, context)

    def output(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, S, D) -> velocity (B, S, A)."""
        return self.head(x, temb)
