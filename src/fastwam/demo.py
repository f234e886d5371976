"""``fastwam demo``: collect -> train -> evaluate -> benchmark on the embedded default, from nothing.

Full demo (about 20 minutes on a 2-core CPU): 10 scripted demonstrations for each of a few easy
MetaWorld tasks, the ``small`` Fast-WAM trained on them (one language-conditioned model), a
closed-loop evaluation on unseen task variations with rollout videos, and the latency table of
the three inference variants. ``--quick`` runs the same pipeline at smoke-test size (< 3 minutes).
Each stage is the public command it names, so the printed commands can be re-run by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from fastwam.bench import format_table
from fastwam.cli import main as cli
from fastwam.config import preset

DEMO_TASKS = "drawer-close,button-press-topdown,window-close"


@dataclass(frozen=True)
class DemoPlan:
    tasks: str
    demos: int
    train_steps: int
    eval_episodes: int
    eval_max_steps: int
    bench_calls: int


FULL = DemoPlan(tasks=DEMO_TASKS, demos=10, train_steps=1000, eval_episodes=10, eval_max_steps=200, bench_calls=20)
QUICK = DemoPlan(tasks="drawer-close", demos=2, train_steps=20, eval_episodes=1, eval_max_steps=40, bench_calls=3)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="smoke-test size (< 3 minutes)")
    parser.add_argument("--out", default="demo", help="directory for the dataset, run, videos and JSON")
    parser.add_argument("--fresh", action="store_true", help="delete --out first instead of reusing finished stages")


def run(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    out = Path(args.out) / ("quick" if args.quick else "full")
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    data, run_dir = out / "data", out / "run"
    timings = {}

    def stage(name: str, argv: list[str], done: Path) -> None:
        print(f"\n== {name}: fastwam {' '.join(argv)}", flush=True)
        if done.exists():
            print(f"   (already done: {done}; pass --fresh to redo)")
            return
        start = time.time()
        code = cli(argv)
        if code:
            raise SystemExit(f"demo: stage {name!r} failed with exit code {code}")
        timings[name] = round(time.time() - start, 1)

    views = preset("small").data  # record what the model is configured to see
    stage("collect", ["collect", "metaworld", "--tasks", plan.tasks, "--episodes", str(plan.demos),
                      "--image-size", str(views.image_size), "--cameras", ",".join(views.cameras),
                      "--workers", "2", "--out", str(data)], data / "meta" / "info.json")
    interrupted = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
    stage("train", ["train", "--data", str(data), "--preset", "small", "--variant", "fastwam",
                    "--steps", str(plan.train_steps), "--out", str(run_dir)] + ["--resume"] * interrupted,
          run_dir / "loss.png")
    stage("eval", ["eval", "metaworld", "--checkpoint", str(run_dir), "--episodes", str(plan.eval_episodes),
                   "--max-steps", str(plan.eval_max_steps), "--workers", "2", "--json", str(out / "eval.json"),
                   "--video", str(out / "rollouts.mp4")], out / "eval.json")
    stage("bench", ["bench", "latency", "--preset", "small", "--variants", "fastwam,joint,idm", "--steps", "10",
                    "--calls", str(plan.bench_calls), "--json", str(out / "bench.json")], out / "bench.json")
    print(summary(out, run_dir, timings))
    return 0


def summary(out: Path, run_dir: Path, timings: dict) -> str:
    """Both tables again, and where everything is."""
    evaluation = json.loads((out / "eval.json").read_text())
    bench = json.loads((out / "bench.json").read_text())
    lines = ["", "=" * 72, "fastwam demo: results", "",
             f"{'task':<28} {'success':>8} {'95% interval':>16} {'episodes':>9} {'ms/chunk':>9}"]
    for task, r in evaluation["tasks"].items():
        lo, hi = r["ci95"]
        lines.append(f"{task:<28} {r['success_rate']:>8.0%} {f'[{lo:.0%}, {hi:.0%}]':>16} {r['episodes']:>9} "
                     f"{r['mean_chunk_ms']:>9.1f}")
    lines += [f"{'mean':<28} {evaluation['mean_success_rate']:>8.0%}", ""]
    lines += [format_table(run) + "\n" for run in bench["runs"]]  # one table per step count
    videos = sorted(str(p) for p in out.glob("*.mp4"))
    lines += [f"videos:      {', '.join(videos) or '(none)'}", f"loss curve:  {run_dir / 'loss.png'}",
              f"checkpoint:  {run_dir}", f"JSON:        {out / 'eval.json'}, {out / 'bench.json'}"]
    if timings:
        lines.append("stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return "\n".join(lines)
