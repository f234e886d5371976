"""What a LIBERO policy does when it fails: which object it lifted, and whether it placed it.

Runs the closed-loop episodes of ``fastwam eval libero`` (same plan, seeds and episode loop) while
reading the simulator's object poses at every step (privileged, for the analysis only), and sorts
every episode into one outcome:

- ``success``;
- ``placed_elsewhere``: the instructed object was lifted but the episode ran out without success;
- ``wrong_object``: the instructed object was never lifted, another one was;
- ``no_lift``: no object was lifted (the grasp never closed on anything);

"lifted" = raised ``LIFT`` above its start height at some step. Each episode also records where the
gripper was, against the instructed object, when the policy first commanded it to close
(``first_close_mm``: gripper site minus object origin, world x, y, z in mm; None if it never
closed), how far the gripper had turned about the vertical since the start (``first_close_turn_deg``,
within ±90: the fingers' axis is undirected), the angle between the fingers' closing axis and the
object's narrowest horizontal direction (``first_close_yaw_deg``, 0-90; None for round or square
objects, which have none, and for those grasped by the rim), and how many times it closed: a grasp
that closed too high, beside the object, turned, or not at all.

    .venv/bin/python benchmarks/libero_failures.py --checkpoint runs/lo --split validation --episodes 10 \
        --workers 2 --json docs/results/libero_object_failures.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
from collections import Counter
from pathlib import Path

import numpy as np

from fastwam.envs.libero_expert import MAX_GRASP_WIDTH, Body, gripper_yaw, heading, horizontal_widths, turn_between

LIFT = 0.03  # m
ROUND = 1.15  # an object less than this factor wider across its narrowest width has no narrow side
OUTCOMES = ("success", "placed_elsewhere", "wrong_object", "no_lift")


class ObjectTracker:
    """An env whose ``step`` also records each object's highest rise above its start."""

    def __init__(self, env):
        self.env = env
        _, self.object, _ = _goal(env)  # the instructed object
        self.rise: dict[str, float] = {}

    def __getattr__(self, name):
        return getattr(self.env, name)

    def _heights(self) -> dict[str, float]:
        problem, sim = self.env.problem, self.env.sim
        return {name: float(sim.data.body_xpos[body][2]) for name, body in problem.obj_body_id.items()
                if name in problem.objects_dict}

    def reset(self, layout):
        obs = self.env.reset(layout)
        self._start = self._heights()
        self.rise = {name: 0.0 for name in self._start}
        self.first_close: list[float] | None = None
        self._start_yaw = gripper_yaw(self.env.sim)
        self.first_close_turn: float | None = None  # rad: the gripper's turn from the start, at the first close
        self.first_close_yaw: float | None = None  # rad: closing axis against the object's narrow axis, then
        self.closes, self._closing = 0, False
        return obs

    def step(self, action):
        closing = bool(action[-1] > 0)  # LIBERO's gripper command: -1 open, +1 close
        if closing and not self._closing:
            self.closes += 1
            if self.first_close is None:
                problem, sim = self.env.problem, self.env.sim
                target = sim.data.body_xpos[problem.obj_body_id[self.object]]
                self.first_close = [round(1000 * float(d), 1) for d in self.env.proprio()[:3] - target]
                yaw, narrow = gripper_yaw(sim), _narrow_axis(sim, problem.obj_body_id[self.object])
                self.first_close_turn = turn_between(self._start_yaw, yaw)
                self.first_close_yaw = None if narrow is None else abs(turn_between(narrow, yaw))
        self._closing = closing
        result = self.env.step(action)
        for name, z in self._heights().items():
            self.rise[name] = max(self.rise[name], z - self._start[name])
        return result

    def outcome(self, success: bool) -> tuple[str, str | None]:
        """(outcome, the other object lifted highest, if any)."""
        if success:
            return "success", None
        if self.rise[self.object] > LIFT:
            return "placed_elsewhere", None
        others = {n: r for n, r in self.rise.items() if n != self.object and r > LIFT}
        if others:
            return "wrong_object", max(others, key=others.get)
        return "no_lift", None


def _narrow_axis(sim, body: int) -> float | None:
    """Heading (rad) of the object's narrowest horizontal direction; None when it has no clearly narrow
    side (round or square: the width across it within ``ROUND`` of it) or none the expert grasps across
    (rim grasps)."""
    dirs, widths = horizontal_widths(Body(sim, body).corners())  # over 180 degrees
    k = int(widths.argmin())
    across = widths[(k + len(widths) // 2) % len(widths)]  # the width 90 degrees from the narrowest
    if widths[k] > MAX_GRASP_WIDTH or across < ROUND * widths[k]:
        return None
    return heading(dirs[k])


def _degrees(angle: float | None) -> float | None:
    return None if angle is None else round(float(np.degrees(angle)), 1)


def _goal(env):
    """The (predicate, object, target) of the task's first in/on step: the instructed object."""
    from fastwam.envs.libero_plan import conjuncts

    step = next(s for s in conjuncts(env.problem.parsed_problem["goal_state"]) if s.predicate in ("in", "on"))
    return (step.predicate, *step.args)


def run_task(args: tuple) -> list[dict]:
    plan, task = args
    import torch

    from fastwam.envs import benchmark
    from fastwam.evaluate import run_episode
    from fastwam.policy import Policy

    torch.set_num_threads(plan.threads or 1)
    policy = Policy.from_checkpoint(plan.checkpoint, device=plan.device, steps=plan.steps, seed=plan.seed,
                                    noise_scale=plan.noise_scale, mode=plan.mode or None)
    env = ObjectTracker(benchmark("libero").make_env(plan, task))
    rows = []
    try:
        for episode in (e for e in plan.episode_list() if e.task == task):
            result = run_episode(plan, policy, env, episode)
            outcome, other = env.outcome(result.success)
            rows.append({"task": task, "index": episode.index, "layout": episode.variation, "outcome": outcome,
                         "steps": result.steps, "target_rise": round(env.rise[env.object], 3),
                         "other_lifted": other, "first_close_mm": env.first_close,
                         "first_close_turn_deg": _degrees(env.first_close_turn),
                         "first_close_yaw_deg": _degrees(env.first_close_yaw), "closes": env.closes})
    finally:
        env.close()
    return rows


def main() -> int:
    from fastwam.envs import share_cores
    from fastwam.evaluate import make_plan

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", default="validation", choices=["test", "validation"])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--tasks", default="")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--execute", type=int, default=None,
                        help="actions executed per chunk before replanning (default: half the chunk, as eval)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    plan = make_plan(args.checkpoint, args.episodes, args.tasks or None, benchmark_name="libero", split=args.split,
                     execute=args.execute, threads=1)
    jobs = [(plan, t) for t in plan.tasks]
    if args.workers > 1:
        with mp.get_context("spawn").Pool(args.workers, initializer=share_cores, initargs=(args.workers,)) as pool:
            rows = [r for task_rows in pool.map(run_task, jobs, chunksize=1) for r in task_rows]
    else:
        rows = [r for job in jobs for r in run_task(job)]
    table = {t: Counter(r["outcome"] for r in rows if r["task"] == t) for t in plan.tasks}
    width = max(map(len, plan.tasks))
    print(f"{'task':<{width}} " + " ".join(f"{o:>16}" for o in OUTCOMES))
    for task, counts in table.items():
        print(f"{task:<{width}} " + " ".join(f"{counts[o]:>16}" for o in OUTCOMES))
    total = Counter(r["outcome"] for r in rows)
    print(f"{'all':<{width}} " + " ".join(f"{total[o]:>16}" for o in OUTCOMES))
    wrong = Counter((r["task"], r["other_lifted"]) for r in rows if r["outcome"] == "wrong_object")
    for (task, other), n in wrong.most_common():
        print(f"  {task}: lifted {other} instead ({n})")
    if args.json:
        from fastwam.checkpoint import sha256
        from fastwam.config import Config

        record = {"checkpoint": plan.checkpoint, "weights_sha256": sha256(Path(plan.checkpoint) / "model.safetensors"),
                  "code": plan.code, "split": args.split, "episodes_per_task": args.episodes,
                  "execute": plan.execute or Config.load(Path(plan.checkpoint) / "config.yaml").model.chunk // 2,
                  "lift_threshold_m": LIFT, "outcomes": {t: dict(c) for t, c in table.items()},
                  "total": dict(total), "episodes": rows}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
