"""The World Action Model: one class for every variant (the variant is data in the config).

Axis letters: B batch, Tc context latent frames, Tf future latent frames, C latent channels,
h/w latent grid, S action chunk steps, A action dim, P proprio dim, L instruction tokens,
E instruction embedding dim.

Training (``loss``): video tokens ``[context (t=0) | future (t_v)]`` (+ a clean future copy for IDM
and dual) and action tokens (t_a) run through the MoT under the variant's mask (dual: drawn per
sample between IDM's and Fast-WAM's); ``L = L_act + lambda * L_vid``.

Inference (``predict_actions``), by ``mode`` (default ``variant.inference``):
- ``action_only`` (Fast-WAM): prefill the clean context once into a K/V cache, then N action-only
  steps on the cache. No future tokens are built.
- ``joint``: prefill the context, then denoise future video and actions together (both experts).
- ``video_then_action`` (IDM): prefill the context, generate the future (video expert only),
  prefill the generated video as clean future, then N action-only steps.
A model runs only the modes its variant was trained for (``variant.modes``; dual: two). A
``ChunkGuide`` (real-time chunking, ``fastwam.model.rtc``) steers the action steps of the
action-only and IDM modes toward the previous chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastwam.checks import expect
from fastwam.config import ModelConfig
from fastwam.model import flow
from fastwam.model.experts import ActionExpert, ContextKV, Tokens, VideoExpert
from fastwam.model.masks import CONTEXT, FUTURE, FUTURE_CLEAN
from fastwam.model.mot import KVCache, run_layers
from fastwam.model.rtc import ChunkGuide, guided_velocity

MODES = ("action_only", "joint", "video_then_action")


@dataclass
class Batch:
    """A training batch in model units (normalized, encoded); ``validate`` checks it against a config."""

    context: torch.Tensor  # (B, Tc, C, h, w) clean latents of the current frame
    actions: torch.Tensor  # (B, S, A) normalized action chunk
    action_pad: torch.Tensor  # (B, S) bool, True past the episode end (excluded from L_act)
    state: torch.Tensor  # (B, P) normalized proprio
    text: torch.Tensor  # (B, L, E) instruction embeddings
    future: torch.Tensor | None = None  # (B, Tf, C, h, w) future latents (None without video co-training)
    future_pad: torch.Tensor | None = None  # (B, Tf) bool, True past the episode end (excluded from L_vid)

    def validate(self, cfg: ModelConfig) -> None:
        d = expect("context", self.context, ("B", cfg.context_frames, *cfg.latent_shape))
        expect("actions", self.actions, ("B", cfg.chunk, cfg.action_dim), d)
        expect("action_pad", self.action_pad, ("B", cfg.chunk), d, dtype="bool")
        expect("state", self.state, ("B", cfg.state_dim), d)
        expect("text", self.text, ("B", cfg.text_tokens, cfg.text_dim), d)
        if cfg.variant.has_future:
            if self.future is None or self.future_pad is None:
                raise ValueError("batch.future and batch.future_pad are required: the variant trains with video "
                                 f"(video_weight = {cfg.variant.video_weight})")
            expect("future", self.future, ("B", cfg.future_frames, *cfg.latent_shape), d)
            expect("future_pad", self.future_pad, ("B", cfg.future_frames), d, dtype="bool")

    def to(self, device, dtype: torch.dtype | None = None) -> "Batch":
        def move(t):
            if t is None:
                return None
            return t.to(device=device, dtype=dtype) if dtype is not None and t.is_floating_point() else t.to(device)
        return Batch(*(move(getattr(self, f)) for f in self.__dataclass_fields__))


@dataclass
class LossOutput:
    total: torch.Tensor  # L_act + lambda * L_vid
    action: torch.Tensor  # L_act
    video: torch.Tensor  # L_vid (0 without video co-training)


@dataclass
class Prefix:
    """What sampling reuses across denoising steps: the K/V cache and both experts' contexts."""

    cache: KVCache
    video_context: ContextKV
    action_context: ContextKV
    batch: int


class WAM(nn.Module):
    """Video expert + action expert sharing attention; ``cfg.variant`` selects mask, inference, lambda."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.video = VideoExpert(cfg)
        self.action = ActionExpert(cfg)
        self.activation_checkpointing = False  # training memory: recompute each layer in the backward pass
        self.initialize_weights()

    # -- structure ---------------------------------------------------------------------------

    def initialize_weights(self) -> None:
        """All initialization in one place: Xavier linears, adaLN-zero gates, zero output heads."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv3d)):
                nn.init.xavier_uniform_(module.weight.flatten(1) if module.weight.dim() > 2 else module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for expert in (self.video, self.action):
            nn.init.normal_(expert.time.time_embedding[0].weight, std=0.02)
            nn.init.normal_(expert.time.time_embedding[2].weight, std=0.02)
            nn.init.zeros_(expert.time.time_projection[1].weight)
            nn.init.zeros_(expert.head.head.weight)
            for block in expert.blocks:
                nn.init.zeros_(block.modulation)

    def forward(self, video: Tokens | None, action: Tokens | None, cache: KVCache | None = None,
                store: bool = False, idm_samples: torch.Tensor | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Both experts through all layers under the variant's mask -> final hidden states.
        ``idm_samples`` (B,) bool: dual training, the samples whose actions read the clean future."""
        return run_layers(self.video.blocks, self.action.blocks, video, action, self.cfg.variant.mask, cache, store,
                          idm_samples, checkpoint=self.activation_checkpointing)

    def contexts(self, text: torch.Tensor, state: torch.Tensor) -> tuple[ContextKV, ContextKV]:
        return self.video.context_kv(text, state), self.action.context_kv(text, state)

    # -- training ----------------------------------------------------------------------------

    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> LossOutput:
        """Flow-matching loss on the action chunk and (with video co-training) the future latents."""
        cfg, variant = self.cfg, self.cfg.variant
        batch.validate(cfg)
        B, device = batch.actions.shape[0], batch.actions.device
        video_ctx, action_ctx = self.contexts(batch.text, batch.state)

        sigma_a = flow.sample_sigma(B, cfg.action_flow.shift, device, generator)
        noise_a = torch.randn(batch.actions.shape, device=device, generator=generator, dtype=batch.actions.dtype)
        action = self.action.tokens(flow.add_noise(batch.actions, noise_a, sigma_a), sigma_a, action_ctx)

        segments = [self.video.tokens(batch.context, torch.zeros(B, device=device), CONTEXT, 0, video_ctx)]
        if variant.has_future:
            sigma_v = flow.sample_sigma(B, cfg.video_flow.shift, device, generator)
            noise_v = torch.randn(batch.future.shape, device=device, generator=generator, dtype=batch.future.dtype)
            noisy_future = flow.add_noise(batch.future, noise_v, sigma_v)
            segments.append(self.video.tokens(noisy_future, sigma_v, FUTURE, cfg.context_frames, video_ctx))
            if variant.reads_clean_future:
                segments.append(self._clean_future_tokens(batch.future, video_ctx, generator))
        video = Tokens.cat(segments)

        idm_samples = None
        if variant.mask == "dual":
            idm_samples = torch.rand(B, device=device, generator=generator) < variant.idm_fraction
        video_x, action_x = self(video, action, idm_samples=idm_samples)
        pred_a = self.action.output(action_x, action.temb)
        loss_a = masked_mse(pred_a, flow.velocity_target(batch.actions, noise_a), ~batch.action_pad)
        if not variant.has_future:
            zero = loss_a.new_zeros(())
            return LossOutput(loss_a, loss_a, zero)

        future, start = segments[1], segments[0].length
        pred_v = self._video_velocity(video_x[:, start:start + future.length], future.temb, noisy_future, sigma_v)
        loss_v = masked_mse(pred_v, flow.velocity_target(batch.future, noise_v), ~batch.future_pad)
        return LossOutput(loss_a + variant.video_weight * loss_v, loss_a, loss_v)

    def distillation_loss(self, batch: Batch, teacher: "WAM", generator: torch.Generator | None = None) -> LossOutput:
        """Few-step action sampler: this model's action expert (the student, sampling in
        ``action_flow.steps``) learns the straight path from a noise to ``teacher``'s sample from
        that noise (reflow distillation), at the sigmas its sampler visits (``flow.student_sigmas``).

        The video expert is the teacher's and frozen, so the teacher's prefix (context K/V, and for
        IDM the generated future) is the student's too: one prefill per batch, action-expert
        gradients only. Targets are whole chunks, padded steps included (the teacher's sample is
        defined everywhere)."""
        cfg, mode = self.cfg, self.cfg.variant.inference
        if cfg.variant.mask not in ("fastwam", "idm"):
            raise ValueError(f"distillation: variant {cfg.variant.mask!r} has no one action sampler of its own to distil "
                             "(joint denoises actions with the video; dual has two modes)")
        batch.validate(cfg)
        B, device = batch.actions.shape[0], batch.actions.device
        noise = torch.randn(batch.actions.shape, device=device, generator=generator, dtype=batch.actions.dtype)
        with torch.no_grad():
            prefix = teacher.prefill(batch.context, batch.state, batch.text)
            if mode == "video_then_action":
                video_noise = torch.randn(self._future_shape(B), device=device, generator=generator, dtype=noise.dtype)
                teacher.extend_prefix(prefix, teacher.sample_future(prefix, video_noise, teacher.cfg.video_flow.steps))
            target = teacher.sample_actions(prefix, noise, teacher.cfg.action_flow.steps)  # (B, S, A)
        grid = torch.tensor(flow.student_sigmas(cfg.action_flow.steps, cfg.action_flow.shift), device=device)
        sigma = grid[torch.randint(len(grid), (B,), device=device, generator=generator)]
        student = Prefix(prefix.cache, prefix.video_context, self.action.context_kv(batch.text, batch.state), B)
        velocity = self.action_velocity(flow.add_noise(target, noise, sigma), sigma, student)
        loss = (velocity.float() - flow.velocity_target(target, noise).float()).pow(2).mean()
        return LossOutput(loss, loss, loss.new_zeros(()))

    def _clean_future_tokens(self, future: torch.Tensor, video_ctx: ContextKV, generator) -> Tokens:
        """IDM: the copy of the future that actions read, clean or lightly noised (config value)."""
        B, sigma = future.shape[0], self.cfg.variant.idm_future_noise
        sigmas = torch.full((B,), sigma, device=future.device)
        if sigma > 0:
            noise = torch.randn(future.shape, device=future.device, generator=generator, dtype=future.dtype)
            future = flow.add_noise(future, noise, sigmas)
        return self.video.tokens(future, sigmas, FUTURE_CLEAN, self.cfg.context_frames, video_ctx)

    def _video_velocity(self, x: torch.Tensor, temb: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Hidden states of the future tokens -> velocity (B, Tf, C, h, w) of the noisy future at sigma (B,)."""
        cfg = self.cfg
        out = self.video.output(x, temb, cfg.future_frames, cfg.latent_height, cfg.latent_width)
        if cfg.video.prediction == "velocity":
            return out
        return flow.data_to_velocity(noisy, out, sigma)

    # -- inference ---------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, context: torch.Tensor, state: torch.Tensor, text: torch.Tensor) -> Prefix:
        """Run the video expert once on the clean context (t = 0) and cache every layer's K/V."""
        self._validate_observation(context, state, text)
        B = context.shape[0]
        video_ctx, action_ctx = self.contexts(text, state)
        tokens = self.video.tokens(context, torch.zeros(B, device=context.device), CONTEXT, 0, video_ctx)
        cache = KVCache()
        self(tokens, None, cache=cache, store=True)
        return Prefix(cache, video_ctx, action_ctx, B)

    @torch.no_grad()
    def sample_actions(self, prefix: Prefix, noise: torch.Tensor, steps: int,
                       guide: ChunkGuide | None = None) -> torch.Tensor:
        """N action-only Euler steps attending to the cached prefix. noise (B, S, A) -> actions (B, S, A);
        with ``guide``, each step's velocity is steered toward ``guide.target`` (real-time chunking)."""
        expect("noise", noise, (prefix.batch, self.cfg.chunk, self.cfg.action_dim))
        if guide is None:
            return self._action_loop(noise, steps, prefix)
        expect("guide.target", guide.target, (prefix.batch, "n", self.cfg.action_dim))
        if guide.target.shape[1] > self.cfg.chunk:
            raise ValueError(f"guide.target: expected at most {self.cfg.chunk} steps (the chunk), "
                             f"got {guide.target.shape[1]}")
        x, sigmas = noise, flow.sampling_sigmas(steps, self.cfg.action_flow.shift)
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            def velocity(z, sigma=sigma):
                return self.action_velocity(z, z.new_full((prefix.batch,), sigma), prefix)
            x = flow.euler_step(x, guided_velocity(velocity, x, sigma, guide), sigma, sigma_next)
        return x

    @torch.no_grad()
    def sample_future(self, prefix: Prefix, noise: torch.Tensor, steps: int) -> torch.Tensor:
        """N video-only Euler steps on the future, context from the cache. noise (B, Tf, C, h, w)."""
        expect("noise", noise, self._future_shape(prefix.batch))
        return self._future_loop(noise, steps, prefix)

    @torch.no_grad()
    def sample_joint(self, prefix: Prefix, action_noise: torch.Tensor, video_noise: torch.Tensor,
                     steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Denoise future video and actions together, both experts every step -> (actions, future)."""
        expect("action_noise", action_noise, (prefix.batch, self.cfg.chunk, self.cfg.action_dim))
        expect("video_noise", video_noise, self._future_shape(prefix.batch))
        return self._joint_loop(action_noise, video_noise, steps, prefix)

    # The sampling loops (what ``compile_inference`` compiles, steps unrolled) and the one denoiser
    # call per mode that each repeats.

    def _action_loop(self, x: torch.Tensor, steps: int, prefix: Prefix) -> torch.Tensor:
        return _euler(self.action_velocity, x, flow.sampling_sigmas(steps, self.cfg.action_flow.shift), prefix)

    def _future_loop(self, x: torch.Tensor, steps: int, prefix: Prefix) -> torch.Tensor:
        return _euler(self.future_velocity, x, flow.sampling_sigmas(steps, self.cfg.video_flow.shift), prefix)

    def _joint_loop(self, xa: torch.Tensor, xv: torch.Tensor, steps: int, prefix: Prefix) -> tuple[torch.Tensor, torch.Tensor]:
        sig_a = flow.sampling_sigmas(steps, self.cfg.action_flow.shift)
        sig_v = flow.sampling_sigmas(steps, self.cfg.video_flow.shift)
        for i in range(steps):
            va, vv = self.joint_velocity(xa, xa.new_full((prefix.batch,), sig_a[i]),
                                         xv, xv.new_full((prefix.batch,), sig_v[i]), prefix)
            xa = flow.euler_step(xa, va, sig_a[i], sig_a[i + 1])
            xv = flow.euler_step(xv, vv, sig_v[i], sig_v[i + 1])
        return xa, xv

    def action_velocity(self, x: torch.Tensor, sigma: torch.Tensor, prefix: Prefix) -> torch.Tensor:
        """Actions only, on the cached prefix: x (B, S, A) at sigma (B,) -> velocity (B, S, A)."""
        tokens = self.action.tokens(x, sigma, prefix.action_context)
        _, hidden = self(None, tokens, cache=prefix.cache)
        return self.action.output(hidden, tokens.temb)

    def future_velocity(self, x: torch.Tensor, sigma: torch.Tensor, prefix: Prefix) -> torch.Tensor:
        """Future video only, on the cached prefix: x (B, Tf, C, h, w) at sigma (B,) -> velocity, same shape."""
        tokens = self._future_tokens(x, sigma, prefix)
        hidden, _ = self(tokens, None, cache=prefix.cache)
        return self._video_velocity(hidden, tokens.temb, x, sigma)

    def joint_velocity(self, xa: torch.Tensor, sigma_a: torch.Tensor, xv: torch.Tensor, sigma_v: torch.Tensor,
                       prefix: Prefix) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions and future video together (both experts): -> velocities of xa (B, S, A) and xv (B, Tf, C, h, w)."""
        video = self._future_tokens(xv, sigma_v, prefix)
        action = self.action.tokens(xa, sigma_a, prefix.action_context)
        hidden_v, hidden_a = self(video, action, cache=prefix.cache)
        return self.action.output(hidden_a, action.temb), self._video_velocity(hidden_v, video.temb, xv, sigma_v)

    def compile_inference(self, **options) -> None:
        """``torch.compile`` (with ``options``) what inference repeats: the layer pass (prefill) and each
        mode's whole sampling loop, its steps unrolled into one graph (one per step count), so that a
        chunk pays Python and guard overhead once, not once per step, and the Euler updates fuse."""
        if "_action_loop" in vars(self):  # the compiled loops are instance attributes; a second call would wrap them
            raise RuntimeError("compile_inference: this model is already compiled")
        self.compile(**options)
        for name in ("_action_loop", "_future_loop", "_joint_loop"):
            setattr(self, name, torch.compile(getattr(self, name), **options))

    def _future_tokens(self, x: torch.Tensor, sigma: torch.Tensor, prefix: Prefix) -> Tokens:
        return self.video.tokens(x, sigma, FUTURE, self.cfg.context_frames, prefix.video_context)

    @torch.no_grad()
    def extend_prefix(self, prefix: Prefix, future: torch.Tensor) -> None:
        """IDM: append the generated future, as the future tokens actions read, to the cache; labelled
        with the noise level the actions were trained to read it at (``variant.idm_future_noise``)."""
        expect("future", future, self._future_shape(prefix.batch))
        sigmas = torch.full((prefix.batch,), self.cfg.variant.idm_future_noise, device=future.device)
        tokens = self.video.tokens(future, sigmas, FUTURE_CLEAN, self.cfg.context_frames, prefix.video_context)
        self(tokens, None, cache=prefix.cache, store=True)

    @torch.no_grad()
    def predict_actions(self, context: torch.Tensor, state: torch.Tensor, text: torch.Tensor, *,
                        steps: int | None = None, mode: str | None = None, noise: torch.Tensor | None = None,
                        generator: torch.Generator | None = None, guide: ChunkGuide | None = None,
                        future: torch.Tensor | None = None) -> torch.Tensor:
        """Current-frame latents (B, Tc, C, h, w), proprio (B, P), instruction (B, L, E) -> actions (B, S, A).

        ``steps`` counts the action steps (default ``action_flow.steps``, which a distilled student
        sets to its own); joint inference denoises the video in as many, IDM generates it in
        ``video_flow.steps``. ``mode`` defaults to the variant's inference procedure; ``noise`` (B, S, A) fixes the
        initial action noise (else drawn from ``generator``); ``guide`` continues a previous chunk
        (real-time chunking; not for joint inference, whose actions are denoised with the video).
        ``future`` (B, Tf, C, h, w), IDM mode only: act on these future latents instead of imagined
        ones (an oracle: the future that really followed, to measure what imagining it costs).
        """
        cfg = self.cfg
        mode = cfg.variant.inference if mode is None else mode
        action_steps = cfg.action_flow.steps if steps is None else steps
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if mode != "action_only" and not cfg.variant.has_future:
            raise ValueError(f"mode {mode!r} generates video, but this model was trained without video (video_weight = 0)")
        if mode not in cfg.variant.modes:
            raise ValueError(f"mode {mode!r}: this model (variant.mask {cfg.variant.mask!r}) was trained for "
                             f"{' and '.join(map(repr, cfg.variant.modes))} only")
        if guide is not None and mode == "joint":
            raise ValueError("guide: real-time chunking steers the action-only steps; joint inference has none")
        if future is not None and mode != "video_then_action":
            raise ValueError(f"future: only IDM inference (mode 'video_then_action') reads a future; mode is {mode!r}")
        B, device, dtype = context.shape[0], context.device, context.dtype
        if noise is None:
            noise = torch.randn((B, cfg.chunk, cfg.action_dim), device=device, generator=generator, dtype=dtype)
        prefix = self.prefill(context, state, text)
        if mode == "action_only":
            return self.sample_actions(prefix, noise, action_steps, guide)
        if mode == "joint":
            video_noise = torch.randn(self._future_shape(B), device=device, generator=generator, dtype=dtype)
            return self.sample_joint(prefix, noise, video_noise, action_steps)[0]
        if future is None:  # IDM: imagine the future the actions read (unless it is given)
            video_noise = torch.randn(self._future_shape(B), device=device, generator=generator, dtype=dtype)
            future = self.sample_future(prefix, video_noise, cfg.video_flow.steps)
        self.extend_prefix(prefix, future)
        return self.sample_actions(prefix, noise, action_steps, guide)

    @torch.no_grad()
    def imagine(self, context: torch.Tensor, state: torch.Tensor, text: torch.Tensor, *, steps: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Generate the future latents (B, Tf, C, h, w) from the current frame (video expert only).

        Exact for every variant: future tokens never attend to action tokens.
        """
        if not self.cfg.variant.has_future:
            raise ValueError("imagine: this model was trained without video (video_weight = 0); it cannot generate frames")
        steps = self.cfg.video_flow.steps if steps is None else steps
        B = context.shape[0]
        prefix = self.prefill(context, state, text)
        noise = torch.randn(self._future_shape(B), device=context.device, generator=generator, dtype=context.dtype)
        return self.sample_future(prefix, noise, steps)

    def _future_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.cfg.future_frames, *self.cfg.latent_shape)

    def _validate_observation(self, context, state, text) -> dict[str, int]:
        cfg = self.cfg
        d = expect("context", context, ("B", cfg.context_frames, *cfg.latent_shape))
        expect("state", state, ("B", cfg.state_dim), d)
        expect("text", text, ("B", cfg.text_tokens, cfg.text_dim), d)
        return d


def _euler(velocity, x: torch.Tensor, sigmas: list[float], prefix: Prefix) -> torch.Tensor:
    """Integrate x from noise (sigma = 1) to data (sigma = 0) along ``sigmas`` with Euler steps of
    ``velocity(x, sigma (B,), prefix)``."""
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x = flow.euler_step(x, velocity(x, x.new_full((prefix.batch,), sigma), prefix), sigma, sigma_next)
    return x


def masked_mse(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared error over valid positions only. pred/target (B, T, ...), valid (B, T) bool."""
    per_step = (pred.float() - target.float()).pow(2).flatten(2).mean(-1)  # (B, T)
    weights = valid.float()
    return (per_step * weights).sum() / weights.sum().clamp(min=1.0)
