"""The scripted LIBERO expert's success rate per task, without rendering (what collection can reach).

    .venv/bin/python benchmarks/libero_expert.py --suite libero_spatial --layouts fresh --episodes 5 [--json out.json]
    .venv/bin/python benchmarks/libero_expert.py --episodes 5 --action-noise 0.1   # as `collect libero --action-noise 0.1`

Runs ``fastwam.envs.libero_expert.LiberoExpert`` on every task of the suite it supports (or
``--tasks``), from fresh layouts 0..N-1 (the demonstrations' kind) or the official init states
0..N-1, within the suite's step limit, and prints a per-task table: successes, mean steps to
success, the plan's steps and, per failed episode, the step it ended in (``episode_stuck_at``), how far the gripper had turned about the vertical when it first closed (the mean of
|turn|, degrees; signed per episode in the JSON: the turn between two undirected finger axes, within
±90), seconds per episode. Fresh layouts start the arm with collection's joint noise
(``--init-noise``, 0.02 rad; before 2026-12-03 this script started it without: pass
``--init-noise 0`` to repeat those numbers); ``--action-noise`` perturbs the executed arm action as
collection's DART option.
One process, no rendering (~2 s an episode). With ``--json`` the record is written after every task
and a run with the same settings resumes from it (finished tasks are kept).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import numpy as np

from fastwam.envs import libero as lb
from fastwam.envs.libero_collect import arm_noise
from fastwam.envs.libero_expert import LiberoExpert, gripper_yaw, supports, turn_between


def run_task(suite: str, task: str, layouts: list[lb.Layout], noise: float, seed: int,
             init_noise: float = lb.INIT_NOISE, action_noise: float = 0.0) -> dict:
    rng = np.random.default_rng(seed)
    outcomes, steps, turns, stuck, start = [], [], [], [], time.perf_counter()
    with lb.LiberoEnv(suite, task, image_size=8, init_noise=init_noise) as env:
        for layout in layouts:
            env.reset(layout)
            expert = LiberoExpert(env)
            expert.reset()
            plan = [str(s) for s in expert.steps]
            perturb = arm_noise(action_noise, rng) if action_noise else None
            start_yaw, turn = gripper_yaw(env.sim), None
            success = False
            while not success and env.steps < env.max_steps:
                action = expert.act()
                if turn is None and action[-1] > 0:  # the first close command
                    turn = float(np.degrees(turn_between(start_yaw, gripper_yaw(env.sim))))
                if noise:
                    action = np.clip(action + rng.normal(0.0, noise, 7), -1.0, 1.0)
                if perturb:
                    action = perturb(action)
                _, success, _ = env.step(action)
            outcomes.append(success)
            steps.append(env.steps)
            phase = getattr(expert.skill, "phase", "done")
            stuck.append(None if success else f"{plan[min(expert.index, len(plan) - 1)]}: "
                                              f"{getattr(phase, 'name', phase)}".lower())
            turns.append(None if turn is None else round(turn, 1))
    return {"successes": int(sum(outcomes)), "episodes": len(outcomes), "plan": plan, "episode_stuck_at": stuck,
            "episode_success": outcomes,
            "episode_steps": steps, "episode_turn_deg": turns, "layouts": [str(x) for x in layouts],
            "seconds_per_episode": round((time.perf_counter() - start) / len(layouts), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="libero_object", choices=lb.SUITES)
    parser.add_argument("--tasks", default="", help="comma list of names or indices (default: every supported task)")
    parser.add_argument("--layouts", choices=[lb.FRESH, lb.INIT], default=lb.FRESH)
    parser.add_argument("--episodes", type=int, default=5, help="layouts 0..N-1 per task")
    parser.add_argument("--noise", type=float, default=0.0, help="std of Gaussian noise added to each action")
    parser.add_argument("--init-noise", type=float, default=lb.INIT_NOISE,
                        help="arm joint noise of fresh layouts (rad; default: collection's)")
    parser.add_argument("--action-noise", type=float, default=0.0,
                        help="std of noise on the executed arm action, as `collect libero --action-noise` (DART)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    tasks = lb.expand_tasks(args.suite, args.tasks or None)
    skipped = [t for t in tasks if not supports(args.suite, t)]
    settings = {"suite": args.suite, "layouts": args.layouts, "episodes": args.episodes, "noise": args.noise,
                "init_noise": args.init_noise, "action_noise": args.action_noise}
    results = _resumed(args.json, settings)
    for i, task in enumerate(t for t in tasks if t not in skipped):
        if task in results:
            print(f"{task:<80} {results[task]['successes']:>3}/{results[task]['episodes']:<3} (recorded)")
            continue
        layouts = [lb.Layout(args.layouts, k) for k in range(args.episodes)]
        results[task] = r = run_task(args.suite, task, layouts, args.noise, seed=i, init_noise=args.init_noise,
                                     action_noise=args.action_noise)
        won = [s for s, ok in zip(r["episode_steps"], r["episode_success"]) if ok]
        turned = [abs(t) for t in r["episode_turn_deg"] if t is not None]
        print(f"{task:<80} {r['successes']:>3}/{r['episodes']:<3} steps {np.mean(won) if won else float('nan'):6.1f} "
              f"turn {np.mean(turned) if turned else float('nan'):5.1f} deg {r['seconds_per_episode']:6.2f} s/ep",
              flush=True)
        if args.json:
            _write(args.json, settings, results, skipped)
    total = sum(r["successes"] for r in results.values()), sum(r["episodes"] for r in results.values())
    print(f"{args.suite}: {total[0]}/{total[1]} on {args.layouts} layouts; not handled: {skipped or 'none'}")
    if args.json:
        _write(args.json, settings, results, skipped)


def _resumed(path: str, settings: dict) -> dict:
    """The tasks a record at ``path`` already holds for these settings ({} without one)."""
    if not path or not Path(path).is_file():
        return {}
    record = json.loads(Path(path).read_text())
    differs = {k: (record.get(k), v) for k, v in settings.items() if record.get(k) != v}
    if differs:
        raise SystemExit(f"{path}: recorded with other settings {differs} (recorded, asked); choose another --json")
    return record["tasks"]


def _write(path: str, settings: dict, results: dict, skipped: list) -> None:
    from fastwam import code_version, cpu_name

    record = {**settings, "code": code_version(), "machine": cpu_name(),
              "date": datetime.date.today().isoformat(), "tasks": results, "unsupported": skipped}
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
