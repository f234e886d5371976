"""Does success depend on the model, or on how far a test layout lies from the demonstrations?

Reads `fastwam eval metaworld --json` files of runs trained on the same demonstrations (same
benchmark seed and training variations, split `test`) and pools their episodes per test variation.
Per task it prints how many test layouts no run ever solved and every run always solved, the share
of the episode-level variance that the layout explains (eta squared: between-layout over total sum
of squares), and the correlation between a layout's pooled success rate and its distance to the
nearest demonstration layout (Euclidean distance between MetaWorld's layout vectors, `rand_vec`:
object and goal positions in metres). With `--plot`, one panel per task: success against distance.

    .venv/bin/python benchmarks/layout_coverage.py docs/results/mt10_fastwam*.json --plot out.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fastwam.envs import metaworld as mw


def pooled_outcomes(runs: list[dict], task: str) -> dict[int, list[bool]]:
    """Test variation -> every episode outcome on it, over all runs."""
    outcomes: dict[int, list[bool]] = {}
    for run in runs:
        t = run["tasks"][task]
        for variation, success in zip(t["variations"], t["episode_success"]):
            outcomes.setdefault(variation, []).append(bool(success))
    return outcomes


def eta_squared(groups: list[list[bool]]) -> float:
    """Between-group over total sum of squares of 0/1 outcomes (nan when every outcome is equal)."""
    values = np.concatenate([np.asarray(g, float) for g in groups])
    total = ((values - values.mean()) ** 2).sum()
    between = sum(len(g) * (np.mean(g) - values.mean()) ** 2 for g in groups)
    return float(between / total) if total > 0 else float("nan")


def task_summary(runs: list[dict], task: str) -> dict:
    first = runs[0]
    train = first["tasks"][task]["training_variations"]
    layouts = mw.layouts(task, first["benchmark_seed"])
    outcomes = pooled_outcomes(runs, task)
    variations = sorted(outcomes)
    rate = np.array([np.mean(outcomes[v]) for v in variations])
    distance = np.array([np.linalg.norm(layouts[train] - layouts[v], axis=1).min() for v in variations])
    corr = float(np.corrcoef(distance, rate)[0, 1]) if rate.std() > 0 else float("nan")
    return {"task": task, "episodes": sum(len(o) for o in outcomes.values()), "layouts": len(variations),
            "mean": float(np.mean([s for o in outcomes.values() for s in o])),
            "never": int((rate == 0).sum()), "always": int((rate == 1).sum()),
            "eta2": eta_squared([outcomes[v] for v in variations]), "corr": corr,
            "distance": distance.tolist(), "rate": rate.tolist()}


def check_comparable(runs: list[dict], paths: list[Path]) -> None:
    """Every run must share the benchmark seed, training variations and split of the first."""
    ref = runs[0]
    for run, path in zip(runs, paths):
        if run.get("split", "test") != "test" or run["benchmark_seed"] != ref["benchmark_seed"]:
            raise SystemExit(f"{path}: split {run.get('split', 'test')!r}, benchmark seed {run['benchmark_seed']}; "
                             f"expected the test split under seed {ref['benchmark_seed']} ({paths[0]})")
        for task, t in ref["tasks"].items():
            if task not in run["tasks"] or run["tasks"][task]["training_variations"] != t["training_variations"]:
                raise SystemExit(f"{path}: task {task} missing or trained on other variations than {paths[0]}'s")


def plot(summaries: list[dict], path: Path, runs: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 5
    rows = -(-len(summaries) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax, s in zip(axes.flat, summaries):
        ax.scatter(np.array(s["distance"]) * 100, np.array(s["rate"]) * 100, s=14, alpha=0.7)
        ax.set_title(f"{s['task']}  r = {_number(s['corr'], '+.2f')}", fontsize=9)
        ax.set_ylim(-5, 105)
        ax.set_xlabel("cm to nearest demo layout", fontsize=8)
        ax.set_ylabel("success %", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(summaries):]:
        ax.axis("off")
    fig.suptitle(f"Success per test layout, pooled over {runs} runs, against its distance to the nearest "
                 "demonstration layout", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _number(x: float, spec: str) -> str:
    return "-" if np.isnan(x) else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", nargs="+", type=Path, help="eval JSON files of runs on the same demonstrations")
    ap.add_argument("--plot", type=Path, default=None, help="write the per-task scatter plot here (PNG)")
    args = ap.parse_args()
    runs = [json.loads(p.read_text()) for p in args.json]
    check_comparable(runs, args.json)
    summaries = [task_summary(runs, task) for task in runs[0]["tasks"]]
    print(f"{len(runs)} runs: " + ", ".join(p.stem for p in args.json))
    print("| task | episodes | success | layouts never solved | layouts always solved | variance explained by the layout "
          "| corr(distance to nearest demo, success) |")
    print("|---|---|---|---|---|---|---|")
    for s in summaries:  # "-": every episode of the task had the same outcome, nothing to explain
        print(f"| {s['task']} | {s['episodes']} | {100 * s['mean']:.0f} % | {s['never']} of {s['layouts']} "
              f"| {s['always']} of {s['layouts']} | {_number(s['eta2'], '.2f')} | {_number(s['corr'], '+.2f')} |")
    if args.plot:
        plot(summaries, args.plot, len(runs))
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
