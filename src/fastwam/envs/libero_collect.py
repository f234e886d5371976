"""``fastwam collect libero``: scripted-expert LIBERO demonstrations as a LeRobot v3.0 dataset.

Each demonstration starts from a *fresh* layout: a placement sampled from the task's BDDL regions
under numpy seed s (``Layout("fresh", s)``, seeds 0, 1, 2, ... per task), never one of the 50
official evaluation init states (checked for every episode: a layout within ``SAME_STATE_TOL``
of an init state is refused). The privileged expert (``fastwam.envs.libero_expert``) reads the
simulator state and is recorded with rendering in one pass: it succeeds on nearly every layout,
so a separate unrendered planning pass (as for MetaWorld) would cost more than the few rendered
failures it saves. Failed seeds are noted and replaced by the next seeds until ``--episodes``
successes per task, or until ``--max-failures`` failures, when the task keeps the demonstrations
it has (the table and ``expert_success`` say so); only successful episodes are written, each
``--steps-after-success`` steps past the first success (the release, for object tasks that
succeed while the object is held). ``--action-noise`` (DART, Laskey et al. 2017) executes the expert's
action plus Gaussian noise on its arm dims while recording the expert's own: the demonstrations then
show corrections from states the policy's own errors lead to, which clean ones never visit.

Recorded per step t, in the public LeRobot LIBERO conventions: ``observation.images.image`` and
``observation.images.wrist_image`` (rotated 180°), ``observation.state`` (8), ``action`` (7, the
raw command), before action t. Cameras render without multisampling unless ``antialias`` (the
public data's look, 1.8x the render time, which is most of the collection's); the setting is
recorded and ``fastwam eval libero`` renders the same way. Episodes are written round by round of seeds, each round in task
order, then seed order. ``meta/fastwam.json`` records the layouts used and failed
(``collection_info``), which evaluation keeps disjoint.

An hour of recording is not lost to an interruption: every layout's outcome is kept in
``<out>.recorded/`` (``DemoStore``) by the worker that recorded it, and the same command again
records only the layouts missing, then writes the dataset an uninterrupted run would have written
(its collection log adds ``resumed``: how many layouts came from the store, and which code recorded
them; ``collect_seconds`` is the last run's).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from fastwam import code_version
from fastwam.data.lerobot import COLLECTION_LOG, VIDEO_ENCODINGS, LeRobotWriter, build_features, camera_key
from fastwam.envs import libero as lb
from fastwam.envs.collect import (Demo, DemoStore, _pool, check_distinct, check_video_encoding, record_expert,
                                  stored_or_recorded)

SAME_STATE_TOL = 1e-6  # max abs difference under which two flattened MuJoCo states are the same layout


@dataclass(frozen=True)
class LiberoSpec:
    """What to record (everything but the output place and the worker count)."""

    suite: str
    tasks: tuple[str, ...]
    episodes: int = 50
    image_size: int = 128
    cameras: tuple[str, ...] = ("image", "wrist_image")
    steps_after_success: int = 10
    max_failures: int = 10  # failed layouts after which a task keeps the demonstrations it has
    antialias: bool = False  # multisampling as the public data (1.8x the render time); evaluation renders alike
    video_encoding: str = "av1"  # fastwam.data.lerobot.VIDEO_ENCODINGS
    init_noise: float = lb.INIT_NOISE  # arm joint noise of the fresh layouts (rad): as the official init states
    action_noise: float = 0.0  # std of the noise on the executed arm action; the label stays the expert's (DART)

    def __post_init__(self):
        check_video_encoding(self.video_encoding, self.image_size)
        if not (np.isfinite(self.init_noise) and self.init_noise >= 0):
            raise ValueError(f"--init-noise: expected a finite number >= 0 (rad), got {self.init_noise}")
        if not (np.isfinite(self.action_noise) and self.action_noise >= 0):
            raise ValueError(f"--action-noise: expected a finite number >= 0, got {self.action_noise}")
        if self.episodes < 1 or self.image_size < 8 or self.steps_after_success < 0 or self.max_failures < 1:
            raise ValueError(f"need episodes >= 1, image_size >= 8, steps_after_success >= 0, "
                             f"max_failures >= 1: {self}")
        if not self.tasks:
            raise ValueError(f"no {self.suite} task to record: the scripted expert handles none of the tasks asked for")
        check_distinct("--cameras", self.cameras)
        check_distinct("--tasks", [lb.canonical_task(self.suite, t) for t in self.tasks])
        unknown = [c for c in self.cameras if c not in lb.CAMERAS]
        if unknown or not self.cameras:
            raise ValueError(f"--cameras: expected some of {list(lb.CAMERAS)}, got {list(self.cameras)}")
        from fastwam.envs.libero_expert import supports

        unsupported = [t for t in self.tasks if not supports(self.suite, t)]
        if unsupported:
            raise ValueError(f"the scripted expert does not handle {self.suite} task(s) {unsupported} "
                             "(pick-and-place goals only)")


# -- worker side (one env per process, reused across jobs of the same task) ------------------------

_ENV: dict[tuple, lb.LiberoEnv] = {}


def _env_for(spec: LiberoSpec, task: str) -> lb.LiberoEnv:
    key = (spec.suite, task, spec.image_size, spec.cameras, spec.antialias, spec.init_noise)
    if key not in _ENV:
        close_envs()
        _ENV[key] = lb.LiberoEnv(spec.suite, task, spec.image_size, spec.cameras,
                                 max_steps=lb.MAX_STEPS[spec.suite] + spec.steps_after_success,
                                 antialias=spec.antialias, init_noise=spec.init_noise)
    return _ENV[key]


def close_envs() -> None:
    for env in _ENV.values():
        env.close()
    _ENV.clear()


def check_fresh(env: lb.LiberoEnv) -> None:
    """Refuse an episode that started from one of the task's official evaluation init states."""
    state, official = env.start_state, env.init_states
    if official.shape[1:] != state.shape:
        raise RuntimeError(f"{env.task}: official init states have {official.shape[1:]} values, the simulator's "
                           f"state {state.shape}: cannot tell whether {env.layout} is an evaluation layout")
    if np.abs(official - state).max(axis=1).min() <= SAME_STATE_TOL:
        raise RuntimeError(f"{env.task} {env.layout}: the fresh layout equals an official evaluation init state")


def record_demo(spec: LiberoSpec, task: str, seed: int) -> Demo | None:
    """Run the expert from fresh layout ``seed`` with rendering; the demo, or None when it failed."""
    from fastwam.envs.libero_expert import LiberoExpert

    env = _env_for(spec, task)
    env.reset(lb.Layout(lb.FRESH, seed))
    check_fresh(env)
    expert = LiberoExpert(env)
    expert.reset()
    perturb = arm_noise(spec.action_noise, np.random.default_rng(seed)) if spec.action_noise else None
    return record_expert(env, expert.act, spec.cameras, lb.MAX_STEPS[spec.suite], spec.steps_after_success, task, seed,
                         perturb)


def arm_noise(std: float, rng: np.random.Generator):
    """(7,) action -> the action plus Gaussian noise of ``std`` on its 6 arm dims, clipped to [-1, 1];
    the gripper command is left alone (its sign is all robosuite reads)."""
    def perturb(action: np.ndarray) -> np.ndarray:
        noisy = np.array(action, dtype=np.float64)
        noisy[:6] = np.clip(noisy[:6] + rng.normal(0.0, std, 6), -1.0, 1.0)
        return noisy

    return perturb


def _record_job(args: tuple[tuple[LiberoSpec, str, int], DemoStore]) -> Demo | None:
    (spec, task, seed), store = args
    demo = record_demo(spec, task, seed)
    store.save(task, seed, demo)
    return demo


# -- main side ----------------------------------------------------------------------------------

def collect(spec: LiberoSpec, out, workers: int = 1, progress: bool = True) -> dict:
    """Record ``spec.episodes`` successful demonstrations per task into a new dataset at ``out``."""
    from pathlib import Path

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: output directory already exists; choose another --out or remove it")
    from tqdm import tqdm

    start = time.perf_counter()
    video = VIDEO_ENCODINGS[spec.video_encoding]
    features = build_features(lb.CONTROL_FPS, {camera_key(c): (spec.image_size, spec.image_size) for c in spec.cameras},
                              {"observation.state": lb.STATE_NAMES, "action": lb.ACTION_NAMES}, video=video)
    store = DemoStore(out, recipe(spec))
    store.announce()
    writer = LeRobotWriter(out, fps=lb.CONTROL_FPS, features=features, robot_type="panda", video=video)
    used = {t: [] for t in spec.tasks}
    failed = {t: [] for t in spec.tasks}
    episodes = []
    next_seed = {t: 0 for t in spec.tasks}
    total = len(spec.tasks) * spec.episodes
    try:
        with _pool(min(workers, total)) as pool:
            bar = tqdm(total=total, desc="record", unit="ep", disable=not progress)
            while jobs := _next_round(spec, used, failed, next_seed):
                for (_, task, seed), demo in zip(jobs, stored_or_recorded(pool, _record_job, jobs, store)):
                    if demo is None:
                        failed[task].append(seed)
                        continue
                    index = writer.add_episode(lb.instruction(spec.suite, task),
                                               {"observation.state": demo.state, "action": demo.action}, demo.frames)
                    used[task].append(seed)
                    episodes.append({"episode_index": index, "task": task, "layout": str(lb.Layout(lb.FRESH, seed)),
                                     "success_step": demo.success_step, "length": len(demo.action)})
                    bar.update(1)
            bar.close()
        summary = _summary(spec, used, failed, episodes, time.perf_counter() - start, workers)
        reused = store.recorded_before & {(t, s) for t in spec.tasks for s in used[t] + failed[t]}
        summary["resumed"] = {"layouts": len(reused), "recorded_by": store.started_by} if reused else None
        writer.finish({COLLECTION_LOG: summary})  # refuses a dataset without episodes (every task failed)
    except BaseException:
        writer.abort()
        store.report_kept()
        raise
    finally:
        close_envs()  # in-process envs (workers <= 1); pool workers are gone already
    store.remove()
    return summary


def recipe(spec: LiberoSpec) -> dict:
    """What determines one demonstration: the spec without which tasks, how many, and the encoding."""
    return {k: v for k, v in asdict(spec).items() if k not in ("tasks", "episodes", "max_failures", "video_encoding")}


def _next_round(spec: LiberoSpec, used: dict, failed: dict, next_seed: dict) -> list[tuple[LiberoSpec, str, int]]:
    """Jobs for the seeds still needed: as many new seeds per task as successes are missing, but no more
    than the failures the task has left (a task never fails more than ``spec.max_failures`` layouts)."""
    jobs = []
    for task in spec.tasks:
        tries = min(spec.episodes - len(used[task]), spec.max_failures - len(failed[task]))
        jobs += [(spec, task, s) for s in range(next_seed[task], next_seed[task] + max(tries, 0))]
        next_seed[task] += max(tries, 0)
    return jobs


def _summary(spec: LiberoSpec, used: dict, failed: dict, episodes: list[dict], seconds: float, workers: int) -> dict:
    return {
        "suite": spec.suite, "benchmark": "libero", "code": code_version(),
        "spec": {**asdict(spec), "tasks": list(spec.tasks), "cameras": list(spec.cameras)},
        "layouts": {t: [str(lb.Layout(lb.FRESH, s)) for s in used[t]] for t in spec.tasks},
        "failed_layouts": {t: [str(lb.Layout(lb.FRESH, s)) for s in failed[t]] for t in spec.tasks},
        "expert_success": {t: {"succeeded": len(used[t]), "tried": len(used[t]) + len(failed[t])} for t in spec.tasks},
        "instructions": {t: lb.instruction(spec.suite, t) for t in spec.tasks},
        "episodes": episodes,
        "total_frames": int(sum(e["length"] for e in episodes)),
        "collect_seconds": round(seconds, 2), "workers": workers,
    }


def print_table(summary: dict, out: str) -> None:
    width = max([28, *map(len, summary["layouts"])])
    print(f"\n{'task':<{width}} {'episodes':>8} {'frames':>7} {'expert success':>15}")
    for task, layouts in summary["layouts"].items():
        frames = sum(e["length"] for e in summary["episodes"] if e["task"] == task)
        tried = summary["expert_success"][task]["tried"]
        print(f"{task:<{width}} {len(layouts):>8} {frames:>7} {f'{len(layouts)}/{tried}':>15}")
    print(f"{len(summary['episodes'])} episodes, {summary['total_frames']} frames in "
          f"{summary['collect_seconds']:.1f} s ({summary['workers']} workers) -> {out}")
    short = [t for t, layouts in summary["layouts"].items() if len(layouts) < summary["spec"]["episodes"]]
    if short:
        print(f"fewer than {summary['spec']['episodes']} demonstrations (the expert failed "
              f"{summary['spec']['max_failures']} times): {', '.join(short)}")
