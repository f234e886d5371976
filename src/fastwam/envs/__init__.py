"""Simulated benchmarks behind one interface, and demonstration collection (``fastwam.envs.collect``).

A benchmark is a small adapter (``metaworld.MetaWorldBenchmark``, ``libero.LiberoBenchmark``) that
the benchmark-agnostic episode loop, statistics and videos of ``fastwam.evaluate`` call:

- ``name``, ``control_fps`` (videos) and ``default_max_steps(suite)``;
- ``plan(checkpoint_info, tasks, episodes, split, suite, allow_any_layout) -> EpisodeLayouts``:
  the tasks and the layout each episode starts from, kept disjoint from the demonstrations';
- ``disjoint(plan, task)``: whether no episode of ``task`` starts from a demonstration's layout;
- ``check(cfg)``: refuses a checkpoint whose cameras, state or action don't fit the benchmark;
- ``make_env(plan, task)``: an env with ``task``, ``instruction``, ``steps``, ``reset(layout)``,
  ``step(action) -> (obs, success, done)``, ``render()`` (uint8 (S, S * cameras, 3), the
  dataset's conventions), ``proprio()`` and ``close()``.

``benchmark(name)`` returns one; importing this package loads no simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BENCHMARKS = ("metaworld", "libero")


def checked_action(action, dim: int, steps: int, max_steps: int, started: bool) -> np.ndarray:
    """An env's ``step`` argument validated: float64 (dim,), finite, clipped to [-1, 1]; refused
    before ``reset`` and once the episode has taken ``max_steps`` steps."""
    if not started:
        raise RuntimeError("call reset() before step()")
    if steps >= max_steps:
        raise RuntimeError(f"episode is over ({max_steps} steps); call reset()")
    action = np.asarray(action, dtype=np.float64)
    if action.shape != (dim,) or not np.all(np.isfinite(action)):
        raise ValueError(f"action must be {dim} finite numbers, got {action!r}")
    return np.clip(action, -1.0, 1.0)


@dataclass(frozen=True)
class EpisodeLayouts:
    """Where each episode of an evaluation starts, and what the demonstrations used."""

    tasks: tuple[str, ...]
    episodes: dict[str, tuple]  # task -> the layout of each episode (JSON-able: int or str)
    training: dict[str, tuple]  # task -> the layouts its demonstrations used
    benchmark_seed: int | None = None  # MetaWorld: the seed fixing the evaluated variations' layouts
    training_benchmark_seed: int | None = None
    suite: str = ""  # LIBERO: the suite evaluated
    env_options: dict = field(default_factory=dict)  # passed on to make_env (e.g. MetaWorld's shadows)


def share_cores(workers: int) -> None:
    """In one of ``workers`` worker processes, before any GL context exists: Mesa's software renderer
    (llvmpipe) draws with this worker's share of the cores, not all of them (7 % faster LIBERO
    collection on 2 cores with 2 workers, measured); an explicit LP_NUM_THREADS is kept."""
    import os

    os.environ.setdefault("LP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, workers))))


def benchmark(name: str):
    """The adapter of a benchmark (``BENCHMARKS``)."""
    if name == "metaworld":
        from fastwam.envs.metaworld import MetaWorldBenchmark

        return MetaWorldBenchmark()
    if name == "libero":
        from fastwam.envs.libero import LiberoBenchmark

        return LiberoBenchmark()
    raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
