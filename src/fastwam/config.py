"""One typed config tree for everything fastwam builds; named presets live in YAML.

A preset file (``fastwam/configs/<name>.yaml``) overrides the dataclass defaults field by field;
presets never include each other. Every dataclass is frozen and validates itself in
``__post_init__``, so a config that exists is a config that can build a model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

PRESET_DIR = Path(__file__).parent / "configs"

MaskRule = Literal["fastwam", "joint", "idm", "dual"]
InferenceMode = Literal["action_only", "joint", "video_then_action"]
STRATEGIES = ("ddp", "zero2", "fsdp")  # train.strategy: how several training processes split the model
# mask rule -> the inference modes a model trained under it supports, its default first
TRAINED_MODES = {"fastwam": ("action_only",), "joint": ("joint",), "idm": ("video_then_action",),
                 "dual": ("action_only", "video_then_action")}
# mask rules whose training builds the clean future copy that IDM-mode actions read
READS_FUTURE_COPY = tuple(rule for rule, modes in TRAINED_MODES.items() if "video_then_action" in modes)


@dataclass(frozen=True)
class FlowConfig:
    """Flow-matching schedule of one target (video or action); see ``fastwam.model.flow``."""

    shift: float = 5.0  # timestep shift s in sigma(u) = s*u / (1 + (s-1)*u); 1 = no shift
    steps: int = 10  # Euler steps at inference

    def __post_init__(self):
        _check(math.isfinite(self.shift) and self.shift > 0, f"flow.shift must be a finite number > 0, got {self.shift}")
        _check(isinstance(self.steps, int) and self.steps >= 1, f"flow.steps must be an integer >= 1, got {self.steps!r}")


@dataclass(frozen=True)
class VariantConfig:
    """Which WAM variant: a mask rule, an inference procedure and the video loss weight.

    fastwam: actions see only the clean context; inference = one video prefill + action steps.
    joint:   actions also see the noisy future; inference denoises video and actions together.
    idm:     actions see a clean copy of the future; inference generates the future, then acts.
    dual:    one model for both Fast-WAM and IDM inference: in training each sample's actions see
             the clean future copy (IDM's rule) with probability ``idm_fraction``, else only the
             context (Fast-WAM's); ``inference`` is the default mode, the other one is chosen per call.
    ``video_weight = 0`` (fastwam only) removes the future tokens altogether.
    """

    mask: MaskRule = "fastwam"
    inference: InferenceMode = "action_only"
    video_weight: float = 1.0  # lambda in L = L_act + lambda * L_vid
    idm_future_noise: float = 0.0  # IDM and dual training: sigma of the noise on the clean future copy
    idm_fraction: float = 0.5  # dual training: the share of samples whose actions read the clean future

    def __post_init__(self):
        _check(self.mask in TRAINED_MODES, f"variant.mask must be {'|'.join(TRAINED_MODES)}, got {self.mask!r}")
        modes = TRAINED_MODES[self.mask]
        _check(self.inference in modes, f"variant.inference for mask {self.mask!r} must be "
                                        f"{' or '.join(map(repr, modes))}, got {self.inference!r}")
        _check(math.isfinite(self.video_weight) and self.video_weight >= 0,
               f"variant.video_weight must be a finite number >= 0, got {self.video_weight}")
        _check(self.video_weight > 0 or self.mask == "fastwam",
               f"variant {self.mask!r} generates video at inference and needs video_weight > 0, got {self.video_weight}")
        _check(0 <= self.idm_future_noise < 1, f"variant.idm_future_noise must be in [0, 1), got {self.idm_future_noise}")
        _check(self.idm_future_noise == 0 or self.reads_clean_future,
               f"variant.idm_future_noise applies to masks {' and '.join(READS_FUTURE_COPY)} (the future copy "
               f"their actions read); mask {self.mask!r} has none, got {self.idm_future_noise}")
        _check(0 < self.idm_fraction < 1, f"variant.idm_fraction must be in (0, 1), got {self.idm_fraction}")

    @property
    def has_future(self) -> bool:
        """Whether future-frame tokens exist at all (False for no video co-training)."""
        return self.video_weight > 0

    @property
    def modes(self) -> tuple[str, ...]:
        """The inference modes this variant is trained for (``predict_actions`` refuses others)."""
        return TRAINED_MODES[self.mask] if self.has_future else ("action_only",)

    @property
    def reads_clean_future(self) -> bool:
        """Whether training builds the clean future copy that IDM-mode actions read."""
        return self.mask in READS_FUTURE_COPY


@dataclass(frozen=True)
class VideoExpertConfig:
    """The video DiT (Wan2.2-style block). Its heads x head_dim are the model's shared attention."""

    width: int = 256
    ffn: int = 1024
    patch: tuple[int, int, int] = (1, 2, 2)  # (frames, rows, columns) of latent per token
    freq_dim: int = 256  # sinusoidal timestep features
    # What the head outputs: the velocity (Wan) or the clean latents, turned into a velocity
    # (needed when a token holds more values than the width, e.g. 8x8 pixel patches at width 256).
    prediction: Literal["velocity", "data"] = "velocity"
    # Add fixed 2-D sin-cos features of each token's (row, column) to the patch embedding, on top of
    # RoPE. RoPE alone rotates queries and keys, so attention outputs (sums of values) do not say
    # where they came from; Wan2.2 has no such embedding (False), it adds no weights.
    grid_position: bool = False
    # Channels of two 3x3 convolutions over each latent frame before the patch embedding (0: none, the
    # patch embedding reads latents directly, as Wan2.2). Shares weights across positions below a token.
    conv_stem: int = 0

    def __post_init__(self):
        _check(len(self.patch) == 3 and all(p >= 1 for p in self.patch), f"video.patch must be 3 positive ints, got {self.patch}")
        _check(self.conv_stem >= 0, f"video.conv_stem must be >= 0 channels, got {self.conv_stem}")
        _check(self.prediction in ("velocity", "data"), f"video.prediction must be velocity|data, got {self.prediction!r}")


@dataclass(frozen=True)
class ActionExpertConfig:
    """The action DiT: its own width and FFN, the video expert's attention heads."""

    width: int = 128
    ffn: int = 512
    freq_dim: int = 256


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the model's parameters and its tensor shapes."""

    layers: int = 4
    heads: int = 4
    head_dim: int = 64
    video: VideoExpertConfig = field(default_factory=VideoExpertConfig)
    action: ActionExpertConfig = field(default_factory=ActionExpertConfig)
    # Latent video: channels and grid of one latent frame, context and future latent frames.
    latent_channels: int = 192
    latent_height: int = 8
    latent_width: int = 8
    context_frames: int = 1
    future_frames: int = 2
    # Actions, proprio and instruction.
    action_dim: int = 4
    chunk: int = 16
    state_dim: int = 4
    text_dim: int = 384
    text_tokens: int = 1
    video_flow: FlowConfig = field(default_factory=FlowConfig)
    action_flow: FlowConfig = field(default_factory=FlowConfig)
    variant: VariantConfig = field(default_factory=VariantConfig)

    def __post_init__(self):
        _check(self.layers >= 1 and self.heads >= 1, f"layers and heads must be >= 1, got {self.layers}, {self.heads}")
        _check(self.head_dim % 2 == 0, f"head_dim must be even for RoPE, got {self.head_dim}")
        pt, ph, pw = self.video.patch
        _check(self.latent_height % ph == 0 and self.latent_width % pw == 0,
               f"latent grid {self.latent_height}x{self.latent_width} is not divisible by patch {ph}x{pw}")
        _check(self.context_frames % pt == 0 and self.future_frames % pt == 0,
               f"context/future latent frames ({self.context_frames}, {self.future_frames}) not divisible by patch frames {pt}")
        _check(self.context_frames >= 1 and self.future_frames >= 0 and self.chunk >= 1,
               f"need context_frames >= 1, future_frames >= 0, chunk >= 1; got {self.context_frames}, {self.future_frames}, {self.chunk}")
        _check(self.future_frames > 0 or not self.variant.has_future,
               "variant has video co-training (video_weight > 0) but model.future_frames is 0")

    @property
    def attn_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def tokens_per_frame(self) -> int:
        _, ph, pw = self.video.patch
        return (self.latent_height // ph) * (self.latent_width // pw)

    def tokens(self, frames: int) -> int:
        return frames // self.video.patch[0] * self.tokens_per_frame

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one latent frame."""
        return (self.latent_channels, self.latent_height, self.latent_width)

    def build(self):
        """The model this config describes (``fastwam.model.WAM``)."""
        from fastwam.model import WAM

        return WAM(self)

    def fake_batch(self, batch: int, generator=None):
        """A random ``fastwam.model.Batch`` of this config's shapes (smoke tests, benchmarks)."""
        import torch

        from fastwam.model import Batch

        g = dict(generator=generator)
        has_future = self.variant.has_future
        return Batch(
            context=torch.randn(batch, self.context_frames, *self.latent_shape, **g),
            actions=torch.randn(batch, self.chunk, self.action_dim, **g).clamp(-1, 1),
            action_pad=torch.zeros(batch, self.chunk, dtype=torch.bool),
            state=torch.randn(batch, self.state_dim, **g),
            text=torch.randn(batch, self.text_tokens, self.text_dim, **g),
            future=torch.randn(batch, self.future_frames, *self.latent_shape, **g) if has_future else None,
            future_pad=torch.zeros(batch, self.future_frames, dtype=torch.bool) if has_future else None,
        )


@dataclass(frozen=True)
class CodecConfig:
    """How frames become latents: ``patch`` (pixel space-to-depth, no weights) or ``wan22`` (VAE)."""

    name: Literal["patch", "wan22"] = "patch"
    factor: int = 8  # spatial downsampling (patch: pixel block size; wan22: 16)
    path: str = ""  # wan22: local diffusers directory of AutoencoderKLWan

    def __post_init__(self):
        _check(self.name in ("patch", "wan22"), f"codec.name must be patch|wan22, got {self.name!r}")
        _check(self.factor >= 1, f"codec.factor must be >= 1, got {self.factor}")

    @property
    def temporal(self) -> int:
        """Pixel frames per latent frame after the first: 1 (patch, frame by frame) or 4 (wan22, causal 4:1)."""
        return 1 if self.name == "patch" else 4


@dataclass(frozen=True)
class TextConfig:
    """Instruction encoder: ``minilm`` (packaged offline sentence encoder) or ``umt5`` (local path)."""

    name: Literal["minilm", "umt5"] = "minilm"
    path: str = ""
    template: str = "{instruction}"  # what is encoded; Fast-WAM frames the instruction as a video caption for umT5

    def __post_init__(self):
        _check(self.template.count("{instruction}") == 1,
               f"text.template must contain {{instruction}} once, got {self.template!r}")


@dataclass(frozen=True)
class DataConfig:
    """What one training sample is: cameras, image size, action chunk and future frames."""

    cameras: tuple[str, ...] = ("corner3",)
    image_size: int = 64  # square, per camera; cameras are concatenated side by side
    frame_stride: int = 8  # r: future frames at t + r*k, k = 1..chunk/r
    codec: CodecConfig = field(default_factory=CodecConfig)
    text: TextConfig = field(default_factory=TextConfig)
    state_normalization: str = "min_max"  # min_max | mean_std | quantiles (fastwam.data.normalize)
    action_normalization: str = "min_max"

    def __post_init__(self):
        _check(len(self.cameras) >= 1, "data.cameras must name at least one camera")
        for name in ("state_normalization", "action_normalization"):
            _check(getattr(self, name) in ("min_max", "mean_std", "quantiles"),
                   f"data.{name} must be min_max|mean_std|quantiles, got {getattr(self, name)!r}")
        _check(self.image_size % self.codec.factor == 0,
               f"data.image_size {self.image_size} is not divisible by codec.factor {self.codec.factor}")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema: float = 0.0  # 0 = no EMA; else the decay, e.g. 0.999
    augment_shift: int = 0  # random-shift augmentation: pixels each camera image moves at most (0 = off)
    init_video: str = ""  # Wan2.2 DiT checkpoint (file or directory) the video expert starts from ("" = random)
    init_action: Literal["random", "video"] = "random"  # video: the action expert starts from the loaded video expert
    # A checkpoint (directory) to distil a few-step action sampler from ("" = ordinary training): the
    # model starts as that teacher, its video expert frozen, and its action expert learns to sample
    # in model.action_flow.steps (WAM.distillation_loss).
    distill_from: str = ""
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  # the newest checkpoints a run keeps, older ones deleted (0: keeps every one)
    mixed_precision: Literal["no", "bf16"] = "no"
    # Several processes (accelerate launch): ddp replicates the model; zero2 and fsdp shard parameters,
    # gradients, AdamW moments and EMA across them (fastwam.parallel; `fastwam plan` sizes each).
    strategy: Literal["ddp", "zero2", "fsdp"] = "ddp"
    activation_checkpointing: bool = False  # recompute each layer in the backward pass: activations ~1/layers
    # Micro-batches of batch_size per process whose gradients one optimizer step averages (an N-process
    # run is repeated by one process with accumulate N: the same samples, noise and losses).
    accumulate: int = 1

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "accumulate"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, f"train.{name} must be an integer >= 1, got {value!r}")
        _check(isinstance(self.keep_checkpoints, int) and self.keep_checkpoints >= 0,
               f"train.keep_checkpoints must be an integer >= 0 (0: every one), got {self.keep_checkpoints!r}")
        _check(math.isfinite(self.lr) and self.lr > 0, f"train.lr must be a finite number > 0, got {self.lr}")
        _check(isinstance(self.warmup, int) and self.warmup >= 0, f"train.warmup must be an integer >= 0, got {self.warmup!r}")
        _check(math.isfinite(self.weight_decay) and self.weight_decay >= 0,
               f"train.weight_decay must be a finite number >= 0, got {self.weight_decay}")
        _check(math.isfinite(self.grad_clip) and self.grad_clip > 0, f"train.grad_clip must be > 0, got {self.grad_clip}")
        _check(0 <= self.ema < 1, f"train.ema must be in [0, 1) (0: no EMA; a decay such as 0.999), got {self.ema}")
        # every micro-batch's seed derives from it (train._step_seed); 2**31 keeps those within torch's 64 bits
        _check(isinstance(self.seed, int) and 0 <= self.seed < 2**31, f"train.seed must be an integer in 0..2**31 - 1, got {self.seed!r}")
        _check(self.mixed_precision in ("no", "bf16"), f"train.mixed_precision must be no|bf16, got {self.mixed_precision!r}")
        _check(self.strategy in STRATEGIES, f"train.strategy must be {'|'.join(STRATEGIES)}, got {self.strategy!r}")
        _check(isinstance(self.activation_checkpointing, bool),
               f"train.activation_checkpointing must be true|false, got {self.activation_checkpointing!r}")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        m, d = self.model, self.data
        _check(self.train.init_action in ("random", "video"),
               f"train.init_action must be random|video, got {self.train.init_action!r}")
        _check(not self.train.distill_from or (not self.train.init_video and self.model.variant.mask in ("fastwam", "idm")),
               "train.distill_from: a student starts from its teacher (train.init_video must be empty) and distils the "
               "one action sampler of a fastwam or idm model (joint denoises actions with the video; dual has two "
               f"modes), got variant {self.model.variant.mask!r}")
        _check(self.train.init_action == "random" or self.train.init_video,
               "train.init_action: video starts the action expert from the Wan weights of train.init_video, "
               "which is empty (a random video expert has nothing to pass on)")
        _check(0 <= self.train.augment_shift < d.image_size // 2,
               f"train.augment_shift must be in [0, {d.image_size // 2}) for {d.image_size}px images, got {self.train.augment_shift}")
        _check(self.train.augment_shift == 0 or d.codec.name == "patch",
               f"train.augment_shift shifts pixels: it needs the patch codec (latents are pixel blocks), "
               f"not {d.codec.name!r}, whose latents would have to be re-encoded every step")
        _check(m.context_frames == 1 or d.codec.name == "patch",
               f"model.context_frames {m.context_frames}: history frames are encoded one latent frame each, which "
               f"needs the patch codec, not {d.codec.name!r} (4:1 temporal compression)")
        if d.codec.name == "patch":
            want_c = 3 * d.codec.factor**2
            want_h = d.image_size // d.codec.factor
            want_w = want_h * len(d.cameras)
            _check((m.latent_channels, m.latent_height, m.latent_width) == (want_c, want_h, want_w),
                   f"patch codec (factor {d.codec.factor}, {len(d.cameras)} camera(s) of {d.image_size}px) gives latents "
                   f"(C, h, w) = {(want_c, want_h, want_w)}, but model expects "
                   f"{(m.latent_channels, m.latent_height, m.latent_width)}")
        else:  # wan22: 16x spatial, 4x temporal compression, first frame encoded on its own
            want_h = d.image_size // d.codec.factor
            _check((m.latent_channels, m.latent_height, m.latent_width) == (48, want_h, want_h * len(d.cameras)),
                   f"wan22 codec gives latents (C, h, w) = {(48, want_h, want_h * len(d.cameras))}, "
                   f"but model expects {(m.latent_channels, m.latent_height, m.latent_width)}")
        k = d.codec.temporal
        _check(m.future_frames == 0 or m.chunk == k * d.frame_stride * m.future_frames,
               f"{d.codec.name} codec: the future pixel frames t + r*k, k = 1..chunk/r, become {k} per latent frame, "
               f"so chunk must be {k} * frame_stride * future_frames; got chunk {m.chunk}, frame_stride "
               f"{d.frame_stride}, future_frames {m.future_frames}")

    def replace(self, **sections: Any) -> "Config":
        return dataclasses.replace(self, **sections)

    def with_variant(self, name: str, video_weight: float | None = None,
                     idm_future_noise: float | None = None) -> "Config":
        """This config as variant ``name``: its mask rule and, where the rule changes, the rule's default
        inference; the fields given replace the config's, the others (a YAML preset's ``model.variant``)
        are kept, but for a future-noise level under a rule whose actions read no future."""
        if name not in TRAINED_MODES:
            raise ValueError(f"unknown variant {name!r}: expected one of {sorted(TRAINED_MODES)}")
        variant = self.model.variant
        inference = variant.inference if name == variant.mask else TRAINED_MODES[name][0]
        kept = {"idm_future_noise": variant.idm_future_noise if name in READS_FUTURE_COPY else 0.0}
        given = {k: v for k, v in (("video_weight", video_weight), ("idm_future_noise", idm_future_noise)) if v is not None}
        variant = dataclasses.replace(variant, mask=name, inference=inference, **(kept | given))
        return self.replace(model=dataclasses.replace(self.model, variant=variant))

    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> "Config":
        return _build(cls, data, where)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        return cls.from_dict(data, where=str(path))


def preset(name: str) -> Config:
    """Load a named preset (``tiny``, ``small``, ``wan22-5b``) or a YAML path."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ValueError(f"unknown preset {name!r}: no file {path}; known presets: {known}")
    return Config.load(path)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys by name."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        default = known[name].default_factory() if known[name].default_factory is not dataclasses.MISSING else known[name].default
        if is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{where}.{name}: expected a list, got {value!r}")
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = _typed(value, default, f"{where}.{name}")
    return cls(**kwargs)


def _typed(value: Any, default: Any, where: str) -> Any:
    """A YAML value checked against its field's type (the default's): an integer field takes
    integers only, a number field any finite number (PyYAML reads ``3e-4`` as text: such text is
    taken as the number it spells), a flag true or false, a text field text."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        return value
    if not ok:
        kind = {bool: "true or false", int: "an integer", float: "a finite number", str: "text"}[type(default)]
        raise ValueError(f"{where}: expected {kind}, got {value!r}")
    return value
