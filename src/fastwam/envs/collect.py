"""``fastwam collect metaworld|libero``: scripted-expert demonstrations as a LeRobot v3.0 dataset.

This module records MetaWorld and owns the command line; LIBERO's recording is
``fastwam.envs.libero_collect`` (it shares the worker pool and the dataset writer).

For each task, the expert is first run on variations 0, 1, 2, ... without rendering (about
0.1 s each) until ``--episodes`` of them succeed within ``--max-steps``; failures are noted and
skipped. The successful variations are then replayed with rendering (MetaWorld is
deterministic: the replay takes the same steps) and recorded until ``--steps-after-success``
steps after the first success. Every recorded episode therefore succeeds, each on its own
variation. Both phases run on ``--workers`` processes, one env each; episodes are written in
task, then variation order, whatever the workers' timing.

Recorded per step t: the image(s) before action t, proprio (end-effector xyz + gripper
opening), the expert action (clipped to [-1, 1]). Which variations were used (and which failed)
is stored in ``meta/fastwam.json``; ``used_variations(dataset_dir)`` reads it back.

Each recorded layout is stored at once by the worker that recorded it (``DemoStore``,
``<out>.recorded/``): a collection that stops (Ctrl-C, a crash, a failed video encode, a machine
taken back) keeps them, and the same command again records only what is missing.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from fastwam import code_version
from fastwam.data.lerobot import COLLECTION_LOG, VIDEO_ENCODINGS, LeRobotWriter, build_features, camera_key
from fastwam.envs import metaworld as mw

FPS = mw.CONTROL_FPS  # MetaWorld control rate: 5 physics steps of 2.5 ms per action
STATE_NAMES = ["ee_x", "ee_y", "ee_z", "gripper_opening"]
ACTION_NAMES = ["dx", "dy", "dz", "gripper"]


@dataclass(frozen=True)
class CollectSpec:
    """What to record (everything but the output place and the worker count)."""

    tasks: tuple[str, ...]
    episodes: int = 10
    image_size: int = 64
    cameras: tuple[str, ...] = ("corner3",)
    seed: int = 0
    max_steps: int = 300  # the expert must succeed within this many steps
    steps_after_success: int = 10
    shadows: bool = False
    video_encoding: str = "av1"  # fastwam.data.lerobot.VIDEO_ENCODINGS

    def __post_init__(self):
        check_video_encoding(self.video_encoding, self.image_size)
        if self.episodes < 1 or self.image_size < 8 or self.max_steps < 1 or self.steps_after_success < 0:
            raise ValueError(f"need episodes >= 1, image_size >= 8, max_steps >= 1, steps_after_success >= 0: {self}")
        check_distinct("--cameras", self.cameras)
        check_distinct("--tasks", [mw.canonical_task(t) for t in self.tasks])
        for task in self.tasks:
            if self.episodes > mw.num_variations(task):
                raise ValueError(f"--episodes {self.episodes}: {task} has {mw.num_variations(task)} variations, "
                                 "one demonstration each at most")


@dataclass(frozen=True)
class TaskPlan:
    """Outcome of the unrendered expert runs of one task."""

    task: str
    variations: tuple[int, ...]  # the first `episodes` successful ones, in order
    failed: tuple[int, ...]  # tried before those and failed
    success_steps: tuple[int, ...]  # steps to the first success, per chosen variation


@dataclass
class Demo:
    """One recorded episode: T steps."""

    task: str
    variation: int  # the layout: a MetaWorld variation, a LIBERO fresh-reset seed
    success_step: int  # steps taken when success was first reported
    frames: dict[str, np.ndarray]  # camera key -> uint8 (T, S, S, 3)
    state: np.ndarray  # float32 (T, 4)
    action: np.ndarray  # float32 (T, 4) in [-1, 1]


class DemoStore:
    """The demonstrations a collection has recorded so far, one file per layout under
    ``<out>.recorded/``, so that an interrupted collection (Ctrl-C, a crash, a machine taken back)
    loses nothing: the same command again records only what is missing, writes the dataset from all
    of them, then removes the store.

    ``recipe`` is what determines one demonstration (the spec without which tasks, how many and how
    the dataset is encoded; its keys are the command's options); a store that holds layouts recorded
    with another recipe is refused, naming the option. The store keeps the code version that started
    it (``started_by``), not checked: a commit between the two runs is allowed, and the collection
    log says so.
    """

    def __init__(self, out: Path, recipe: dict):
        self.root = out.with_name(out.name + ".recorded")
        recipe = json.loads(json.dumps(recipe))  # tuples -> lists, as read back
        recipe_path = self.root / "recipe.json"
        self.recorded_before = {self._key(p) for p in self.root.glob("*/*.npz")}  # (task, seed)
        if self.recorded_before and not recipe_path.is_file():
            raise ValueError(f"{self.root}: {len(self.recorded_before)} recorded layouts but no recipe.json: what they "
                             f"were recorded with is unknown; remove {self.root}")
        if self.recorded_before:
            try:
                stored = json.loads(recipe_path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{recipe_path}: not valid JSON ({e}); remove {self.root}") from None
            self.started_by = stored.pop("code", "not recorded")
            for key in sorted(stored.keys() | recipe.keys()):
                if stored.get(key) != recipe.get(key):
                    option = "--" + key.replace("_", "-")
                    was = f"{option} {stored[key]!r}" if key in stored else f"no {option} (code {self.started_by})"
                    now = f"{option} {recipe[key]!r}" if key in recipe else f"no {option}"
                    raise ValueError(f"{self.root}: recorded with {was}, this collection asks {now}; resume with "
                                     f"the same options, or remove {self.root}")
        else:  # new, or stopped before its first layout: this recipe starts it
            self.started_by = code_version()
            self.root.mkdir(parents=True, exist_ok=True)
            _write_atomically(recipe_path, (json.dumps({**recipe, "code": self.started_by}, indent=1) + "\n").encode())

    @staticmethod
    def _key(path: Path) -> tuple[str, int]:
        if not path.stem.isdigit():
            raise ValueError(f"{path}: not a recorded layout (expected <task>/<seed>.npz); remove it")
        return path.parent.name, int(path.stem)

    def _path(self, task: str, seed: int) -> Path:
        return self.root / task / f"{seed}.npz"

    def load(self, task: str, seed: int) -> Demo | None:
        """The stored demonstration of (task, seed); None for a layout the expert failed."""
        path = self._path(task, seed)
        try:
            with np.load(path) as f:
                if bool(f["failed"]):
                    return None
                frames = {k.removeprefix("frames/"): f[k] for k in f.files if k.startswith("frames/")}
                return Demo(task, seed, int(f["success_step"]), frames, f["state"], f["action"])
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e}); remove it and that layout is "
                             "recorded again") from None

    def save(self, task: str, seed: int, demo: Demo | None) -> None:
        """Store one layout's outcome (in the worker that recorded it: nothing finished is lost)."""
        arrays = {"failed": np.bool_(demo is None)}
        if demo is not None:
            arrays.update(success_step=np.int64(demo.success_step), state=demo.state, action=demo.action,
                          **{f"frames/{k}": v for k, v in demo.frames.items()})
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        path = self._path(task, seed)
        path.parent.mkdir(exist_ok=True)
        _write_atomically(path, buffer.getvalue())

    def remove(self) -> None:
        shutil.rmtree(self.root)

    def announce(self) -> None:
        """Say what a resumed collection starts from (nothing for a new one)."""
        if self.recorded_before:
            print(f"resuming: {len(self.recorded_before)} layouts already recorded in {self.root} (code "
                  f"{self.started_by}; this is {code_version()})")

    def report_kept(self) -> None:
        """After a collection stopped: what it keeps for the same command to resume from."""
        if kept := len(list(self.root.glob("*/*.npz"))):
            print(f"collection stopped: {kept} recorded layouts are kept in {self.root}; the same command resumes "
                  "from them", file=sys.stderr)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write, flush to disk, then rename: a crash leaves the old file or the new, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Worker side (one env per process, reused across jobs of the same task)
# --------------------------------------------------------------------------------------------

_ENV: dict[tuple, mw.MetaWorldEnv] = {}


def _env_for(spec: CollectSpec, task: str) -> mw.MetaWorldEnv:
    key = (task, spec.seed, spec.image_size, spec.cameras, spec.shadows)
    if key not in _ENV:
        _close_envs()
        _ENV[key] = mw.MetaWorldEnv(task, 0, spec.image_size, spec.cameras, spec.seed,
                                    max_steps=spec.max_steps + spec.steps_after_success, shadows=spec.shadows)
    return _ENV[key]


def _close_envs() -> None:
    for env in _ENV.values():
        env.close()
    _ENV.clear()


def _first_success(env: mw.MetaWorldEnv, max_steps: int) -> int | None:
    """Run the expert without rendering; steps to the first success, or None."""
    env.reset()
    for step in range(1, max_steps + 1):
        _, success, _ = env.step(env.expert_action())
        if success:
            return step
    return None


def plan_task(spec: CollectSpec, task: str) -> TaskPlan:
    """Find the first ``spec.episodes`` variations (in order) where the expert succeeds."""
    env = _env_for(spec, task)
    chosen, failed, steps = [], [], []
    for variation in range(mw.num_variations(task)):
        env.set_variation(variation)
        step = _first_success(env, spec.max_steps)
        if step is None:
            failed.append(variation)
            continue
        chosen.append(variation)
        steps.append(step)
        if len(chosen) == spec.episodes:
            return TaskPlan(task, tuple(chosen), tuple(failed), tuple(steps))
    raise ValueError(f"{task}: the scripted expert succeeded on only {len(chosen)} of {mw.num_variations(task)} "
                       f"variations within {spec.max_steps} steps; {spec.episodes} needed")


def record_expert(env, act, cameras: Sequence[str], max_steps: int, steps_after_success: int,
                  task: str, layout, perturb: Callable[[np.ndarray], np.ndarray] | None = None) -> Demo | None:
    """Run ``act()`` (the expert) from the env's reset state with rendering, recording the views,
    proprio and action before every step, until ``steps_after_success`` steps past the first
    success; None when there is no success within ``max_steps`` steps. ``perturb``: what the env
    executes instead of the expert's action, which stays the recorded label (noise injection, DART:
    the expert's corrections from states its own errors reach)."""
    frames, states, actions = [], [], []
    success_step = None
    while success_step is None or env.steps < success_step + steps_after_success:
        if success_step is None and env.steps >= max_steps:
            return None
        frames.append(env.render_views())
        states.append(env.proprio())
        actions.append(act())
        _, success, _ = env.step(actions[-1] if perturb is None else perturb(actions[-1]))
        if success and success_step is None:
            success_step = env.steps
    views = {camera_key(c): np.stack([f[i] for f in frames]) for i, c in enumerate(cameras)}
    return Demo(task, layout, success_step, views, np.stack(states), np.stack(actions))


def record_demo(spec: CollectSpec, task: str, variation: int, expected_success_step: int | None = None) -> Demo:
    """Replay the expert on one variation with rendering, until steps_after_success after success."""
    env = _env_for(spec, task)
    env.reset(variation)
    demo = record_expert(env, env.expert_action, spec.cameras, spec.max_steps, spec.steps_after_success,
                         task, variation)
    if demo is None:
        raise RuntimeError(f"{task} variation {variation}: no success within {spec.max_steps} steps on replay")
    if expected_success_step is not None and demo.success_step != expected_success_step:
        raise RuntimeError(f"{task} variation {variation}: replay succeeded at step {demo.success_step}, the "
                           f"planning run at {expected_success_step}: the simulation is not deterministic")
    return demo


def _plan_job(args: tuple[CollectSpec, str]) -> TaskPlan:
    return plan_task(*args)


def _record_job(args: tuple[tuple[CollectSpec, str, int, int], DemoStore]) -> Demo:
    (spec, task, variation, success_step), store = args
    demo = record_demo(spec, task, variation, success_step)
    store.save(task, variation, demo)  # here, in the worker: a collection that stops later loses nothing recorded
    return demo


# --------------------------------------------------------------------------------------------
# Main side
# --------------------------------------------------------------------------------------------


@contextmanager
def _pool(workers: int) -> Iterator[Pool | None]:
    """``workers`` spawned processes (fresh, fork-free: each opens its own GL context), or None."""
    if workers <= 1:
        yield None
        return
    from fastwam.envs import share_cores

    with mp.get_context("spawn").Pool(workers, initializer=share_cores, initargs=(workers,)) as pool:
        yield pool


def _run_jobs(pool: Pool | None, function, jobs: list) -> Iterator:
    """Results of function over jobs, in job order (on the pool's workers when there is one)."""
    if pool is None:
        return map(function, jobs)
    return pool.imap(function, jobs, chunksize=1)


def _progress(items: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="ep" if desc.startswith("record") else "task")


def collect(spec: CollectSpec, out: str | Path, workers: int = 1, progress: bool = True) -> dict:
    """Record demonstrations of spec into a new LeRobot dataset at out; returns a summary dict."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: output directory already exists; choose another --out or remove it")
    start = time.perf_counter()
    video = VIDEO_ENCODINGS[spec.video_encoding]
    features = build_features(FPS, {camera_key(c): (spec.image_size, spec.image_size) for c in spec.cameras},
                              {"observation.state": STATE_NAMES, "action": ACTION_NAMES}, video=video)
    store = DemoStore(out, recipe(spec))
    store.announce()
    writer = LeRobotWriter(out, fps=FPS, features=features, robot_type="sawyer", video=video)
    episodes = []
    try:
        with _pool(min(workers, len(spec.tasks) * spec.episodes)) as pool:
            plans = list(_progress(_run_jobs(pool, _plan_job, [(spec, t) for t in spec.tasks]),
                                   len(spec.tasks), "plan (no render)", progress))
            jobs = [(spec, p.task, v, s) for p in plans for v, s in zip(p.variations, p.success_steps)]
            for demo in _progress(stored_or_recorded(pool, _record_job, jobs, store), len(jobs), "record", progress):
                index = writer.add_episode(mw.instruction(demo.task),
                                           {"observation.state": demo.state, "action": demo.action}, demo.frames)
                episodes.append({"episode_index": index, "task": demo.task, "variation": demo.variation,
                                 "success_step": demo.success_step, "length": len(demo.action)})
        summary = _summary(spec, plans, episodes, time.perf_counter() - start, workers)
        writer.finish({COLLECTION_LOG: summary})
    except BaseException:
        writer.abort()
        store.report_kept()
        raise
    finally:
        _close_envs()  # in-process envs (workers <= 1); pool workers are gone already
    store.remove()
    return summary


def recipe(spec: CollectSpec) -> dict:
    """What determines one demonstration: the spec without which tasks, how many, and the encoding."""
    return {k: v for k, v in asdict(spec).items() if k not in ("tasks", "episodes", "video_encoding")}


def stored_or_recorded(pool: Pool | None, record_job: Callable, jobs: list[tuple], store: DemoStore) -> Iterator[Demo | None]:
    """The demonstration of each job ``(spec, task, layout, ...)`` (None: the expert failed it), in job
    order: from the store where an earlier run recorded it, else recorded now on the pool by
    ``record_job((job, store))``, which stores it in the worker that recorded it."""
    new = _run_jobs(pool, record_job, [(j, store) for j in jobs if (j[1], j[2]) not in store.recorded_before])
    for job in jobs:
        yield store.load(job[1], job[2]) if (job[1], job[2]) in store.recorded_before else next(new)


def check_distinct(option: str, names: Sequence[str]) -> None:
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ValueError(f"{option}: {', '.join(repeated)} given more than once")


def _summary(spec: CollectSpec, plans: list[TaskPlan], episodes: list[dict], seconds: float, workers: int) -> dict:
    import metaworld

    return {
        "suite": "metaworld", "metaworld_version": getattr(metaworld, "__version__", "3.1.1"),
        "spec": {**asdict(spec), "tasks": list(spec.tasks), "cameras": list(spec.cameras)},
        "benchmark_seed": spec.seed,
        "variations": {p.task: list(p.variations) for p in plans},
        "failed_variations": {p.task: list(p.failed) for p in plans},
        "instructions": {p.task: mw.instruction(p.task) for p in plans},
        "episodes": episodes,
        "total_frames": int(sum(e["length"] for e in episodes)),
        "collect_seconds": round(seconds, 2), "workers": workers,
    }


def collection_info(dataset_dir: str | Path) -> dict:
    """meta/fastwam.json of a collected dataset."""
    path = Path(dataset_dir) / "meta" / COLLECTION_LOG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (dataset not made by `fastwam collect`?)")
    return json.loads(path.read_text())


def used_variations(dataset_dir: str | Path) -> dict[str, list[int]]:
    """Task -> variations its demonstrations used (under ``collection_info(d)["benchmark_seed"]``)."""
    return {task: list(v) for task, v in collection_info(dataset_dir)["variations"].items()}


def unused_variations(dataset_dir: str | Path, task: str) -> list[int]:
    """Variations of task that the dataset did not train on, in order (for evaluation)."""
    task = mw.canonical_task(task)
    used = set(used_variations(dataset_dir).get(task, []))
    return [v for v in range(mw.num_variations(task)) if v not in used]


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benchmark", choices=["metaworld", "libero"], help="simulated benchmark")
    parser.add_argument("--suite", default=None,
                        help="LIBERO suite: libero_object, libero_spatial, libero_goal (default libero_object)")
    parser.add_argument("--tasks", default="",
                        help="comma list: MetaWorld tasks and/or sets mt10, easy, medium, hard, very-hard "
                             "(default mt10); LIBERO task names or indices in the suite (default: every task "
                             "the expert handles)")
    parser.add_argument("--episodes", type=int, default=None,
                        help="successful demonstrations per task (default: MetaWorld 10, LIBERO 50)")
    parser.add_argument("--out", required=True,
                        help="output dataset directory (must not exist); an interrupted LIBERO collection "
                             "resumes from the layouts it kept in <out>.recorded/")
    parser.add_argument("--image-size", type=int, default=None,
                        help="square image size per camera (default: MetaWorld 64, LIBERO 128)")
    parser.add_argument("--cameras", default="",
                        help="comma list of cameras (default: MetaWorld corner3; LIBERO image,wrist_image)")
    parser.add_argument("--seed", type=int, default=None,
                        help="MetaWorld benchmark seed: fixes the variations' layouts (default 0)")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8), help="worker processes")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="MetaWorld: steps allowed to reach success (default 300; LIBERO: the suite's limit)")
    parser.add_argument("--steps-after-success", type=int, default=10, help="steps recorded after the first success")
    parser.add_argument("--max-failures", type=int, default=None,
                        help="LIBERO: failed layouts after which a task keeps the demonstrations it has (default 10)")
    parser.add_argument("--shadows", action="store_true", help="render shadows and reflections (about 3x slower)")
    parser.add_argument("--antialias", action="store_true",
                        help="LIBERO: render with multisampling, as the public data was (about 1.8x slower)")
    parser.add_argument("--init-noise", type=float, default=None,
                        help="libero: arm joint noise (rad, Gaussian) of the fresh layouts; default 0.02, robosuite's, "
                             "which the official init states carry (0: every episode starts the arm in one pose)")
    parser.add_argument("--action-noise", type=float, default=None,
                        help="libero: std of Gaussian noise on the 6 arm dims of the action the env executes; the "
                             "recorded action stays the expert's, who corrects from where the noise led (DART); "
                             "default 0")
    parser.add_argument("--video-encoding", default="av1", choices=sorted(VIDEO_ENCODINGS),
                        help="av1 (default): LeRobot's encoding, which browsers and hardware decoders play (lossy); "
                             "lossless: H.264 4:4:4 crf 0, frames within 2/255, several times larger")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


ONLY_FOR = {"metaworld": ("seed", "max_steps", "shadows"),
            "libero": ("suite", "max_failures", "antialias", "init_noise", "action_noise")}


def _default(value, default):
    return default if value is None else value


def run(args: argparse.Namespace) -> int:
    cameras = tuple(c.strip() for c in args.cameras.split(",") if c.strip())
    libero = args.benchmark == "libero"
    try:
        for name, options in ONLY_FOR.items():
            given = [o for o in options if getattr(args, o) not in (None, False)]
            if name != args.benchmark and given:
                raise ValueError(f"--{given[0].replace('_', '-')} applies to `collect {name}` only")
        spec = _libero_spec(args, cameras) if libero else CollectSpec(
            tasks=tuple(mw.expand_tasks(args.tasks or "mt10")), episodes=_default(args.episodes, 10),
            image_size=_default(args.image_size, 64), cameras=cameras or ("corner3",), seed=_default(args.seed, 0),
            max_steps=_default(args.max_steps, 300), steps_after_success=args.steps_after_success,
            shadows=args.shadows, video_encoding=args.video_encoding)
    except ValueError as e:
        raise SystemExit(f"fastwam collect: {e}") from e
    if libero:
        from fastwam.envs import libero_collect

        summary = libero_collect.collect(spec, args.out, workers=args.workers, progress=not args.quiet)
        libero_collect.print_table(summary, args.out)
        return 0
    summary = collect(spec, args.out, workers=args.workers, progress=not args.quiet)
    _print_table(summary, args.out)
    return 0


def _libero_spec(args: argparse.Namespace, cameras: tuple[str, ...]):
    from fastwam.envs import libero as lb
    from fastwam.envs.libero_collect import LiberoSpec
    from fastwam.envs.libero_expert import supports

    suite = args.suite or "libero_object"
    tasks = lb.expand_tasks(suite, args.tasks or None)
    unsupported = [t for t in tasks if not supports(suite, t)]
    if args.tasks and unsupported:  # asked for by name: say so now, not in the first episode
        raise ValueError(f"--tasks: the scripted expert has no skill for a step of {unsupported} "
                         "(benchmarks/libero_expert.py says which and why)")
    tasks = [t for t in tasks if t not in unsupported]
    return LiberoSpec(suite=suite, tasks=tuple(tasks), episodes=_default(args.episodes, 50),
                      image_size=_default(args.image_size, 128), cameras=cameras or ("image", "wrist_image"),
                      steps_after_success=args.steps_after_success, max_failures=_default(args.max_failures, 10),
                      antialias=args.antialias, video_encoding=args.video_encoding,
                      init_noise=_default(args.init_noise, lb.INIT_NOISE), action_noise=_default(args.action_noise, 0.0))


def _print_table(summary: dict, out: str) -> None:
    print(f"\n{'task':<28} {'episodes':>8} {'frames':>7} {'failed variations':>18}")
    for task, variations in summary["variations"].items():
        frames = sum(e["length"] for e in summary["episodes"] if e["task"] == task)
        print(f"{task:<28} {len(variations):>8} {frames:>7} {len(summary['failed_variations'][task]):>18}")
    print(f"{len(summary['episodes'])} episodes, {summary['total_frames']} frames in {summary['collect_seconds']:.1f} s "
          f"({summary['workers']} workers) -> {out}", file=sys.stdout)


def check_video_encoding(name: str, image_size: int) -> None:
    """A known ``--video-encoding`` whose pixel format takes ``image_size`` (yuv420p: even sizes)."""
    if name not in VIDEO_ENCODINGS:
        raise ValueError(f"--video-encoding: expected one of {sorted(VIDEO_ENCODINGS)}, got {name!r}")
    if VIDEO_ENCODINGS[name].pix_fmt == "yuv420p" and image_size % 2:
        raise ValueError(f"--image-size {image_size}: the {name} encoding (yuv420p) needs an even size; "
                         "choose one, or --video-encoding lossless")
