"""``fastwam eval metaworld|libero``: closed-loop success rates of a checkpoint on a simulated benchmark.

The episode loop, the controller, statistics, recording and videos here serve every benchmark;
what differs (tasks, layouts, the env) is a small adapter behind ``fastwam.envs.benchmark(name)``.
Each episode starts a task from one *layout* (object placement) that the checkpoint's
demonstrations did not use; ``--split`` picks one of two disjoint sets:

- ``test`` (default): the reported layouts. MetaWorld: the variations the demonstrations left
  unused under the benchmark seed recorded at collection (read from the checkpoint's
  ``data.json``, so the dataset need not be on disk). LIBERO: the suite's 50 official init states.
- ``validation``: fresh layouts from the same distribution, for choosing a configuration or an
  eval setting without looking at the test layouts. MetaWorld: the variations of benchmark seed
  + 1000; LIBERO: placements sampled from the task's BDDL regions under seeds the demonstrations
  did not use. Checked against the demonstrations' layouts.

Every episode has its own policy seed. A receding-horizon controller executes ``--execute``
actions of each chunk (default half) and then replans; the env renders when the controller
replans (and, for videos and ``--imagination``, at the imagined frames' times). An episode succeeds when the env's success flag is raised at any step (it stops there)
within ``--max-steps``.

Episodes run in this process or on ``--workers`` spawned processes, one env and one policy each.

JSON keys: benchmark, suite, checkpoint, weights_sha256 (of its model.safetensors: which weights, even
when a run was retrained under the same path), training_data_sha256 (the content of the dataset it
trained on, ``LeRobotDataset.content_sha256``; "" for runs older than that record), episodes_per_task,
tasks.<task>.{success_rate, ci95 (Wilson 95 % interval), episodes, successes, mean_chunk_ms,
mean_boundary_jump and max_boundary_jump (the L2 change of the action where execution switches to a
new chunk), mean_jerk (the mean L2 norm
of the executed actions' second difference), mean_steps, mean_episode_seconds,
variations (each episode's layout: a MetaWorld variation index, a LIBERO ``init:i`` or
``fresh:seed``), training_variations, episode_success, episode_steps, episode_seconds},
mean_success_rate, mean_ci95, variant, mode (the inference procedure), video_weight, max_steps, execute, chunk,
delay, rtc_guidance (asynchronous execution and real-time chunking), denoise_steps,
noise_scale, seed, split, benchmark_seed (MetaWorld: of the layouts evaluated; else null),
training_benchmark_seed, env_options (how the env rendered, as the demonstrations were: MetaWorld
``shadows``, LIBERO ``antialias``), variations_disjoint, workers, wall_seconds, seconds_per_episode,
videos, date, machine, code (fastwam's version and git commit: ``fastwam.code_version``).

``--video OUT.mp4`` writes the first episode of each task (up to ``--video-episodes``) from the
frames the policy observed; for variants trained with video it also writes
``OUT_imagined.mp4``: at every replan, the frames the model imagines (top row) above the frames
that really came ``frame_stride * k`` steps later (bottom row).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing as mp
import os
import platform
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from fastwam import boot_id, code_version, cpu_name
from fastwam.checks import check_device, check_output_file, check_threads
from fastwam.envs import BENCHMARKS, benchmark

Z95 = 1.959963984540054
SPLITS = ("test", "validation")


# -- what to run -------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalPlan:
    """Everything an evaluation needs, picklable for worker processes."""

    checkpoint: str  # a checkpoint directory (model.safetensors, config.yaml, stats.json)
    tasks: tuple[str, ...]
    episodes: int
    variations: dict[str, tuple]  # task -> the layout of each episode (the benchmark's kind of layout)
    training_variations: dict[str, tuple]  # task -> layouts the demonstrations used
    benchmark_seed: int | None  # MetaWorld: the seed fixing the layouts evaluated
    training_benchmark_seed: int | None  # MetaWorld: the seed training_variations index
    split: str  # "test" or "validation" (SPLITS)
    image_size: int
    cameras: tuple[str, ...]
    frame_stride: int
    benchmark: str = "metaworld"  # fastwam.envs.BENCHMARKS
    suite: str = ""  # LIBERO: libero_object, ...
    env_options: dict = field(default_factory=dict)  # benchmark-specific env settings (adapter.make_env)
    max_steps: int = 200
    execute: int | None = None  # actions executed per chunk (None: chunk // 2)
    delay: int = 0  # simulated inference delay in env steps (asynchronous execution; RecedingHorizonController)
    guidance: float = 0.0  # real-time chunking's guidance cap (0: none; with delay > 0, naive asynchronous execution)
    seed: int = 0
    steps: int | None = None  # denoising steps (None: the checkpoint's)
    action_shift: float | None = None  # action timestep shift when sampling (None: the checkpoint's)
    noise_scale: float = 1.0  # scale of the initial action noise (Policy.noise_scale)
    mode: str = ""  # inference procedure (dual checkpoints: action_only or video_then_action; "": the variant's)
    device: str = "cpu"
    threads: int = 0  # torch threads per process (0: torch's default)
    recorded: int = 0  # episodes kept for the video
    every_step: bool = False  # video frames at every step, not only at replans
    imagine: bool = False  # also record imagined future frames (variants trained with video)
    score_imagination: bool = False  # score every episode's imagined frames against the real ones (fastwam.imagination)
    code: str = ""  # the code evaluating (fastwam.code_version), taken when the plan is made: before any edit
    training_data_sha256: str = ""  # the demonstrations' content (data.json; "": trained before the record)

    def episode_list(self) -> list["Episode"]:
        """All episodes, task by task; the first ``recorded`` in (episode, task) order are recorded."""
        order = sorted(((e, i) for i in range(len(self.tasks)) for e in range(self.episodes)))
        record = set(order[: self.recorded])
        return [Episode(task, e, self.variations[task][e], episode_seed(self.seed, task, e), (e, i) in record)
                for i, task in enumerate(self.tasks) for e in range(self.episodes)]


@dataclass(frozen=True)
class Episode:
    task: str
    index: int
    variation: int | str  # the layout: a MetaWorld variation index, a LIBERO "init:i" / "fresh:seed"
    seed: int  # seeds the policy's sampling noise
    record: bool  # keep frames for the video


@dataclass
class EpisodeResult:
    task: str
    index: int
    variation: int | str  # the layout
    seed: int
    success: bool
    steps: int  # env steps taken (the step of the first success, or max_steps)
    chunk_ms: list[float]  # policy latency of every chunk
    seconds: float  # wall time of the whole episode
    frames: dict[int, np.ndarray] = field(default_factory=dict)  # step -> uint8 (H, W, 3), recorded episodes
    imagined: dict[int, np.ndarray] = field(default_factory=dict)  # replan step -> uint8 (Tf, H, W, 3)
    imagination: list[list[float]] = field(default_factory=list)  # [replan step, k, psnr, ssim] (score_imagination)
    boundary_jumps: list[float] = field(default_factory=list)  # L2 change of the action at each switch of chunk
    jerk: float | None = None  # mean L2 norm of the executed actions' second difference


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, center - half)  # exact at the ends (no rounding residue)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


def episode_seed(seed: int, task: str, index: int) -> int:
    """A distinct, reproducible policy seed per (run seed, task, episode)."""
    return zlib.crc32(f"{seed}/{task}/{index}".encode())


# -- planning from a checkpoint ------------------------------------------------------------------

def run_info(checkpoint: Path) -> dict:
    """The ``data.json`` of a checkpoint directory (or of its run directory)."""
    for path in (checkpoint / "data.json", checkpoint.parent.parent / "data.json"):
        if path.is_file():
            return json.loads(path.read_text())
    return {}


def make_plan(checkpoint: str | Path, episodes: int, tasks: str | Sequence[str] | None = None, *,
              benchmark_name: str = "metaworld", suite: str = "", allow_any_variation: bool = False,
              max_steps: int | None = None, execute: int | None = None, delay: int = 0, guidance: float = 0.0,
              seed: int = 0, steps: int | None = None, action_shift: float | None = None,
              noise_scale: float = 1.0, mode: str = "", device: str = "cpu", threads: int = 0,
              video_episodes: int = 0, every_step: bool = False, split: str = "test",
              score_imagination: bool = False) -> EvalPlan:
    """Resolve the checkpoint, the tasks and each episode's layout; validate the numbers."""
    from fastwam.config import Config
    from fastwam.checkpoint import latest_checkpoint

    if not Path(checkpoint).exists():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no such file or directory")
    path = latest_checkpoint(checkpoint)
    if split not in SPLITS:
        raise ValueError(f"--split: expected one of {', '.join(SPLITS)}, got {split!r}")
    adapter = benchmark(benchmark_name)
    if episodes < 1 or (max_steps is not None and max_steps < 1) or video_episodes < 0:
        raise ValueError(f"need --episodes >= 1, --max-steps >= 1, --video-episodes >= 0; "
                         f"got {episodes}, {max_steps}, {video_episodes}")
    if not (math.isfinite(noise_scale) and noise_scale >= 0):
        raise ValueError(f"--noise-scale: expected a finite number >= 0, got {noise_scale}")
    if steps is not None and steps < 1:
        raise ValueError(f"--steps: expected >= 1 denoising steps, got {steps}")
    if action_shift is not None and not (math.isfinite(action_shift) and action_shift > 0):
        raise ValueError(f"--action-shift: expected a finite number > 0, got {action_shift}")
    cfg = Config.load(path / "config.yaml")
    modes = cfg.model.variant.modes
    if score_imagination and not cfg.model.variant.has_future:
        raise ValueError(f"imagination scoring: {path} was trained without video (video_weight = 0); it imagines nothing")
    if mode and mode not in modes:
        raise ValueError(f"--mode: {path} (variant {cfg.model.variant.mask!r}) runs {' or '.join(modes)}, got {mode!r}")
    if execute is not None and not 1 <= execute <= cfg.model.chunk:
        raise ValueError(f"--execute: expected 1..{cfg.model.chunk} (the checkpoint's chunk), got {execute}")
    executed = execute or cfg.model.chunk // 2
    if not 0 <= delay <= cfg.model.chunk - executed:
        raise ValueError(f"--delay: expected 0..{cfg.model.chunk - executed} steps (chunk {cfg.model.chunk} - execute "
                         f"{executed}), got {delay}")
    if not (math.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"--rtc-guidance: expected a finite number >= 0, got {guidance}")
    if guidance and executed >= cfg.model.chunk:
        raise ValueError(f"--rtc-guidance: guides the overlap of consecutive chunks; --execute {executed} of "
                         f"{cfg.model.chunk} actions leaves none")
    if guidance and (mode or cfg.model.variant.inference) == "joint":
        raise ValueError("--rtc-guidance: real-time chunking steers action-only steps; joint inference has none")
    try:
        adapter.check(cfg)
        info = run_info(path)
        layouts = adapter.plan(info, tasks, episodes, split, suite, allow_any_variation)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    plan = EvalPlan(
        checkpoint=str(path), tasks=layouts.tasks, episodes=episodes, variations=layouts.episodes,
        training_variations=layouts.training, benchmark_seed=layouts.benchmark_seed,
        training_benchmark_seed=layouts.training_benchmark_seed, split=split, image_size=cfg.data.image_size,
        cameras=tuple(cfg.data.cameras), frame_stride=cfg.data.frame_stride, benchmark=benchmark_name,
        suite=layouts.suite, env_options=layouts.env_options,
        max_steps=adapter.default_max_steps(layouts.suite) if max_steps is None else max_steps,
        execute=execute, delay=delay, guidance=guidance, seed=seed, steps=steps, action_shift=action_shift, noise_scale=noise_scale,
        mode=mode or cfg.model.variant.inference,
        device=device, threads=threads,
        recorded=video_episodes, every_step=every_step, imagine=video_episodes > 0 and cfg.model.variant.has_future,
        score_imagination=score_imagination, code=code_version(), training_data_sha256=info.get("dataset_sha256", ""),
    )
    seen = [t for t in plan.tasks if not adapter.disjoint(plan, t)]
    if seen:
        where = f" (benchmark seed {plan.benchmark_seed})" if plan.benchmark_seed is not None else ""
        raise ValueError(f"--split {split}{where} repeats a layout the demonstrations of {seen} used; "
                         "expected layouts the demonstrations did not use")
    return plan


# -- one episode -------------------------------------------------------------------------------

class Recorder:
    """Frames of one episode for the videos and the imagination scores.

    Keeps what the policy observed (at replans and history times) and, when asked, every step's
    frame; for imagining variants, the imagined future at each replan and the real frames at the
    imagined times (t + frame_stride * k), rendered only for this episode.
    """

    def __init__(self, policy, every_step: bool, imagine: bool, frame_stride: int, seed: int):
        import torch

        self.policy, self.every_step, self.imagine, self.stride = policy, every_step, imagine, frame_stride
        self.frames: dict[int, np.ndarray] = {}
        self.imagined: dict[int, np.ndarray] = {}
        self._wanted: set[int] = set()
        self._generator = torch.Generator(device=policy.device).manual_seed(seed + 1)

    def replanned(self, step: int, observation: dict) -> None:
        """The policy planned from ``observation`` (history included) at ``step``."""
        if self.imagine:
            self.imagined[step] = self._imagine(observation)
            self._wanted.update(step + self.stride * k for k in range(1, len(self.imagined[step]) + 1))

    def wants(self, step: int) -> bool:
        return step not in self.frames and (self.every_step or step in self._wanted)

    def _imagine(self, observation: dict) -> np.ndarray:
        """The policy's imagined frames, drawn from a noise stream of their own (the actions' is untouched)."""
        actions_generator, self.policy.generator = self.policy.generator, self._generator
        try:
            return self.policy.imagine(observation)
        finally:
            self.policy.generator = actions_generator


def run_episode(plan: EvalPlan, policy, env, episode: Episode) -> EpisodeResult:
    """One closed-loop episode until the first success or ``plan.max_steps`` steps."""
    from fastwam.policy import RecedingHorizonController

    start = time.perf_counter()
    controller = RecedingHorizonController(policy, plan.execute, plan.delay, plan.guidance)
    controller.reset(episode.seed)
    env.reset(episode.variation)
    recorder = None
    if episode.record or plan.score_imagination:
        recorder = Recorder(policy, plan.every_step and episode.record, plan.imagine or plan.score_imagination,
                            plan.frame_stride, episode.seed)

    def observe() -> dict:
        image = recorder.frames.get(env.steps) if recorder else None
        observation = {"image": env.render() if image is None else image, "state": env.proprio(),
                       "instruction": env.instruction}
        if recorder:
            recorder.frames[env.steps] = observation["image"]
        return observation

    success = False
    while not success and env.steps < plan.max_steps:
        step, chunks = env.steps, controller.chunks
        action = controller.act(observe)
        if recorder and controller.chunks > chunks:
            recorder.replanned(step, controller.last_observation)
        _, success, _ = env.step(action)
        if recorder and recorder.wants(env.steps):
            recorder.frames[env.steps] = env.render()
    if episode.record and env.steps not in recorder.frames:
        recorder.frames[env.steps] = env.render()  # the final state, for the video's last frame
    seconds = time.perf_counter() - start
    pairs = []
    if plan.score_imagination:
        from fastwam.imagination import score_episode

        pairs = score_episode(recorder.imagined, recorder.frames, plan.frame_stride)
    kept = recorder if episode.record else None  # frames travel back only for the videos
    return EpisodeResult(
        task=episode.task, index=episode.index, variation=episode.variation, seed=episode.seed, success=success,
        steps=env.steps, chunk_ms=[s * 1e3 for s in controller.chunk_seconds], seconds=seconds,
        frames=kept.frames if kept else {}, imagined=kept.imagined if kept else {}, imagination=pairs,
        boundary_jumps=controller.boundary_jumps, jerk=controller.jerk(),
    )


# -- processes: one policy and one env each ------------------------------------------------------

_PROCESS: dict = {}  # "plan", "policy", "env" of this process


def _init_process(plan: EvalPlan) -> None:
    import torch

    if plan.threads:
        torch.set_num_threads(plan.threads)
    _close_process()
    _PROCESS["plan"] = plan


def _init_worker(plan: EvalPlan, workers: int) -> None:
    from multiprocessing.util import Finalize

    from fastwam.envs import share_cores

    share_cores(workers)
    _init_process(plan)
    # Close the env as the worker exits, before atexit: mujoco terminates its EGL display in an atexit
    # hook, and a renderer freed after that (or at interpreter teardown) prints a traceback per worker.
    Finalize(None, _close_process, exitpriority=0)


def _process_policy(plan: EvalPlan):
    if "policy" not in _PROCESS:
        from fastwam.policy import Policy

        _PROCESS["policy"] = Policy.from_checkpoint(plan.checkpoint, device=plan.device, steps=plan.steps,
                                                    seed=plan.seed, noise_scale=plan.noise_scale,
                                                    mode=plan.mode or None, action_shift=plan.action_shift)
    return _PROCESS["policy"]


def _process_env(plan: EvalPlan, task: str):
    """This process's env, rebuilt when the task changes (one rendering env per process)."""
    env = _PROCESS.get("env")
    if env is None or env.task != task:
        if env is not None:
            env.close()
        env = benchmark(plan.benchmark).make_env(plan, task)
        _PROCESS["env"] = env
    return env


def _close_process() -> None:
    env = _PROCESS.pop("env", None)
    if env is not None:
        env.close()
    _PROCESS.clear()


def _episode_job(episode: Episode) -> EpisodeResult:
    plan = _PROCESS["plan"]
    return run_episode(plan, _process_policy(plan), _process_env(plan, episode.task), episode)


@contextmanager
def _episode_runner(plan: EvalPlan, workers: int) -> Iterator:
    """A function mapping episodes to results as they finish: in this process, or on spawned workers."""
    if workers <= 1:
        import torch

        threads = torch.get_num_threads()
        _init_process(plan)
        try:
            yield lambda episodes: map(_episode_job, episodes)
        finally:
            _close_process()
            torch.set_num_threads(threads)  # the caller's setting, as it was
        return
    pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(plan, workers))
    try:
        yield lambda episodes: pool.imap_unordered(_episode_job, episodes, chunksize=1)
    except BaseException:
        pool.terminate()
        raise
    pool.close()  # a clean exit, not terminate(): workers release their locks (no "leaked semaphore" warning)
    pool.join()


def evaluate(plan: EvalPlan, workers: int = 1, progress: bool = True) -> list[EpisodeResult]:
    """Run every episode of the plan; results in (task, episode) order."""
    from tqdm import tqdm

    episodes = plan.episode_list()
    results = []
    with _episode_runner(plan, min(workers, len(episodes))) as run_all:
        bar = tqdm(run_all(episodes), total=len(episodes), desc="eval", unit="ep", disable=not progress)
        for result in bar:
            results.append(result)
            bar.set_postfix(success=f"{sum(r.success for r in results)}/{len(results)}")
        bar.close()
    order = {(e.task, e.index): i for i, e in enumerate(episodes)}
    return sorted(results, key=lambda r: order[(r.task, r.index)])


# -- results -----------------------------------------------------------------------------------

def summarize(plan: EvalPlan, results: list[EpisodeResult], wall_seconds: float, workers: int) -> dict:
    """The JSON record of an evaluation (keys in the module docstring)."""
    import torch

    from fastwam.checkpoint import sha256
    from fastwam.config import Config

    cfg = Config.load(Path(plan.checkpoint) / "config.yaml")
    tasks = {}
    for task in plan.tasks:
        mine = [r for r in results if r.task == task]
        wins = sum(r.success for r in mine)
        chunk_ms = [ms for r in mine for ms in r.chunk_ms]
        tasks[task] = {
            "success_rate": wins / len(mine), "ci95": list(wilson_interval(wins, len(mine))),
            "episodes": len(mine), "successes": wins,
            "mean_chunk_ms": float(np.mean(chunk_ms)) if chunk_ms else 0.0,
            "mean_boundary_jump": float(np.mean(jumps)) if (jumps := [j for r in mine for j in r.boundary_jumps]) else None,
            "max_boundary_jump": float(np.max(jumps)) if jumps else None,
            "mean_jerk": float(np.mean(jerks)) if (jerks := [r.jerk for r in mine if r.jerk is not None]) else None,
            "mean_steps": float(np.mean([r.steps for r in mine])),
            "mean_episode_seconds": float(np.mean([r.seconds for r in mine])),
            "variations": [r.variation for r in mine], "training_variations": list(plan.training_variations[task]),
            "episode_success": [r.success for r in mine], "episode_steps": [r.steps for r in mine],
            "episode_seconds": [round(r.seconds, 3) for r in mine],
        }
    wins, n = sum(t["successes"] for t in tasks.values()), sum(t["episodes"] for t in tasks.values())
    return {
        "benchmark": plan.benchmark, "suite": plan.suite, "checkpoint": plan.checkpoint,
        "weights_sha256": sha256(Path(plan.checkpoint) / "model.safetensors"),
        "training_data_sha256": plan.training_data_sha256,
        "episodes_per_task": plan.episodes, "tasks": tasks,
        "mean_success_rate": float(np.mean([t["success_rate"] for t in tasks.values()])),
        "mean_ci95": list(wilson_interval(wins, n)),
        "variant": cfg.model.variant.mask, "mode": plan.mode, "video_weight": cfg.model.variant.video_weight,
        "max_steps": plan.max_steps, "execute": plan.execute or cfg.model.chunk // 2, "chunk": cfg.model.chunk,
        "delay": plan.delay, "rtc_guidance": plan.guidance,
        "denoise_steps": plan.steps or cfg.model.action_flow.steps, "trained_steps": cfg.model.action_flow.steps,
        "distilled_from": cfg.train.distill_from,
        "action_shift": plan.action_shift or cfg.model.action_flow.shift, "noise_scale": plan.noise_scale, "seed": plan.seed,
        "split": plan.split, "benchmark_seed": plan.benchmark_seed,
        "training_benchmark_seed": plan.training_benchmark_seed, "env_options": plan.env_options,
        "variations_disjoint": all(benchmark(plan.benchmark).disjoint(plan, task) for task in plan.tasks),
        "workers": workers, "wall_seconds": round(wall_seconds, 2),
        "seconds_per_episode": round(float(np.mean([r.seconds for r in results])), 3), "videos": [],
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "code": plan.code,
        "machine": f"{platform.node()}: {plan.device}, {cpu_name()}, "
                   f"{os.cpu_count()} cpus, {plan.threads or torch.get_num_threads()} torch threads per process",
        "boot_id": boot_id(),  # timings compare between records of one boot of one machine
    }


def sampler_line(summary: dict) -> str:
    """How actions were sampled, saying so when the step count is not the one the checkpoint was
    trained (or distilled) for."""
    steps, trained = summary["denoise_steps"], summary.get("trained_steps", summary["denoise_steps"])
    line = f"sampler: {summary['mode']}, {steps} action steps"
    if "action_shift" in summary:
        line += f", shift {summary['action_shift']:g}"
    if summary.get("distilled_from"):
        line += f", distilled from {summary['distilled_from']}"
    if steps != trained:
        line += f" (NOTE: the checkpoint was trained for {trained} steps)"
    return line


def format_table(summary: dict) -> str:
    width = max([28, *map(len, summary["tasks"])])
    name = {"metaworld": "MetaWorld", "libero": "LIBERO"}[summary["benchmark"]]
    title = f"closed-loop {name} {summary['suite']}".rstrip()
    lines = [f"{title} ({summary['split']} layouts): {summary['checkpoint']}, "
             f"{summary['episodes_per_task']} episodes per task, "
             f"<= {summary['max_steps']} steps, {summary['execute']} of {summary['chunk']} actions per chunk",
             sampler_line(summary),
             f"{'task':<{width}} {'episodes':>8} {'success':>8} {'95% interval':>15} {'chunk ms':>9}"]
    for task, t in summary["tasks"].items():
        lo, hi = t["ci95"]
        lines.append(f"{task:<{width}} {t['episodes']:>8} {t['success_rate']:>8.1%} {f'{lo:.0%}-{hi:.0%}':>15} "
                     f"{t['mean_chunk_ms']:>9.1f}")
    lo, hi = summary["mean_ci95"]
    n = sum(t["episodes"] for t in summary["tasks"].values())
    ms = np.mean([t["mean_chunk_ms"] for t in summary["tasks"].values()])
    lines.append(f"{'mean':<{width}} {n:>8} {summary['mean_success_rate']:>8.1%} {f'{lo:.0%}-{hi:.0%}':>15} {ms:>9.1f}")
    lines.append(f"{summary['wall_seconds']:.1f} s wall, {summary['seconds_per_episode']:.2f} s per episode, "
                 f"{summary['workers']} worker(s)")
    return "\n".join(lines)


def format_imagination(record: dict) -> str:
    """The imagination scores as a table: PSNR and SSIM per task and horizon."""
    horizons = record["horizons"]
    head = "".join(f"{f'psnr t+{h}':>11}{f'ssim t+{h}':>11}" for h in horizons)
    lines = [f"imagination ({record['pairs']} imagined frames scored)", f"{'task':<32}{head}"]

    def cells(psnr, ssim):
        return "".join(f"{_number(psnr[str(h)], 1):>11}{_number(ssim[str(h)], 3):>11}" for h in horizons)

    for task in record["psnr"]["tasks"]:
        lines.append(f"{task[:31]:<32}" + cells(record["psnr"]["tasks"][task]["by_horizon"],
                                                 record["ssim"]["tasks"][task]["by_horizon"]))
    lines.append(f"{'all':<32}" + cells(record["psnr"]["by_horizon"], record["ssim"]["by_horizon"]))
    for scope in ("across_tasks", "across_episodes"):
        corr = record["correlation"][scope]
        lines.append(f"success vs quality {scope.replace('_', ' ')}: " + ", ".join(
            f"{m} rho {_number(corr[m]['spearman'], 2)} (p {_number(corr[m]['p'], 3)}, n {corr[m]['n']})"
            for m in ("psnr", "ssim")))
    return "\n".join(lines)


def _number(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# -- videos ------------------------------------------------------------------------------------

GREEN, RED, GRAY = (40, 160, 60), (190, 50, 40), (90, 90, 90)
IMAGINED_FPS = 5  # replans per second in the imagined-vs-real video: slow enough to compare the rows


def _scale(image: np.ndarray, height: int) -> np.ndarray:
    """Nearest-neighbour upscaling by the integer factor that brings the height closest to ``height``."""
    factor = max(1, round(height / image.shape[0]))
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def fit_caption(text: str, width: int) -> str:
    """``text`` as it fits a caption bar ``width`` pixels wide: cut at the end, marked "...", when too long.
    Captions put what changes first (step, outcome) and a long LIBERO task name last."""
    from PIL import Image, ImageDraw

    length = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength  # the font ``_caption`` draws with
    room = width - 8  # 4 px of margin each side
    if length(text) <= room:
        return text
    while text and length(text + "...") > room:
        text = text[:-1]
    return text + "..."


def _caption(image: np.ndarray, text: str, color: tuple[int, int, int]) -> np.ndarray:
    """A coloured bar with ``text`` (cut to fit) above the image."""
    from PIL import Image, ImageDraw

    bar = Image.new("RGB", (image.shape[1], 16), color)
    ImageDraw.Draw(bar).text((4, 2), fit_caption(text, image.shape[1]), fill=(255, 255, 255))
    return np.concatenate([np.asarray(bar), image], axis=0)


def rollout_frames(result: EpisodeResult, height: int = 256) -> list[np.ndarray]:
    """The recorded frames of one episode, upscaled and captioned with task, variation, step and outcome."""
    outcome = "success" if result.success else "failure"
    color = GREEN if result.success else RED
    return [_caption(_scale(result.frames[step], height),
                     f"step {step}  {outcome} at {result.steps}  layout {result.variation}  {result.task}", color)
            for step in sorted(result.frames)]


def imagined_frames(result: EpisodeResult, frame_stride: int, height: int = 128) -> list[np.ndarray]:
    """Per replan at step t: [now | imagined t+r | imagined t+2r ...] above [now | real t+r | real t+2r ...]."""
    out = []
    for step in sorted(result.imagined):
        now, imagined = result.frames[step], list(result.imagined[step])
        real = [result.frames.get(step + frame_stride * k) for k in range(1, len(imagined) + 1)]
        real = [np.full_like(now, GRAY[0]) if f is None else f for f in real]  # past the episode's end
        top = np.concatenate([_scale(f, height) for f in [now, *imagined]], axis=1)
        bottom = np.concatenate([_scale(f, height) for f in [now, *real]], axis=1)
        separator = np.full((2, top.shape[1], 3), 255, np.uint8)
        columns = " | ".join(["now"] + [f"+{frame_stride * k}" for k in range(1, len(imagined) + 1)])
        out.append(_caption(np.concatenate([top, separator, bottom], axis=0),
                            f"step {step}: {columns}  (top imagined, bottom real)  {result.task}",
                            GREEN if result.success else RED))
    return out


def write_mp4(frames: list[np.ndarray], path: str | Path, fps: Fraction | int) -> Path:
    """uint8 RGB frames (all one size) -> an H.264 MP4 (yuv420p, even-padded)."""
    import av

    if not frames:
        raise ValueError(f"{path}: no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    height, width = height + height % 2, width + width % 2
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18"}
        for image in frames:
            padded = np.zeros((height, width, 3), np.uint8)
            padded[: image.shape[0], : image.shape[1]] = image
            container.mux(stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")))
        container.mux(stream.encode())
    return path


def _same_size(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Pad frames with black to the largest height and width among them."""
    height, width = max(f.shape[0] for f in frames), max(f.shape[1] for f in frames)
    out = []
    for f in frames:
        padded = np.zeros((height, width, 3), np.uint8)
        padded[: f.shape[0], : f.shape[1]] = f
        out.append(padded)
    return out


def _recorded(plan: EvalPlan, results: list[EpisodeResult]) -> list[EpisodeResult]:
    """The episodes with frames, in the videos' order."""
    return [r for r in sorted(results, key=lambda r: (r.index, plan.tasks.index(r.task))) if r.frames]


def _imagined_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}_imagined{path.suffix or '.mp4'}")


def video_paths(plan: EvalPlan, results: list[EpisodeResult], path: str | Path) -> list[str]:
    """The files ``write_videos`` writes for these results."""
    recorded = _recorded(plan, results)
    if not recorded:
        return []
    imagined = plan.imagine and any(r.imagined for r in recorded)  # imagined_frames draws a panel per entry
    return [str(path)] + ([str(_imagined_path(path))] if imagined else [])


def write_videos(plan: EvalPlan, results: list[EpisodeResult], path: str | Path) -> list[str]:
    """The rollout MP4 at ``path`` and, for imagining variants, ``<stem>_imagined.mp4``; returns the paths."""
    recorded = _recorded(plan, results)
    if not recorded:
        return []
    execute = plan.execute or _chunk(plan) // 2
    fps = Fraction(benchmark(plan.benchmark).control_fps, 1 if plan.every_step else execute)
    hold = max(1, round(float(fps)))  # one second on each episode's last frame
    frames = []
    for result in recorded:
        episode = rollout_frames(result)
        frames += episode + [episode[-1]] * hold
    paths = [write_mp4(_same_size(frames), path, fps)]
    if plan.imagine:
        panels = [f for r in recorded for f in imagined_frames(r, plan.frame_stride)]
        if panels:
            paths.append(write_mp4(_same_size(panels), _imagined_path(path), IMAGINED_FPS))
    return [str(p) for p in paths]


def _chunk(plan: EvalPlan) -> int:
    from fastwam.config import Config

    return Config.load(Path(plan.checkpoint) / "config.yaml").model.chunk


# -- command line ------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benchmark", choices=(*BENCHMARKS, "imagination"),
                        help="simulated benchmark; imagination: the checkpoint's own benchmark, scoring imagined "
                             "frames (as --imagination) and writing that record to --json")
    parser.add_argument("--suite", default="", help="LIBERO suite: libero_spatial, libero_object, libero_goal, "
                                                    "libero_10 (default: the one the checkpoint's demonstrations "
                                                    "were collected in)")
    parser.add_argument("--checkpoint", required=True,
                        help="run directory (its newest checkpoint) or checkpoint directory")
    parser.add_argument("--episodes", type=int, default=50, help="episodes per task")
    parser.add_argument("--tasks", default="", help="comma list of tasks and/or sets (mt10, easy, ...); "
                                                    "default: the checkpoint's training tasks (LIBERO: every "
                                                    "task its demonstrations were collected for, also one left "
                                                    "without any; 'all': the whole suite)")
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--video", default="", help="MP4 of the first rollouts (plus <stem>_imagined.mp4 for variants "
                                                    "trained with video)")
    parser.add_argument("--video-episodes", type=int, default=4, help="episodes in the video: the first of each task")
    parser.add_argument("--video-every-step", action="store_true",
                        help="render every step of the recorded episodes (default: only the frames the policy saw)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="episode bound in env steps (default: MetaWorld 200; LIBERO the suite's, as openpi)")
    parser.add_argument("--execute", type=int, default=None, help="actions executed per chunk before replanning "
                                                                  "(default: half the chunk)")
    parser.add_argument("--delay", type=int, default=0,
                        help="asynchronous execution: simulated inference delay in env steps; the next chunk is "
                             "requested this many steps before the current one runs out (default 0: synchronous)")
    parser.add_argument("--rtc-guidance", type=float, default=0.0,
                        help="real-time chunking: guide each chunk toward the previous one's overlap with this "
                             "weight cap (the paper's beta, e.g. 10; 0: off)")
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps (default: the checkpoint's; a distilled student's are its trained count)")
    parser.add_argument("--action-shift", type=float, default=None,
                        help="action timestep shift of the sampler (1: uniform steps; default: the checkpoint's)")
    parser.add_argument("--noise-scale", type=float, default=1.0,
                        help="scale of the initial action noise: 1 samples the learned distribution, 0 is deterministic")
    parser.add_argument("--mode", default="", choices=["", "action_only", "video_then_action", "joint"],
                        help="inference procedure (default: the checkpoint's; a dual checkpoint runs action_only "
                             "(Fast-WAM) or video_then_action (IDM))")
    parser.add_argument("--seed", type=int, default=0, help="policy seed (each episode gets its own from it)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes, one env and one policy each")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per process (0: torch's default with 1 worker, cpus / workers otherwise)")
    parser.add_argument("--device", default="", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--split", choices=SPLITS, default="test",
                        help="test: the reported layouts (MetaWorld: the variations the demonstrations left unused; "
                             "LIBERO: the official init states); validation: fresh layouts the demonstrations did not "
                             "use, for choosing settings without the test ones")
    parser.add_argument("--allow-any-variation", action="store_true",
                        help="evaluate even when the checkpoint does not record which variations it trained on")
    parser.add_argument("--imagination", default="", metavar="OUT.json",
                        help="also score every episode's imagined frames against the real ones (PSNR, SSIM per "
                             "task and horizon, their correlation with success) and write that record here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def recorded_benchmark(checkpoint: str | Path) -> str:
    """The benchmark a checkpoint's demonstrations were collected in (``data.json``'s collection record)."""
    from fastwam.checkpoint import latest_checkpoint

    collection = run_info(latest_checkpoint(checkpoint)).get("collection") or {}
    name = collection.get("benchmark") or collection.get("suite")
    if name not in BENCHMARKS:
        raise ValueError(f"{checkpoint}: its data.json records no benchmark the demonstrations came from "
                         f"(collection {name!r}); name one of {', '.join(BENCHMARKS)} instead of imagination")
    return name


def imagination_record(plan: EvalPlan, results: list[EpisodeResult], summary: dict) -> dict:
    """The imagination JSON: the evaluation's identity, the scores (``fastwam.imagination``), each episode's."""
    from fastwam import imagination

    episodes = [{"task": r.task, "index": r.index, "variation": r.variation, "success": r.success,
                 "pairs": r.imagination} for r in results]
    keys = ("benchmark", "suite", "checkpoint", "episodes_per_task", "variant", "mode", "split", "seed",
            "denoise_steps", "mean_success_rate", "date", "machine", "boot_id", "weights_sha256", "training_data_sha256",
            "code")
    return {**{k: summary[k] for k in keys}, **imagination.summarize(episodes, plan.frame_stride),
            "episodes": episodes}


def run(args: argparse.Namespace) -> int:
    import torch

    alias = args.benchmark == "imagination"
    try:
        if args.workers < 1:
            raise ValueError(f"--workers: expected at least 1 worker process, got {args.workers}")
        workers = args.workers
        threads = check_threads("--threads", args.threads) or (0 if workers == 1 else max(1, (os.cpu_count() or 1) // workers))
        if args.device:
            check_device("--device", args.device)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        for option, path in (("--json", args.json), ("--imagination", args.imagination), ("--video", args.video)):
            if path:
                check_output_file(option, path)
        if alias and args.imagination:
            raise ValueError("eval imagination writes its record to --json; --imagination is for eval metaworld|libero")
        if args.imagination and Path(args.imagination).resolve() == Path(args.json or ".").resolve():
            raise ValueError(f"--imagination {args.imagination}: expected another file than --json's")
        name = recorded_benchmark(args.checkpoint) if alias else args.benchmark
        plan = make_plan(args.checkpoint, args.episodes, args.tasks or None, benchmark_name=name,
                         suite=args.suite,
                         allow_any_variation=args.allow_any_variation, max_steps=args.max_steps, execute=args.execute,
                         delay=args.delay, guidance=args.rtc_guidance,
                         seed=args.seed, steps=args.steps, action_shift=args.action_shift, noise_scale=args.noise_scale,
                         mode=args.mode, device=device,
                         threads=threads,
                         video_episodes=args.video_episodes if args.video else 0, every_step=args.video_every_step,
                         split=args.split, score_imagination=alias or bool(args.imagination))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"fastwam eval: {e}") from e
    start = time.perf_counter()
    results = evaluate(plan, workers, progress=not args.quiet)
    summary = summarize(plan, results, time.perf_counter() - start, workers)
    if args.video:  # the record names the videos; they are written after it, so a failed video loses no record
        summary["videos"] = video_paths(plan, results, args.video)
    print(format_table(summary))
    records = {args.json: summary} if not alias else {}
    if plan.score_imagination:
        record = imagination_record(plan, results, summary)
        print(format_imagination(record))
        records[args.json if alias else args.imagination] = record
    for out, record in records.items():
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
            print(f"wrote {out}")
    if args.video:
        write_videos(plan, results, args.video)
    for path in summary["videos"]:
        print(f"video: {path}")
    return 0

