"""Policy: observations in raw units -> action chunks in raw units, and a receding-horizon controller.

The model works on tensors in model units; the policy owns everything between a robot and it:
image -> latents (codec), proprio and actions (normalization), instruction -> embedding (cached
per prompt), numpy <-> torch.

    policy = Policy.from_checkpoint("runs/x")
    chunk = policy.act({"image": uint8 (H, W, 3), "state": (P,), "instruction": "open the drawer"})  # (S, A)

``image`` is the current frame with all cameras side by side, as in training; batched
observations (leading batch axis, a list of instructions) give (B, S, A).

Every input is validated here, once, for the Python API and every transport alike
(``ObservationError`` names the field, expected against got): uint8 frames of the checkpoint's
size; finite state values within the training range widened ``INPUT_LIMIT``-fold about its centre
(what lies beyond is not a state the model has seen, and 1e30 would turn the chunk into NaN);
instructions that are non-empty strings of at most ``MAX_INSTRUCTION`` characters; real-time
chunking's previous actions held to the same range as the state. A chunk that still comes out
non-finite raises: the weights or the normalization stats are at fault, not the input. A policy trained with
history (``model.context_frames`` K > 1) also needs ``"history"``: uint8 ([B,] K - 1, H, W, 3),
the past frames at t - r*(K-1), ..., t - r (r = ``data.frame_stride`` env steps), oldest first;
the controller below keeps them.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import numbers
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
from fastwam.model.rtc import ChunkGuide, guidance_weights
from fastwam.text import build_text_encoder

INPUT_LIMIT = 10.0  # |normalized state or action| above this (the training range widened 10-fold) is refused
MAX_INSTRUCTION = 1000  # characters
MAX_NOISE_SCALE = 10.0  # initial-noise scale: 1 samples the learned distribution; far above it only diverges
INSTRUCTION_CACHE = 1024  # distinct instructions whose embeddings stay on the device (least recently used go)
ARGUMENTS = ("observation", "previous", "frozen", "guidance")  # act()'s keyword inputs, named as themselves in errors


class ObservationError(ValueError):
    """An input the policy refuses. ``field``: an observation key ("image", "state", "instruction",
    "history") or an argument of ``act`` ("previous", "frozen"); ``where``: the index inside it
    ("[2]", or ""); ``detail``: expected against got. Transports rename the field to their own key."""

    def __init__(self, field: str, detail: str, where: str = ""):
        label = field if field in ARGUMENTS else f"observation[{field!r}]"
        super().__init__(f"{label}{where}: {detail}")
        self.field, self.where, self.detail = field, where, detail


class Policy:
    def __init__(self, model: WAM, cfg: Config, normalizer: Normalizer, device: str | torch.device = "cpu",
                 steps: int | None = None, seed: int = 0, noise_scale: float = 1.0, mode: str | None = None,
                 action_shift: float | None = None):
        if mode is not None and mode not in cfg.model.variant.modes:
            raise ValueError(f"mode: this checkpoint (variant {cfg.model.variant.mask!r}) runs "
                             f"{' or '.join(cfg.model.variant.modes)}, got {mode!r}")
        if not (isinstance(noise_scale, numbers.Real) and 0 <= noise_scale <= MAX_NOISE_SCALE):
            raise ValueError(f"noise_scale: expected a number in 0..{MAX_NOISE_SCALE:g}, got {noise_scale!r}")
        _check_seed(seed)
        if steps is not None and not (_is_integer(steps) and steps >= 1):
            raise ValueError(f"steps: expected an integer >= 1 (denoising steps), got {steps!r}")
        if action_shift is not None:
            if not (isinstance(action_shift, numbers.Real) and math.isfinite(action_shift) and action_shift > 0):
                raise ValueError(f"action_shift: expected a finite number > 0, got {action_shift!r}")
            # A sampling choice: the action sigmas visited (flow.sampling_sigmas); the weights are unchanged.
            # A shallow copy shares the weights, so the caller's model keeps its own schedule.
            model = copy.copy(model)
            model.cfg = dataclasses.replace(model.cfg, action_flow=dataclasses.replace(model.cfg.action_flow,
                                                                                        shift=action_shift))
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
        # the padded embedding on the device, per instruction; bounded, so endless distinct prompts cannot grow it
        self._embedding = functools.lru_cache(maxsize=INSTRUCTION_CACHE)(self._embed_one)

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
            self.generator.manual_seed(_check_seed(seed))

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
        guide = None if previous is None else self._guide(previous, frozen, guidance, len(context), batched)
        m = self.cfg.model
        noise = torch.randn((context.shape[0], m.chunk, m.action_dim), device=self.device, generator=self.generator,
                            dtype=context.dtype) * self.noise_scale
        actions = self.model.predict_actions(context, state, text, steps=self.steps, mode=self.mode, noise=noise,
                                             generator=self.generator, guide=guide)
        actions = self.normalizer.unnormalize(ACTION_KEY, actions.float().cpu()).numpy()
        if not np.all(np.isfinite(actions)):  # the inputs were finite and in range: the checkpoint is at fault
            raise RuntimeError(f"the policy produced non-finite actions ({int(np.sum(~np.isfinite(actions)))} of "
                               f"{actions.size}) from valid inputs: the checkpoint's weights or normalization stats "
                               "are damaged")
        return actions if batched else actions[0]

    def _guide(self, previous, frozen, guidance: float, batch: int, batched: bool) -> ChunkGuide:
        m = self.cfg.model
        if not (isinstance(guidance, numbers.Real) and math.isfinite(guidance) and guidance > 0):
            raise ValueError(f"guidance: expected a finite number > 0 (the guidance weight's cap), got {guidance!r}")
        want = f"({batch}, n, {m.action_dim})" if batched else f"(n, {m.action_dim})"
        previous = _numbers("previous", previous, f"finite raw actions {want} with 1 <= n <= {m.chunk} (the chunk)")
        if (previous.ndim != (3 if batched else 2) or previous.shape[-1] != m.action_dim
                or not 1 <= previous.shape[-2] <= m.chunk or (batched and previous.shape[0] != batch)):
            raise ObservationError("previous", f"expected finite raw actions {want} with 1 <= n <= {m.chunk} "
                                               f"(the chunk), got {describe_input(previous)}")
        target = self._in_range("previous", ACTION_KEY, previous if batched else previous[None], batched)
        n = previous.shape[-2]
        if not _is_integer(frozen) or not 0 <= frozen <= n:
            raise ObservationError("frozen", f"expected an integer in 0..{n} (the previous actions given), "
                                             f"got {frozen!r}")
        target = torch.from_numpy(target).float().to(self.device)
        return ChunkGuide(target, guidance_weights(n, int(frozen)).to(self.device), guidance)

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
        if not isinstance(observation, dict):
            raise ObservationError("observation", f"expected a dict with image, state, instruction, got "
                                                  f"{describe_input(observation)}")
        for key in ("image", "state", "instruction"):
            if key not in observation:
                raise KeyError(f"observation: missing key {key!r}; expected image, state, instruction")
        image = observation["image"]
        batched = isinstance(image, np.ndarray) and image.ndim == 4
        d = self.cfg.data
        want = (d.image_size, d.image_size * len(d.cameras), 3)
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape[-3:] != want or image.ndim not in (3, 4):
            raise ObservationError("image", f"expected uint8 ([B,] {want[0]}, {want[1]}, 3) (cameras {list(d.cameras)} "
                                            f"side by side), got {describe_input(image)}")
        images = image if batched else image[None]
        if not len(images):
            raise ObservationError("image", f"expected at least one image, got {describe_input(image)}")
        states = self._state(observation["state"], len(images), batched)
        prompts = self._instructions(observation["instruction"], len(images), batched)
        frames = np.concatenate([self._history(observation, len(images), want, batched), images[:, None]], axis=1)
        pixels = frames_to_unit(torch.from_numpy(frames).permute(0, 1, 4, 2, 3).to(self.device))  # (B, K, 3, H, W)
        context = self.codec.encode(pixels)[:, : self.cfg.model.context_frames]
        state_t = torch.from_numpy(states).float().to(self.device)
        return context, state_t, torch.stack([self._embedding(p) for p in prompts]), batched

    def _state(self, raw, batch: int, batched: bool) -> np.ndarray:
        """observation["state"] -> normalized float64 (B, P), finite and within the widened training range."""
        dim = self.cfg.model.state_dim
        want = f"({batch}, {dim}) numbers" if batched else f"{dim} numbers"
        state = _numbers("state", raw, want)
        if state.shape != ((batch, dim) if batched else (dim,)):
            raise ObservationError("state", f"expected {want}, got {describe_input(state)}")
        return self._in_range("state", STATE_KEY, state if batched else state[None], batched)

    def _in_range(self, field: str, key: str, raw: np.ndarray, batched: bool) -> np.ndarray:
        """raw (B, ..., D) -> normalized, refusing non-finite values and values beyond INPUT_LIMIT
        (an unbatched input got its B = 1 axis here: errors index the input as given)."""
        where = lambda i: "[" + ", ".join(str(int(n)) for n in (i if batched else i[1:])) + "]"  # noqa: E731
        bad = np.argwhere(~np.isfinite(raw))
        if bad.size:
            i = tuple(bad[0])
            raise ObservationError(field, f"expected a finite number, got {raw[i]}", where(i))
        normalized = self.normalizer.normalize(key, raw.astype(np.float64))
        out = np.argwhere(np.abs(normalized) > INPUT_LIMIT)
        if out.size:
            i = tuple(out[0])
            edges = self.normalizer.unnormalize(key, np.array([[-INPUT_LIMIT], [INPUT_LIMIT]]) * np.ones(raw.shape[-1]))
            lo, hi = sorted(edges[:, i[-1]])
            raise ObservationError(field, f"expected a value in [{lo:.4g}, {hi:.4g}] (the training range widened "
                                          f"{INPUT_LIMIT:g}-fold), got {raw[i]:.4g}", where(i))
        return normalized

    def _instructions(self, raw, batch: int, batched: bool) -> list[str]:
        """observation["instruction"] -> one valid instruction per observation."""
        expected = f"the instruction, a non-empty string of at most {MAX_INSTRUCTION} characters"
        if isinstance(raw, str):
            prompts, where = [raw] * batch, lambda i: ""  # noqa: E731
        elif batched and isinstance(raw, (list, tuple)):
            prompts, where = list(raw), lambda i: f"[{i}]"  # noqa: E731
            if len(prompts) != batch:
                raise ObservationError("instruction", f"expected {batch} instructions (one per image), got {len(prompts)}")
        else:
            alternative = " (or a list of them, one per image)" if batched else ""
            raise ObservationError("instruction", f"expected {expected}{alternative}, got {describe_input(raw)}")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_INSTRUCTION:
                raise ObservationError("instruction", f"expected {expected}, got {describe_input(prompt)}", where(i))
        return prompts

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

    def _embed_one(self, prompt: str) -> torch.Tensor:
        """An instruction's padded embedding (L, E) on the policy's device (cached by ``_embedding``,
        so a control step neither pads nor transfers it)."""
        return self.text_encoder.encode([prompt])[0].to(self.device)


def _numbers(field: str, raw, expected: str) -> np.ndarray:
    """An array of real numbers from ``raw`` (array, nested list or number), else ObservationError
    naming the first entry that is not a number."""
    if not isinstance(raw, (np.ndarray, list, tuple, numbers.Real)) or isinstance(raw, (bool, np.bool_)):
        raise ObservationError(field, f"expected {expected}, got {describe_input(raw)}")
    bad = _first_non_number(raw)
    if bad is not None:
        where, value = bad
        value = value.item() if isinstance(value, np.generic) else value
        raise ObservationError(field, f"expected a number, got {value!r:.40}", "[" + ", ".join(map(str, where)) + "]")
    try:
        array = np.asarray(raw)
    except ValueError:  # ragged nesting
        raise ObservationError(field, f"expected {expected}, got {describe_input(raw)} of ragged nesting") from None
    if array.dtype.kind not in "fiu":  # complex, or objects nested deeper than the walk went
        raise ObservationError(field, f"expected {expected}, got {describe_input(array)}")
    return array


def _first_non_number(value, where: tuple = ()) -> tuple[tuple, object] | None:
    """(index, entry) of the first entry of nested lists or an array that is not a real number."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "fiu":
            return None
        if value.dtype.kind == "b" or value.ndim == 0:
            return (where + (0,) * value.ndim, value.flat[0]) if value.size else None
        value = list(value)
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _first_non_number(item, where + (i,))
            if found is not None:
                return found
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return None
    return where, value


def _check_seed(seed) -> int:
    if not (_is_integer(seed) and 0 <= seed < 2**63):
        raise ValueError(f"seed: expected an integer in 0..2**63 - 1, got {seed!r}")
    return int(seed)


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def describe_input(value) -> str:
    """A short description of an input, for errors."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array {value.shape}"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} items"
    if isinstance(value, np.generic):
        return f"a numpy {value.dtype} scalar"
    return type(value).__name__


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
        if not (_is_integer(self.execute) and 1 <= self.execute <= policy.chunk):
            raise ValueError(f"execute: expected an integer in 1..{policy.chunk} (actions per chunk), got {self.execute!r}")
        if not (_is_integer(delay) and 0 <= delay <= policy.chunk - self.execute):
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
