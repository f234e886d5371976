"""``fastwam train``: flow-matching training of a WAM variant on a LeRobot dataset.

CPU here, GPUs through ``accelerate`` (``accelerate launch -m fastwam.cli train ...`` for several
GPUs or nodes; bf16 via ``train.mixed_precision``; ``train.strategy`` ddp, or zero2/fsdp sharding,
``fastwam.parallel``). Every micro-batch (``train.accumulate`` per process and step) draws its
batch indices and its noise from a generator seeded by (seed, step, micro-batch index across all
processes), so a resumed run repeats the uninterrupted run's loss sequence exactly, and one process
accumulating N micro-batches repeats an N-process run.

A run directory holds ``config.yaml``, ``stats.json`` (normalization), ``data.json`` (the dataset,
its content hash ``dataset_sha256`` and the task variations its demonstrations used),
``metrics.jsonl``, ``loss.png`` and ``checkpoints/step-XXXXXXX/`` (``model.safetensors``,
``config.yaml``, ``stats.json``, ``data.json``, ``train_state.pt`` or one training-state shard per
process), each written to a temporary directory and renamed into place. SIGINT or SIGTERM (Ctrl-C,
a scheduler's preemption) finish the step in progress, checkpoint it and stop (exit code 128 + the
signal's number); ``--resume`` continues from that step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from fastwam import parallel
from fastwam.checkpoint import (CHECKPOINTS, TRAIN_STATE, CheckpointError, checkpoints,  # noqa: F401 (re-exported)
                                latest_checkpoint, load_model, newest_intact_training_state, newest_readable_config, run_lock, sha256,
                                write_checksums, write_run_files)
from fastwam.codecs import build_codec, frames_to_unit
from fastwam.config import STRATEGIES, Config, TrainConfig, preset
from fastwam.data.augment import random_shift
from fastwam.data.lerobot import DatasetError, LeRobotDataset, cache_temp
from fastwam.data.normalize import Normalizer
from fastwam.data.windows import ACTION_KEY, STATE_KEY, ChunkDataset
from fastwam.model import WAM, Batch
from fastwam.model.wan_weights import init_action_from_video, load_wan_video_weights
from fastwam.text import build_text_encoder


# -- data --------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainingData:
    """Everything a step samples from: cached latents, normalized vectors, windows."""

    latents: torch.Tensor  # (M, C, h, w) float16: one per dataset frame (patch) or per sample and latent frame (wan22)
    actions: torch.Tensor  # (N, A) normalized
    state: torch.Tensor  # (N, P) normalized
    text: torch.Tensor  # (tasks, L, E) instruction embeddings per task_index
    task_index: torch.Tensor  # (N,)
    rows: torch.Tensor  # (S,) sample -> global frame row
    latent_rows: torch.Tensor  # (S, Tc + Tf) rows of ``latents``: context (history, current), then future
    latent_pad: torch.Tensor  # (S, Tc + Tf) bool: the latent frame shows frames past the episode's end
    action_rows: torch.Tensor  # (S, H)
    action_pad: torch.Tensor  # (S, H) bool
    context_frames: int  # Tc

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: torch.Tensor) -> Batch:
        rows = self.rows[indices]
        frames = self.latents[self.latent_rows[indices]].float()  # (B, Tc + Tf, C, h, w)
        tc = self.context_frames
        return Batch(
            context=frames[:, :tc], future=frames[:, tc:], future_pad=self.latent_pad[indices, tc:],
            actions=self.actions[self.action_rows[indices]], action_pad=self.action_pad[indices],
            state=self.state[rows], text=self.text[self.task_index[rows]],
        )


def load_training_data(cfg: Config, dataset: LeRobotDataset, normalizer: Normalizer, progress: bool = True) -> TrainingData:
    """Windows, normalized vectors, cached latents and instruction embeddings of ``dataset``."""
    m, d = cfg.model, cfg.data
    temporal = d.codec.temporal
    windows = ChunkDataset(dataset, chunk=m.chunk, frame_stride=d.frame_stride, future_frames=m.future_frames * temporal,
                           cameras=d.cameras, progress=progress, context_frames=m.context_frames)
    _check_vectors(dataset, m)
    frame_rows, frame_pad = (np.stack(x) for x in zip(*(windows.frame_indices(i) for i in range(len(windows)))))
    action_rows, action_pad = zip(*(windows.action_indices(i) for i in range(len(windows))))
    if temporal == 1:  # a latent frame per pixel frame: encode every dataset frame once, samples share them
        latents, latent_rows, latent_pad = cached_frame_latents(cfg, dataset, windows, progress), frame_rows, frame_pad
    else:  # causal clip latents depend on the whole window: one clip per sample
        clips = cached_clip_latents(cfg, dataset, windows, frame_rows, progress)  # (S, 1 + Tf, C, h, w)
        latents = clips.reshape(-1, *clips.shape[2:])
        latent_rows = np.arange(len(latents)).reshape(clips.shape[:2])
        latent_pad = fold_pad(frame_pad, temporal)
    text = build_text_encoder(d.text, m.text_tokens, cache_dir=dataset.root / "cache" / "text").encode(dataset.tasks)
    if text.shape[-1] != m.text_dim:
        raise ValueError(f"text encoder {d.text.name!r} gives {text.shape[-1]}-dim embeddings, model.text_dim is {m.text_dim}")
    return TrainingData(
        latents=torch.from_numpy(latents),
        actions=normalizer.normalize(ACTION_KEY, torch.from_numpy(windows.actions)).float(),
        state=normalizer.normalize(STATE_KEY, torch.from_numpy(windows.state)).float(),
        text=text.float(), task_index=torch.from_numpy(np.asarray(windows.task_index, dtype=np.int64)),
        rows=torch.from_numpy(windows.rows.astype(np.int64)),
        latent_rows=torch.from_numpy(latent_rows.astype(np.int64)), latent_pad=torch.from_numpy(latent_pad),
        action_rows=torch.from_numpy(np.stack(action_rows).astype(np.int64)), action_pad=torch.from_numpy(np.stack(action_pad)),
        context_frames=m.context_frames,
    )


def fold_pad(frame_pad: np.ndarray, temporal: int) -> np.ndarray:
    """Pixel-frame pad flags (S, 1 + k*F) -> latent-frame flags (S, 1 + F) for a causal k:1 codec.

    Latent frame j > 0 covers pixel frames 1 + k*(j-1) .. k*j; it is padding if any of them is
    (it then shows repeated last frames that never happened).
    """
    s, frames = frame_pad.shape
    if (frames - 1) % temporal:
        raise ValueError(f"frame_pad: expected (S, 1 + {temporal}*F) pixel-frame flags, got {frame_pad.shape}")
    future = frame_pad[:, 1:].reshape(s, -1, temporal).any(-1)  # (S, F)
    return np.concatenate([frame_pad[:, :1], future], axis=1)


def _camera_frames(cfg: Config, dataset: LeRobotDataset, windows: ChunkDataset) -> list[np.ndarray]:
    """Each training camera's decoded frames (N, h, w, 3) uint8, memory-mapped, checked against the config."""
    frames = [dataset.frames(k) for k in windows.camera_keys]
    size = cfg.data.image_size
    if frames[0].shape[1:3] != (size, size):
        raise DatasetError(f"{dataset.root}: frames are {frames[0].shape[1]}x{frames[0].shape[2]} px, "
                           f"config data.image_size is {size}; set data.image_size and model.latent_height/"
                           f"latent_width to the dataset's (`fastwam dataset check {dataset.root} --preset ...` "
                           f"lists the values), or record it with --image-size {size}")
    return frames


def _side_by_side(frames: list[np.ndarray], rows: np.ndarray) -> torch.Tensor:
    """Rows (...,) of every camera -> float (..., 3, h, w * cameras) in [-1, 1], cameras side by side."""
    pixels = np.concatenate([f[rows] for f in frames], axis=-2)  # (..., h, w * cams, 3)
    return frames_to_unit(torch.from_numpy(pixels).movedim(-1, -3))


def _load_cache(path: Path, shape: tuple[int, ...], mmap: bool) -> np.ndarray | None:
    """The cached array at ``path`` (None if absent); a cache of another shape is an error, not a miss."""
    if not path.is_file():
        return None
    cached = np.load(path, mmap_mode="c" if mmap else "r")
    if cached.shape != shape:
        raise DatasetError(f"{path}: latent cache is {cached.shape}, expected {shape}; delete it")
    return cached if mmap else np.array(cached)  # into memory: sampled at random every step


def cached_frame_latents(cfg: Config, dataset: LeRobotDataset, windows: ChunkDataset, progress: bool = True) -> np.ndarray:
    """Latents (N, C, h, w) float16 of every frame, encoded once per dataset and codec and cached on disk."""
    codec_cfg = cfg.data.codec
    frames = _camera_frames(cfg, dataset, windows)
    frames_id = "".join(dataset.fingerprint(c) for c in cfg.data.cameras)  # other frames, another cache
    key = "-".join([codec_cfg.name, str(codec_cfg.factor), *cfg.data.cameras, str(dataset.num_frames),
                    hashlib.sha1(frames_id.encode()).hexdigest()[:12]])
    path = dataset.root / "cache" / f"latents-{key}.npy"
    shape = (dataset.num_frames, *cfg.model.latent_shape)
    if (cached := _load_cache(path, shape, mmap=False)) is not None:
        return cached
    codec = build_codec(codec_cfg)
    out = np.empty(shape, dtype=np.float16)
    step = 512
    for start in tqdm(range(0, dataset.num_frames, step), desc="encode latents", disable=not progress, leave=False):
        unit = _side_by_side(frames, np.arange(start, min(start + step, dataset.num_frames)))[:, None]  # (n, 1, 3, h, W)
        out[start:start + step] = codec.encode(unit)[:, 0].numpy().astype(np.float16)
    tmp = cache_temp(path)
    np.save(tmp, out)
    os.replace(tmp, path)
    return out


def cached_clip_latents(cfg: Config, dataset: LeRobotDataset, windows: ChunkDataset, frame_rows: np.ndarray,
                        progress: bool = True, batch: int = 8) -> np.ndarray:
    """Latents (S, 1 + F, C, h, w) float16 of every sample's clip (its frame rows), for codecs with
    temporal compression, encoded once per dataset, codec weights and window and cached on disk.

    Memory-mapped copy-on-write rather than loaded: at the paper's scale a sample's clip latents
    take ~150 KB, so the cache of a real dataset is tens of GB.
    """
    from fastwam.codecs.wan_vae import resolve_vae_dir

    d, codec_cfg = cfg.data, cfg.data.codec
    frames = _camera_frames(cfg, dataset, windows)
    vae_dir = resolve_vae_dir(codec_cfg.path)
    weights = sorted(p for p in vae_dir.iterdir() if p.name.startswith("diffusion_pytorch_model"))
    identity = [codec_cfg.name, codec_cfg.factor, str(vae_dir.resolve()), (vae_dir / "config.json").read_text(),
                [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights],
                list(d.cameras), d.image_size, dataset.num_frames, [dataset.fingerprint(c) for c in d.cameras]]
    digest = hashlib.sha1(json.dumps(identity).encode() + frame_rows.astype(np.int64).tobytes()).hexdigest()[:16]
    path = dataset.root / "cache" / f"clips-{codec_cfg.name}-{digest}.npy"
    shape = (len(frame_rows), 1 + cfg.model.future_frames, *cfg.model.latent_shape)
    if (cached := _load_cache(path, shape, mmap=True)) is not None:
        return cached
    device = "cuda" if torch.cuda.is_available() else "cpu"
    codec = build_codec(codec_cfg, device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    tmp = cache_temp(path)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)  # written in place, not held in RAM
    for start in tqdm(range(0, len(frame_rows), batch), desc="encode clip latents", disable=not progress, leave=False):
        clips = _side_by_side(frames, frame_rows[start:start + batch])  # (n, 1 + k*F, 3, h, W)
        out[start:start + batch] = codec.encode(clips).cpu().numpy().astype(np.float16)
    out.flush()
    del out
    os.replace(tmp, path)
    return np.load(path, mmap_mode="c")


def _check_vectors(dataset: LeRobotDataset, m) -> None:
    for key, dim in ((ACTION_KEY, m.action_dim), (STATE_KEY, m.state_dim)):
        got = dataset.column(key).shape[1:]
        if got != (dim,):
            field = "action_dim" if key == ACTION_KEY else "state_dim"
            raise DatasetError(f"{dataset.root}: feature {key!r} has shape {got}, the model expects ({dim},): "
                               f"set model.{field} (`fastwam dataset check {dataset.root}` lists what to change)")


# -- schedule, EMA -----------------------------------------------------------------------------

def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 at ``total`` (step counts from 0)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class EMA:
    """Exponential moving average of parameters: ema <- d * ema + (1 - d) * param.

    d = min(decay, (1 + n) / (10 + n)) after n updates, so early averages are not dominated by the
    random initial weights (with a fixed 0.999, 5 % of them would remain after 3000 steps).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            self.shadow[k].lerp_(v.float(), 1 - d)
        self.updates += 1


def adamw(model: torch.nn.Module, t: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters; no weight decay on vectors and modulations."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 or name.endswith("modulation") else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=t.lr, betas=(0.9, 0.95))


# -- the trainer -------------------------------------------------------------------------------

class TrainingDiverged(ValueError):
    """A step's loss or gradient norm was not finite: the step's update was not applied and nothing
    of it is saved, so the run's newest checkpoint keeps the last finite weights."""

    def __init__(self, step: int, metrics: dict, checkpoint: Path | None):
        kept = f"its newest checkpoint, {checkpoint}, holds finite weights" if checkpoint else "no checkpoint was written"
        super().__init__(f"step {step}: the loss diverged (loss {metrics['loss']:.4g}, action {metrics['loss_action']:.4g}, "
                         f"video {metrics['loss_video']:.4g}, gradient norm {metrics['grad_norm']:.4g}); training "
                         f"stopped before applying it and {kept} (a lower train.lr or a longer warm-up may help)")
        self.step, self.checkpoint = step, checkpoint


class TrainingStopped(Exception):
    """SIGINT or SIGTERM reached ``Trainer.run``: it finished the step in progress, checkpointed it, and stopped."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint {checkpoint}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


@contextlib.contextmanager
def stop_requests():
    """While inside, SIGINT and SIGTERM append their number to the yielded list instead of killing the
    process, so training can finish its step and checkpoint it (Ctrl-C, a scheduler's preemption); a
    second signal acts as it did before. Signals the process ignores (a background job's SIGINT) stay
    ignored; outside the main thread nothing is installed."""
    asked: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield asked
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    previous = {s: h for s, h in previous.items() if h is not signal.SIG_IGN}

    def ask(signum, frame):
        asked.append(signum)
        for s, h in previous.items():
            signal.signal(s, h)

    for s in previous:
        signal.signal(s, ask)
    try:
        yield asked
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class Trainer:
    """Owns model, optimizer, schedule, EMA and the run directory; ``run`` trains until ``cfg.train.steps``."""

    def __init__(self, cfg: Config, data: TrainingData, normalizer: Normalizer, out: str | Path,
                 data_info: dict | None = None, progress: bool = True, init_weights: bool = True):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.cfg, self.data, self.normalizer, self.out = cfg, data, normalizer, Path(out)
        self.data_info, self.progress = data_info or {}, progress
        t = cfg.train
        torch.manual_seed(t.seed)
        # step_scheduler_with_optimizer=False: the schedule advances once per optimizer step on every
        # process (accelerate would otherwise step it once per process: N times too fast on N GPUs).
        self.accelerator = Accelerator(
            step_scheduler_with_optimizer=False, mixed_precision=t.mixed_precision, cpu=not torch.cuda.is_available(),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=not cfg.model.variant.has_future)])
        self.model = WAM(cfg.model)
        if t.init_video and init_weights:  # not when resuming: the checkpoint replaces every weight
            load_wan_video_weights(self.model, t.init_video)
            if t.init_action == "video":
                init_action_from_video(self.model)
        teacher = load_teacher(cfg, self.accelerator.device) if t.distill_from else None
        if teacher is not None:
            if init_weights:
                self.model.load_state_dict(teacher.state_dict())
            self.model.video.requires_grad_(False)  # the teacher's video expert, prefill and cache, unchanged
            teacher.video = self.model.video  # one copy of the (frozen) video expert
        if self.accelerator.num_processes * t.accumulate > MICRO_BATCH_SEEDS:
            raise ValueError(f"train.accumulate {t.accumulate} x {self.accelerator.num_processes} processes: at most "
                             f"{MICRO_BATCH_SEEDS} micro-batches a step (each draws its own seed)")
        self.model.activation_checkpointing = t.activation_checkpointing
        self.sharded = parallel.is_sharded(t.strategy)
        step_fn = _LossStep(self.model, teacher)
        if self.sharded:  # before the optimizer is built: the parameters become this process's shards
            compute = torch.bfloat16 if t.mixed_precision == "bf16" else None
            blocks = [*self.model.video.blocks, *self.model.action.blocks, *(teacher.action.blocks if teacher else [])]
            parallel.shard(step_fn, blocks, t.strategy, self.accelerator.device, compute)
        self.optimizer = adamw(self.model, t)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, t.warmup, t.steps))
        self.codec = build_codec(cfg.data.codec) if t.augment_shift else None
        if self.sharded:
            self.step_fn = step_fn
            self.optimizer, self.scheduler = self.accelerator.prepare(self.optimizer, self.scheduler)
        else:
            self.step_fn, self.optimizer, self.scheduler = self.accelerator.prepare(step_fn, self.optimizer, self.scheduler)
        self.ema = EMA(self.model, t.ema) if t.ema > 0 else None  # after prepare/shard: on the model's device, sharded alike
        self.step = 0

    # -- loop ----------------------------------------------------------------------------------

    def run(self, until: int | None = None) -> list[dict]:
        """Train from ``self.step`` to ``until`` (default: cfg.train.steps); returns the logged metrics."""
        t = self.cfg.train
        until = t.steps if until is None else min(until, t.steps)
        self.out.mkdir(parents=True, exist_ok=True)
        logged = []
        bar = tqdm(total=t.steps, initial=self.step, desc="train", disable=not self.progress or not self.accelerator.is_main_process)
        writer = _tensorboard(self.out) if self.accelerator.is_main_process else None
        start = time.time()
        try:
            with stop_requests() as asked:
                while self.step < until:
                    metrics = self.train_step()
                    self.step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", act=f"{metrics['loss_action']:.4f}",
                                    vid=f"{metrics['loss_video']:.4f}")
                    stopping = self._any_process(asked)
                    if self.step % t.log_every == 0 or self.step == until or stopping:
                        metrics |= {"step": self.step, "seconds": round(time.time() - start, 2)}
                        logged.append(metrics)
                        self._log(metrics, writer)
                    if self.step % t.checkpoint_every == 0 or self.step == t.steps or stopping:
                        checkpoint = self.save_checkpoint()
                    if stopping:
                        raise TrainingStopped(asked[0] if asked else signal.SIGTERM, self.step, checkpoint)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        if self.step == t.steps and self.accelerator.is_main_process:
            plot_losses(self.out / "metrics.jsonl", self.out / "loss.png")
        return logged

    def _any_process(self, asked: list) -> bool:
        """Whether some process was asked to stop (all processes stop at the same step, or the
        checkpoint's collectives would wait forever)."""
        if self.accelerator.num_processes == 1:
            return bool(asked)
        flag = torch.tensor([float(bool(asked))], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="max").item())

    def train_step(self) -> dict:
        """One optimizer step on ``train.accumulate`` micro-batches, each drawn by its own generator
        (seeded by run seed, step, and the micro-batch's index across all processes)."""
        t, acc = self.cfg.train, self.accelerator
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        losses = []
        for micro in range(t.accumulate):
            last = micro == t.accumulate - 1
            out = self._micro_step(_step_seed(t.seed, self.step, acc.process_index * t.accumulate + micro), last)
            losses.append(torch.stack([out.total, out.action, out.video]).detach().float())
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        total, action, video = acc.reduce(torch.stack(losses).mean(0), reduction="mean").tolist()  # over all processes
        metrics = {"loss": total, "loss_action": action, "loss_video": video, "grad_norm": parallel.scalar(grad_norm)}
        if not all(math.isfinite(v) for v in metrics.values()):  # every process sees the same reduced values
            newest = checkpoints(self.out)
            raise TrainingDiverged(self.step + 1, metrics, newest[-1] if newest else None)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return {**metrics, "lr": self.scheduler.get_last_lr()[0]}

    def _micro_step(self, seed: int, sync: bool):
        """Forward and backward of one micro-batch (its loss scaled by 1 / accumulate); ``sync``: the
        step's last micro-batch, after which DDP synchronizes gradients across processes."""
        device = self.accelerator.device
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randint(len(self.data), (self.cfg.train.batch_size,), generator=generator)
        batch = self.data.batch(indices)
        if self.codec is not None:
            batch = self._shifted(batch, generator)
        batch = batch.to(device)
        # the loss draws its noise where the batch is (a CPU generator cannot draw on a GPU)
        noise = generator if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed + 1)
        # DDP all-reduces on the last micro-batch only; FSDP reduce-scatters every one (parallel: memory)
        context = contextlib.nullcontext() if sync or self.sharded else self.accelerator.no_sync(self.step_fn)
        with context:
            with self.accelerator.autocast():
                out = self.step_fn(batch, noise)
            self.accelerator.backward(out.total / self.cfg.train.accumulate)
        return out

    def _shifted(self, batch: Batch, generator: torch.Generator) -> Batch:
        """``batch`` with every sample's frames (context and future alike) randomly shifted in pixels."""
        tc = batch.context.shape[1]
        latents = torch.cat([batch.context, batch.future], dim=1)  # TrainingData.batch always has future (Tf may be 0)
        pixels = random_shift(self.codec.decode(latents), self.cfg.train.augment_shift, len(self.cfg.data.cameras), generator)
        latents = self.codec.encode(pixels)
        return dataclasses.replace(batch, context=latents[:, :tc], future=latents[:, tc:])

    def _log(self, metrics: dict, writer) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if writer is not None:
            for key in ("loss", "loss_action", "loss_video", "lr", "grad_norm"):
                writer.add_scalar(f"train/{key}", metrics[key], metrics["step"])

    # -- checkpoints ---------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write checkpoints/step-XXXXXXX atomically (temp dir + rename); keep the newest
        ``train.keep_checkpoints`` (every one if 0).

        Sharded: every process writes its own training-state shard; the weights are gathered
        whole into ``model.safetensors`` (one tensor at a time)."""
        acc = self.accelerator
        final = self.out / CHECKPOINTS / f"step-{self.step:07d}"
        tmp = final.with_name(final.name + ".tmp")
        weights = self.ema.shadow if self.ema is not None else self.model.state_dict()
        weights = parallel.gather_full(weights, keep=acc.is_main_process)  # all processes take part
        state = {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "ema": self.ema.shadow if self.ema is not None else None,
                 "torch_rng": torch.get_rng_state()}
        if acc.is_main_process:
            damaged = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
            if damaged:  # never written as a checkpoint: a resume or a policy would load it
                raise CheckpointError(f"{final}: not written: non-finite values in {damaged[:5]} ({len(damaged)} tensors)")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file({k: v.contiguous() for k, v in weights.items()}, tmp / "model.safetensors")
            write_run_files(tmp, self.cfg, self.normalizer, self.data_info)
        acc.wait_for_everyone()
        own = {}
        if self.sharded or acc.is_main_process:  # each process writes and hashes its own shard
            name = self._state_file()
            torch.save(parallel.local_state(state), tmp / name)
            own = {name: sha256(tmp / name)}
        if self.sharded:
            own = parallel.all_checksums(*own.popitem())
        if acc.is_main_process:
            write_checksums(tmp, known=own)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            if self.cfg.train.keep_checkpoints:
                for old in checkpoints(self.out)[:-self.cfg.train.keep_checkpoints]:
                    shutil.rmtree(old)
        acc.wait_for_everyone()
        return final

    def _state_file(self) -> str:
        """This process's training-state file: one for the run, or (sharded) one per process."""
        acc = self.accelerator
        return parallel.shard_file(acc.process_index, acc.num_processes) if self.sharded else TRAIN_STATE

    def resume(self, allow_changes: bool = False) -> None:
        """Continue from the newest intact checkpoint (model, optimizer, schedule, EMA, step, RNG).

        A newer checkpoint that is damaged is named and skipped. Training settings must be the
        checkpoint's (``resume_changes``) unless ``allow_changes``, and then they apply (learning
        rate and weight decay included). ``metrics.jsonl`` loses the rows past the resumed step
        (and a line cut by the kill), which the continued run writes again.
        """
        agree = functools.partial(parallel.all_agree, device=self.accelerator.device)
        path, state, problems = newest_intact_training_state(self.out, self._state_file(), agree=agree)
        for problem in problems:
            if self.accelerator.is_main_process or self.sharded:
                print(f"--resume: skipping a damaged checkpoint: {problem}", file=sys.stderr)
        changes = resume_changes(path, self.cfg, allow_changes)
        if self.sharded:
            parallel.load_local_model_state(self.model, state["model"])
            parallel.load_local_optimizer_state(self.optimizer, state["optimizer"])
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        if self.ema is not None:
            if state["ema"] is None:
                raise ValueError(f"--resume: {path} was trained without EMA, but train.ema = {self.cfg.train.ema}")
            current = self.model.state_dict()
            self.ema.shadow = {k: parallel.shard_like(v, current[k], f"ema {k}").float() for k, v in state["ema"].items()}
            self.ema.updates = self.step
        torch.set_rng_state(state["torch_rng"])
        self._apply_optimizer_settings()  # the configured rate at this step (train.steps may have changed)
        metrics = self.out / "metrics.jsonl"
        if metrics.is_file() and self.accelerator.is_main_process:
            kept = [line for line in metrics.read_text().splitlines() if _logged_step(line) <= self.step]
            metrics.write_text("".join(line + "\n" for line in kept))

    def _apply_optimizer_settings(self) -> None:
        """The configured learning rate (at this step of the configured schedule) and weight decay,
        over what the optimizer state restored; parameter group 0 is the decayed one."""
        t = self.cfg.train
        scheduler = getattr(self.scheduler, "scheduler", self.scheduler)  # accelerate wraps it
        scheduler.base_lrs = [t.lr] * len(self.optimizer.param_groups)
        for group in self.optimizer.param_groups:
            group["initial_lr"] = t.lr
            group["lr"] = t.lr * lr_factor(self.step, t.warmup, t.steps)
        self.optimizer.param_groups[0]["weight_decay"] = t.weight_decay


class _LossStep(torch.nn.Module):
    """The model's loss as ``forward``, so accelerate/DDP wrap the call that produces gradients
    (with a frozen ``teacher``: the few-step distillation loss)."""

    def __init__(self, model: WAM, teacher: WAM | None = None):
        super().__init__()
        self.model, self.teacher = model, teacher

    def forward(self, batch: Batch, generator: torch.Generator):
        if self.teacher is not None:
            return self.model.distillation_loss(batch, self.teacher, generator=generator)
        return self.model.loss(batch, generator=generator)


def load_teacher(cfg: Config, device: torch.device) -> WAM:
    """The frozen teacher of ``train.distill_from``; its model and data settings must be the
    student's but for the sampling step count (``student_config``)."""
    teacher, teacher_cfg = load_model(cfg.train.distill_from, device)
    expected = student_config(teacher_cfg, cfg.model.action_flow.steps)
    if (cfg.model, cfg.data) != (expected.model, expected.data):
        raise ValueError(f"train.distill_from: {cfg.train.distill_from} is another model or data setup than the student's "
                         f"(model: {_differences(expected.model, cfg.model) or 'same'}; "
                         f"data: {_differences(expected.data, cfg.data) or 'same'})")
    return teacher.requires_grad_(False).eval()


def student_config(teacher: Config, steps: int, train: TrainConfig | None = None) -> Config:
    """The config of a student of ``teacher`` sampling in ``steps`` action steps (model and data are
    the teacher's; ``train``, if given, replaces the teacher's training settings)."""
    flow = dataclasses.replace(teacher.model.action_flow, steps=steps)
    return teacher.replace(model=dataclasses.replace(teacher.model, action_flow=flow), train=train or teacher.train)


IGNORED_ON_RESUME = ("steps", "init_video", "init_action", "log_every", "checkpoint_every", "keep_checkpoints",
                     "activation_checkpointing")


def resume_changes(checkpoint: Path, cfg: Config, allow: bool) -> dict[str, tuple]:
    """What ``cfg`` changes against the checkpoint's config: ``train.steps`` may change (a run is
    extended or shortened), and the initial weights and logging cadence do not matter when
    resuming (``IGNORED_ON_RESUME``); other training settings only when ``allow``; data settings
    never (the model must see what it trained on; the model itself is checked when its weights load)."""
    saved = Config.load(checkpoint / "config.yaml")
    if saved.model != cfg.model:
        raise ValueError(f"--resume: {checkpoint / 'config.yaml'} describes another model than the one requested "
                         f"({_differences(saved.model, cfg.model)})")
    if saved.data != cfg.data:
        raise ValueError(f"--resume: {checkpoint / 'config.yaml'} trained on other data settings "
                         f"({_differences(saved.data, cfg.data)})")
    changes = {f"train.{k}": v for k, v in _differences_dict(saved.train, cfg.train).items()
               if k not in IGNORED_ON_RESUME}
    if changes and not allow:
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
        raise ValueError(f"--resume: {checkpoint} trained with other settings than asked ({listed}); "
                         "pass --allow-changes to apply them, or drop those options")
    return changes


def check_same_data(checkpoint: Path, dataset_sha256: str) -> None:
    """A resumed run goes on with the data its checkpoint trained on (data.json's ``dataset_sha256``;
    checkpoints written before that record are not checked)."""
    path = checkpoint / "data.json"
    saved = json.loads(path.read_text()).get("dataset_sha256") if path.is_file() else None
    if saved and saved != dataset_sha256:
        raise ValueError(f"--resume: {path} trained on other data (dataset_sha256 {saved[:16]}..., this dataset "
                         f"{dataset_sha256[:16]}...): resume with the dataset it trained on, or start a new run")


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; a line cut by a kill counts as past every step."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return math.inf


def _differences_dict(old, new) -> dict[str, tuple]:
    """The fields of two configs that differ, nested ones by their dotted path (``variant.mask``)."""
    out = {}
    for f in dataclasses.fields(old):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a == b:
            continue
        if dataclasses.is_dataclass(a) and type(a) is type(b):
            out |= {f"{f.name}.{k}": v for k, v in _differences_dict(a, b).items()}
        else:
            out[f.name] = (a, b)
    return out


def _differences(old, new) -> str:
    return ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in _differences_dict(old, new).items())


MICRO_BATCH_SEEDS = 1009  # micro-batches a step can draw without reusing the next step's seeds


def _step_seed(seed: int, step: int, micro: int) -> int:
    return (seed * 1_000_003 + step) * MICRO_BATCH_SEEDS + micro


def plot_losses(metrics_path: Path, out: Path) -> None:
    """Loss curves (total, action, video) against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    steps = np.array([r["step"] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "total"), ("loss_action", "L_act"), ("loss_video", "L_vid")):
        values = np.array([r[key] for r in rows])
        line, = ax.plot(steps, values, alpha=0.25, linewidth=0.8)
        window = max(1, len(values) // 20)  # running mean over 5 % of the run: single batches are noisy
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, color=line.get_color(), label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional: metrics.jsonl is always written
        return None
    return SummaryWriter(str(out / "tensorboard"))


# -- command line ------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="LeRobot dataset directory")
    parser.add_argument("--preset", default=None, help="tiny, small (default), wan22-5b or a YAML path")
    parser.add_argument("--variant", default=None, choices=["fastwam", "joint", "idm", "dual"],
                        help="the preset's (default fastwam); dual: one model for Fast-WAM and IDM inference (eval --mode picks)")
    parser.add_argument("--video-weight", type=float, default=None, help="lambda (0: no video co-training)")
    parser.add_argument("--idm-future-noise", type=float, default=None, metavar="SIGMA",
                        help="idm and dual: train the actions on a copy of the future noised at SIGMA; at inference the "
                             "imagined future is labelled SIGMA, not noised (default: the preset's, else 0: the clean future)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--ema", type=float, default=None, help="EMA decay (0: off)")
    parser.add_argument("--augment-shift", type=int, default=None,
                        help="random-shift augmentation: pixels each camera image moves at most (0: off)")
    parser.add_argument("--init-video", default=None, metavar="PATH",
                        help="start the video expert from a Wan2.2 DiT checkpoint (Wan's or diffusers' safetensors)")
    parser.add_argument("--init-action", default=None, choices=["random", "video"],
                        help="video: start the action expert from the loaded video expert, resized by interpolation")
    parser.add_argument("--distill-from", default=None, metavar="RUN",
                        help="few-step distillation: start from this trained run (its newest checkpoint: model, data "
                             "settings, normalization), freeze its video expert and teach its action expert to sample "
                             "in --student-steps steps")
    parser.add_argument("--student-steps", type=int, default=None,
                        help="with --distill-from: the action steps the student samples in (default 2; it is also "
                             "taught every smaller count)")
    parser.add_argument("--accumulate", type=int, default=None,
                        help="micro-batches (of --batch-size each, per process) per optimizer step (default 1)")
    parser.add_argument("--strategy", default=None, choices=STRATEGIES,
                        help="with several processes (accelerate launch): ddp (default) replicates the model; zero2 and "
                             "fsdp shard parameters, gradients, optimizer and EMA (`fastwam plan` sizes each)")
    parser.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="recompute each layer in the backward pass (activation memory ~1/layers)")
    parser.add_argument("--mixed-precision", default=None, choices=["no", "bf16"], help="compute dtype (default: the preset's)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--keep-checkpoints", type=int, default=None,
                        help="the newest checkpoints the run keeps, older ones deleted (default 2; 0: every one)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    parser.add_argument("--allow-changes", action="store_true",
                        help="with --resume: apply training settings that differ from the checkpoint's (else refused)")
    parser.add_argument("--recompute-stats", action="store_true", help="normalization stats from the data, not meta/stats.json")


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "ema": args.ema,
                                   "augment_shift": args.augment_shift, "init_video": args.init_video,
                                   "init_action": args.init_action, "seed": args.seed,
                                   "checkpoint_every": args.checkpoint_every, "keep_checkpoints": args.keep_checkpoints,
                                   "accumulate": args.accumulate,
                                   "strategy": args.strategy, "activation_checkpointing": args.activation_checkpointing,
                                   "mixed_precision": args.mixed_precision}.items() if v is not None}
    saved = _saved_run(args)
    if saved is not None and args.keep_checkpoints is None:  # a resumed run deletes no more than it did
        overrides["keep_checkpoints"] = saved.train.keep_checkpoints
    distilling = args.distill_from is not None or (saved is not None and bool(saved.train.distill_from))
    given = [name for name, value in (("--preset", args.preset), ("--variant", args.variant),
                                      ("--video-weight", args.video_weight),
                                      ("--idm-future-noise", args.idm_future_noise), ("--init-video", args.init_video),
                                      ("--init-action", args.init_action)) if value is not None]
    if distilling and given:
        where = "--distill-from" if args.distill_from is not None else f"--resume: {args.out} is a distillation"
        raise ValueError(f"{where}: the student is the teacher's model; {', '.join(given)} cannot change it")
    if saved is not None and saved.train.distill_from:  # resuming a distillation: its teacher and step count are the run's own
        teacher = args.distill_from and str(latest_checkpoint(args.distill_from).resolve())
        for option, asked, recorded in (("--distill-from", teacher, saved.train.distill_from),
                                        ("--student-steps", args.student_steps, saved.model.action_flow.steps)):
            if asked and asked != recorded:
                raise ValueError(f"--resume: {args.out} distils from {saved.train.distill_from} in "
                                 f"{saved.model.action_flow.steps} steps; {option} {asked} asks otherwise")
        return saved.replace(train=dataclasses.replace(saved.train, **overrides))
    if args.distill_from is None:
        if args.student_steps is not None:
            raise ValueError("--student-steps applies to --distill-from only")
        cfg = preset(args.preset or "small")
        cfg = cfg.with_variant(args.variant or cfg.model.variant.mask, args.video_weight, args.idm_future_noise)
        return cfg.replace(train=dataclasses.replace(cfg.train, **overrides))
    if args.recompute_stats:
        raise ValueError("--recompute-stats: a distilled student keeps its teacher's normalization")
    steps = 2 if args.student_steps is None else args.student_steps
    if steps < 1:
        raise ValueError(f"--student-steps: expected >= 1 action steps, got {steps}")
    teacher = latest_checkpoint(args.distill_from)
    teacher_cfg = Config.load(teacher / "config.yaml")
    if steps >= teacher_cfg.model.action_flow.steps:
        raise ValueError(f"--student-steps: expected fewer than the teacher's {teacher_cfg.model.action_flow.steps} "
                         f"action steps ({teacher}), got {steps}{' (the default)' if args.student_steps is None else ''}")
    train = dataclasses.replace(teacher_cfg.train, **{"init_video": "", "init_action": "random", **overrides},
                                distill_from=str(teacher.resolve()))
    return student_config(teacher_cfg, steps, train)


def _saved_run(args: argparse.Namespace) -> Config | None:
    """The config of the run ``--resume`` continues (None: not resuming one)."""
    if not args.resume or not (Path(args.out) / CHECKPOINTS).is_dir():
        return None
    return Config.load(newest_readable_config(args.out) / "config.yaml")


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    cfg = config_from_args(args)  # validated here, before any work
    out, data = Path(args.out).resolve(), Path(args.data).resolve()
    if args.allow_changes and not args.resume:
        raise SystemExit("fastwam train: --allow-changes applies to --resume only")
    if out == data or data in out.parents:
        raise ValueError(f"--out {args.out}: inside the dataset --data {args.data}, whose files a run would overwrite; "
                         "choose a directory outside it")
    is_main = PartialState(cpu=not torch.cuda.is_available()).is_main_process
    with run_lock(out) if is_main else contextlib.nullcontext():  # one writer per run directory
        return _train(args, cfg, Path(args.out), is_main)


def _train(args: argparse.Namespace, cfg: Config, out: Path, is_main: bool) -> int:
    saved = checkpoints(out)
    if not args.resume and saved:
        raise SystemExit(f"fastwam train: {out} already holds checkpoints: pass --resume to continue it, "
                         "or choose another --out")
    if args.resume and saved and int(saved[-1].name[5:]) > cfg.train.steps:  # equal: finished, nothing to do
        raise ValueError(f"--steps {cfg.train.steps}: {out} is already at step {int(saved[-1].name[5:])} "
                         f"({saved[-1]}); pass the run's --steps or a larger one to continue it")
    trainer = build_trainer(cfg, args.data, out, recompute_stats=args.recompute_stats, resume=args.resume,
                            allow_changes=args.allow_changes)
    if args.resume and is_main:
        print(f"resumed {out} at step {trainer.step}")
    try:
        trainer.run()
    except TrainingStopped as stop:
        if is_main:
            print(f"fastwam train: {stop}; `--resume` with the same command continues it", file=sys.stderr)
        return 128 + stop.signum  # the shell's code for a process ended by that signal
    if is_main:
        print(f"checkpoint: {latest_checkpoint(out)}\nloss curve: {out / 'loss.png'}\nmetrics:    {out / 'metrics.jsonl'}")
    return 0


def build_trainer(cfg: Config, data_dir: str | Path, out: str | Path, recompute_stats: bool = False,
                  progress: bool = True, resume: bool = False, allow_changes: bool = False) -> Trainer:
    """Load the dataset, its normalization and latents, and a trainer writing to ``out``
    (``resume``: continued from the newest intact checkpoint in ``out``, without reading
    ``train.init_video``; settings that differ from the checkpoint's are refused first, unless
    ``allow_changes``, so the run's config.yaml records what really runs)."""
    from accelerate import PartialState

    from fastwam.envs.collect import collection_info

    if resume:
        resume_changes(newest_readable_config(out), cfg, allow_changes)
    dataset = LeRobotDataset(data_dir, require=(STATE_KEY, ACTION_KEY))
    content = dataset.content_sha256()
    if resume:
        check_same_data(newest_readable_config(out), content)
    modes = {STATE_KEY: cfg.data.state_normalization, ACTION_KEY: cfg.data.action_normalization}
    if cfg.train.distill_from:  # the teacher's units: its samples are the student's targets
        if recompute_stats:
            raise ValueError("--recompute-stats: a distilled student keeps its teacher's normalization")
        normalizer = Normalizer.load(Path(cfg.train.distill_from) / "stats.json")
    else:
        normalizer = Normalizer.from_dataset(dataset, modes, recompute=recompute_stats)
    with PartialState(cpu=not torch.cuda.is_available()).main_process_first():  # one process encodes the latent cache, the others then read it
        data = load_training_data(cfg, dataset, normalizer, progress)
    try:
        collection = collection_info(data_dir)
    except FileNotFoundError:
        collection = {}  # recorded elsewhere: no MetaWorld variation record, nothing to keep disjoint
    info = {"dataset": str(Path(data_dir).resolve()), "dataset_sha256": content,
            "tasks": dataset.tasks, "episodes": dataset.num_episodes, "frames": dataset.num_frames,
            "collection": collection}
    Path(out).mkdir(parents=True, exist_ok=True)
    write_run_files(Path(out), cfg, normalizer, info)
    trainer = Trainer(cfg, data, normalizer, out, info, progress, init_weights=not resume)
    if resume:
        trainer.resume(allow_changes)
    return trainer
