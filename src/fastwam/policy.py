"""Policy: observations in raw units -> action chunks in raw units, and a receding-horizon controller.

The model works on tensors in model units; the policy owns everything between a robot and it:
image -> latents (codec), proprio and actions (normalization), instruction -> embedding (cached
per prompt), numpy <-> torch.

    policy = Policy.from_checkpoint("runs/x")
    chunk = policy.act({"image": uint8 (H, W, 3), "state": (P,), "instruction": "open the drawer"})  # (S, A)

``image`` is the current frame with all cameras side by side, as in training; batched
observations (leading batch axis, a list of instructions) give (B, S, A). A policy trained with
history (``model.context_frames`` K > 1) also needs ``"history"``: uint8 ([B,] K - 1, H, W, 3),
the past frames at t - r*(K-1), ..., t - r (r = ``data.frame_stride`` env steps), oldest first;
the controller below keeps them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fastwam.codecs import build_codec, frames_to_unit, unit_to_frames
from fastwam.config import Config
from fastwam.data.normalize import Normalizer
from fastwam.data.windows import ACTION_KEY, STATE_KEY
from fastwam.model import WAM
from fastwam.text import build_text_encoder


class Policy:
    def __init__(self, model: WAM, cfg: Config, normalizer: Normalizer, device: str | torch.device = "cpu",
                 steps: int | None = None, seed: int = 0, noise_scale: float = 1.0, mode: str | None = None,
                 action_shift: float | None = None):
        if mode is not None and mode not in cfg.model.variant.modes:
            raise ValueError(f"mode: this checkpoint (variant {cfg.model.variant.mask!r}) runs "
                             f"{' or '.join(cfg.model.variant.modes)}, got {mode!r}")
        if not (math.isfinite(noise_scale) and noise_scale >= 0):
            raise ValueError(f"noise_scale: expected a finite number >= 0, got {noise_scale}")
        if steps is not None and steps < 1:
            raise ValueError(f"steps: expected >= 1 denoising steps, got {steps}")
        if action_shift is not None:
            if not (math.isfinite(action_shift) and action_shift > 0):
                raise ValueError(f"action_shift: expected a finite number > 0, got {action_shift}")
            # A sampling choice: the action sigmas visited (flow.sampling_sigmas); the weights are unchanged.
            flow = dataclasses.replace(model.cfg.action_flow, shift=action_shift)
            model.cfg = dataclasses.replace(model.cfg, action_flow=flow)
            cfg = cfg.replace(model=model.cfg)
        self.model, self.cfg, self.normalizer = model.eval(), cfg, normalizer
        self.device = torch.device(device)
        self.codec = build_codec(cfg.data.codec, device=self.device)
        self.text_encoder = build_text_encoder(cfg.data.text, cfg.model.text_tokens, device=self.device)
        self.steps = steps
        self.mode = mode or cfg.model.variant.inference  # the inference procedure (dual models: either of two)
        # Scales the initial action noise of each chunk's flow sampling: 1 samples the learned
        # distribution, 0 integrates from its centre (deterministic), between = lower temperature.
        self.noise_scale = noise_scale
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._instruction_cache: dict[str, torch.Tensor] = {}

    @classmethod
    def from_checkpoint(cls, run: str | Path, device: str | torch.device = "cpu", **kwargs) -> "Policy":
        """Load a run directory (its newest checkpoint) or a checkpoint directory."""
        from fastwam.checkpoint import latest_checkpoint, load_model

        path = latest_checkpoint(run)
        model, cfg = load_model(path, device)
        return cls(model, cfg, Normalizer.load(path / "stats.json"), device, **kwargs)

    @property
    def chunk(self) -> int:
        return self.cfg.model.chunk

    @property
    def history_frames(self) -> int:
        """Past frames an observation carries besides the current one (K - 1)."""
        return self.cfg.model.context_frames - 1

    @property
    def frame_stride(self) -> int:
        """Env steps between consecutive history frames (r)."""
        return self.cfg.data.frame_stride

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode (re-seeds the sampling noise when ``seed`` is given)."""
        if seed is not None:
            self.generator.manual_seed(seed)

    @torch.no_grad()
    def act(self, observation: dict, previous: np.ndarray | None = None, frozen: int = 0,
            guidance: float = 10.0) -> np.ndarray:
        """{"image": uint8 ([B,] H, W, 3), "state": ([B,] P), "instruction": str | list[str]
        [, "history": uint8 ([B,] K - 1, H, W, 3)]} -> ([B,] S, A) raw units.

        Real-time chunking (``fastwam.model.rtc``): ``previous``, raw ([B,] n, A), are the actions
        the previous chunk planned for this chunk's first n steps, of which the first ``frozen``
        execute anyway while this one is computed; the sampler is guided toward them (weight cap
        ``guidance``) so that the chunks join without a jump.
        """
        context, state, text, batched = self._inputs(observation)
        m = self.cfg.model
        noise = torch.randn((context.shape[0], m.chunk, m.action_dim), device=self.device, generator=self.generator,
                            dtype=context.dtype) * self.noise_scale
        guide = None if previous is None else self._guide(previous, frozen, guidance, len(context), batched)
        actions = self.model.predict_actions(context, state, text, steps=self.steps, mode=self.mode, noise=noise,
                                             generator=self.generator, guide=guide)
        actions = self.normalizer.unnormalize(ACTION_KEY, actions.float().cpu()).numpy()
        return actions if batched else actions[0]

    def _guide(self, previous, frozen: int, guidance: float, batch: int, batched: bool):
        from fastwam.model.rtc import ChunkGuide, guidance_weights

        m = self.cfg.model
        if not (math.isfinite(guidance) and guidance > 0):
            raise ValueError(f"guidance: expected a finite number > 0 (the guidance weight's cap), got {guidance}")
        previous = np.array(previous)  # a copy: server arrays are read-only views of the message
        want = (batch, "n", m.action_dim) if batched else ("n", m.action_dim)
        if (previous.dtype.kind != "f" or previous.ndim != len(want) or previous.shape[-1] != m.action_dim
                or not 1 <= previous.shape[-2] <= m.chunk or not np.all(np.isfinite(previous))
                or (batched and previous.shape[0] != batch)):
            raise ValueError(f"previous: expected finite raw actions {want} with 1 <= n <= {m.chunk} (the chunk), "
                             f"got {previous.dtype} {previous.shape}")
        target = torch.from_numpy(previous if batched else previous[None]).float()
        target = self.normalizer.normalize(ACTION_KEY, target).to(self.device)
        return ChunkGuide(target, guidance_weights(target.shape[1], frozen).to(self.device), guidance)

    @torch.no_grad()
    def imagine(self, observation: dict) -> np.ndarray:
        """The model's imagined future frames, ``data.frame_stride`` env steps apart: uint8 ([B,] T, H, W, 3),
        T = model.future_frames x the codec's temporal compression (for variants trained with video)."""
        context, state, text, batched = self._inputs(observation)
        future = self.model.imagine(context, state, text, steps=self.steps, generator=self.generator)
        # Decoded after the current frame's latent, as encoded in training: a causal codec (wan22)
        # decodes its first latent frame as one pixel frame and every later one as `temporal` frames.
        clip = self.codec.decode(torch.cat([context[:, -1:], future], dim=1))[:, 1:]  # (B, temporal * Tf, 3, H, W)
        frames = unit_to_frames(clip).permute(0, 1, 3, 4, 2).cpu().numpy()  # (B, T, H, W, 3)
        return frames if batched else frames[0]

    def _inputs(self, observation: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """Validate one (or a batch of) raw observation(s) and convert to model inputs."""
        for key in ("image", "state", "instruction"):
            if key not in observation:
                raise KeyError(f"observation: missing key {key!r}; expected image, state, instruction")
        image, state = np.asarray(observation["image"]), np.asarray(observation["state"], dtype=np.float32)
        batched = image.ndim == 4
        d = self.cfg.data
        want = (d.image_size, d.image_size * len(d.cameras), 3)
        if image.dtype != np.uint8 or image.shape[-3:] != want or image.ndim not in (3, 4):
            raise ValueError(f"observation['image']: expected uint8 ([B,] {want[0]}, {want[1]}, 3) "
                             f"(cameras {list(d.cameras)} side by side), got {image.dtype} {image.shape}")
        images, states = (image, state) if batched else (image[None], state[None])
        if states.shape != (len(images), self.cfg.model.state_dim):
            raise ValueError(f"observation['state']: expected ({'B, ' if batched else ''}{self.cfg.model.state_dim},), "
                             f"got {state.shape}")
        prompts = observation["instruction"]
        prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(images):
            raise ValueError(f"observation['instruction']: expected {len(images)} instructions, got {len(prompts)}")
        frames = np.concatenate([self._history(observation, len(images), want, batched), images[:, None]], axis=1)
        pixels = frames_to_unit(torch.from_numpy(frames).permute(0, 1, 4, 2, 3).to(self.device))  # (B, K, 3, H, W)
        context = self.codec.encode(pixels)[:, : self.cfg.model.context_frames]
        state_t = self.normalizer.normalize(STATE_KEY, torch.from_numpy(states)).float().to(self.device)
        return context, state_t, self._embed(prompts), batched

    def _history(self, observation: dict, batch: int, frame: tuple[int, int, int], batched: bool) -> np.ndarray:
        """observation["history"] validated -> uint8 (B, K - 1, H, W, 3) (empty without history)."""
        k = self.history_frames
        if "history" not in observation:
            if k:
                raise KeyError(f"observation: missing key 'history'; this policy takes the {k} past frame(s) "
                               f"{self.frame_stride} env steps apart (model.context_frames {k + 1})")
            return np.empty((batch, 0, *frame), np.uint8)
        history = np.asarray(observation["history"])
        want = (batch, k, *frame) if batched else (k, *frame)
        if history.dtype != np.uint8 or history.shape != want:
            raise ValueError(f"observation['history']: expected uint8 {want} (the past frames, oldest first; "
                             f"model.context_frames {k + 1}), got {history.dtype} {history.shape}")
        return history if batched else history[None]

    def _embed(self, prompts: list[str]) -> torch.Tensor:
        """Instruction embeddings (B, L, E) on the policy's device.

        The text encoder already caches per prompt, on the CPU and unpadded; this keeps the padded
        copy on the device, so a control step neither pads nor transfers an embedding.
        """
        for prompt in dict.fromkeys(prompts):
            if prompt not in self._instruction_cache:
                self._instruction_cache[prompt] = self.text_encoder.encode([prompt])[0].to(self.device)
        return torch.stack([self._instruction_cache[p] for p in prompts])


class RecedingHorizonController:
    """Executes ``execute`` actions of each predicted chunk, then replans.

    ``observe`` is called only when the policy needs a frame, so a simulator renders only then:
    at replans and, for a policy with history, every ``policy.frame_stride`` steps (``execute``
    must be a multiple of it, so replans fall on history times). Before the episode has enough
    past frames, the oldest one repeats, as in training.

    Asynchronous execution (``delay`` d > 0) is what a robot does: it keeps executing while the
    next chunk is computed. A chunk is requested when d actions of the current one are left;
    they execute during the inference and are the new chunk's first d steps, which takes over
    at its step d (the episode's first chunk runs from its step 0). With ``guidance`` > 0 the new
    chunk is sampled by real-time chunking (``Policy.act(previous=...)``) toward what the current
    chunk planned for their overlap, the d executing ones frozen; 0 is the naive asynchronous
    baseline. ``boundary_jumps``: the L2 change of the action at each switch to a new chunk;
    ``jerk()``: the mean L2 norm of the executed actions' second difference.
    """

    def __init__(self, policy: Policy, execute: int | None = None, delay: int = 0, guidance: float = 0.0):
        self.policy = policy
        self.execute = policy.chunk // 2 if execute is None else execute
        if not 1 <= self.execute <= policy.chunk:
            raise ValueError(f"execute: expected 1..{policy.chunk} actions per chunk, got {self.execute}")
        if not 0 <= delay <= policy.chunk - self.execute:
            raise ValueError(f"delay: expected 0..{policy.chunk - self.execute} steps (chunk {policy.chunk} - execute "
                             f"{self.execute}: the current chunk must cover the inference), got {delay}")
        if not (math.isfinite(guidance) and guidance >= 0):
            raise ValueError(f"guidance: expected a finite number >= 0, got {guidance}")
        if guidance and self.execute >= policy.chunk:
            raise ValueError(f"guidance: real-time chunking guides the overlap of consecutive chunks; execute "
                             f"{self.execute} of {policy.chunk} actions leaves none (execute < chunk expected)")
        self.delay, self.guidance = delay, guidance
        history, stride = policy.history_frames, policy.frame_stride
        if history and self.execute % stride:
            raise ValueError(f"execute: {self.execute} actions per chunk is not a multiple of the policy's frame stride "
                             f"{stride}, so replans would miss its history frames")
        self._stride = stride if history else 0
        self._history: deque[np.ndarray] = deque(maxlen=history)
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self._queue: list[tuple[np.ndarray, bool]] = []  # (action, first of a new chunk)
        self._chunk: np.ndarray | None = None  # the chunk the queue's last actions come from
        self.chunks, self.chunk_seconds, self.boundary_jumps = 0, [], []
        self._executed: list[np.ndarray] = []
        self._history.clear()
        self._steps = 0
        self.last_observation: dict | None = None  # what the policy last acted on (history included)
        self.policy.reset(seed)

    @property
    def needs_observation(self) -> bool:
        return self._chunk is None or len(self._queue) == self.delay

    def act(self, observe: Callable[[], dict]) -> np.ndarray:
        """The next action; calls the policy only when a chunk is due, and ``observe()`` then and
        at history times."""
        on_history = bool(self._stride) and self._steps % self._stride == 0
        if self.needs_observation:
            observation = observe()
            if self._stride:
                past = list(self._history) or [observation["image"]]
                past = [past[0]] * (self._history.maxlen - len(past)) + past
                observation = {**observation, "history": np.stack(past)}
            first = self._chunk is None
            start = time.perf_counter()
            if first or not self.guidance:
                chunk = self.policy.act(observation)
            else:
                chunk = self.policy.act(observation, previous=self._chunk[self.execute:], frozen=self.delay,
                                        guidance=self.guidance)
            self.chunk_seconds.append(time.perf_counter() - start)
            begin = 0 if first else self.delay
            end = begin + self.execute + (self.delay if first else 0)
            self._queue += [(a, i == begin) for i, a in enumerate(chunk[begin:end], start=begin)]
            self._chunk = chunk
            self.chunks += 1
            self.last_observation = observation
        elif on_history:
            observation = observe()
        if on_history:
            self._history.append(observation["image"])
        self._steps += 1
        action, switch = self._queue.pop(0)
        if switch and self._executed:
            self.boundary_jumps.append(float(np.linalg.norm(action - self._executed[-1])))
        self._executed.append(action)
        return action

    def jerk(self) -> float | None:
        """Mean L2 norm of a_t - 2 a_(t-1) + a_(t-2) over the actions executed so far (None before 3)."""
        if len(self._executed) < 3:
            return None
        a = np.asarray(self._executed, dtype=np.float64)
        return float(np.linalg.norm(a[2:] - 2 * a[1:-1] + a[:-2], axis=-1).mean())
