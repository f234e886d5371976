"""Is one run better than another? The difference of success rates, paired over the same episodes.

`fastwam eval metaworld --json` files evaluated on the same episodes (same split, benchmark seed,
policy seed and per-episode variations) meet the same layouts, and on MetaWorld the layout decides
much of an outcome (benchmarks/layout_coverage.py), so two runs' outcomes are correlated and the
separate 95 % intervals of their means overstate the uncertainty of their difference. For every run
against the first (the reference) this prints the difference of the mean success rates with its
paired 95 % interval (normal approximation over the episode-wise differences; with equal episodes per
task the mean success rate is the mean over all episodes), the unpaired interval for contrast, and the
correlation between the two runs' episode outcomes. `benchmarks/libero_failures.py --json` records
pair the same way (success per episode, its layout).

    .venv/bin/python benchmarks/paired_comparison.py REF.json OTHER.json [OTHER.json ...]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

Z95 = 1.959964


def episode_outcomes(run: dict) -> np.ndarray:
    """All episode outcomes (0/1), task by task in the file's order."""
    return np.concatenate([np.asarray(t["episode_success"], float) for t in run["tasks"].values()])


def split(run: dict) -> str:
    return run.get("split", "test")  # files written before `--split` existed are test runs


def check_same_episodes(ref: dict, run: dict, ref_path: Path, path: Path) -> None:
    """Refuse a pair that did not run the same episodes, naming the key that differs."""
    if split(run) != split(ref):
        raise SystemExit(f"{path}: split {split(run)!r}, expected {split(ref)!r} as in {ref_path}")
    for key in ("benchmark_seed", "seed", "episodes_per_task", "max_steps"):
        if run.get(key) != ref.get(key):
            raise SystemExit(f"{path}: {key} {run.get(key)!r}, expected {ref.get(key)!r} as in {ref_path}")
    if list(run["tasks"]) != list(ref["tasks"]):
        raise SystemExit(f"{path}: tasks {list(run['tasks'])}, expected {list(ref['tasks'])} as in {ref_path}")
    for task, t in ref["tasks"].items():
        if run["tasks"][task]["variations"] != t["variations"]:
            raise SystemExit(f"{path}: tasks.{task}.variations differ from {ref_path}'s: not the same episodes")


def paired_difference(ref: np.ndarray, other: np.ndarray) -> dict:
    """Outcomes (N,) of two runs on the same N episodes -> difference of means, paired and unpaired 95 % halves."""
    if ref.shape != other.shape or ref.ndim != 1 or len(ref) < 2:
        raise ValueError(f"outcomes: expected two (N,) arrays with N >= 2, got {ref.shape} and {other.shape}")
    d = other - ref
    n = len(d)
    unpaired = math.sqrt(ref.var(ddof=1) / n + other.var(ddof=1) / n)
    both_vary = ref.std() > 0 and other.std() > 0
    return {"difference": float(d.mean()), "paired_half": Z95 * float(d.std(ddof=1)) / math.sqrt(n),
            "unpaired_half": Z95 * unpaired, "correlation": float(np.corrcoef(ref, other)[0, 1]) if both_vary else math.nan}


def read_run(path: Path) -> dict:
    """An eval JSON, or a one-line exit naming the file and what is wrong with it."""
    try:
        run = json.loads(path.read_text())
    except OSError as e:
        raise SystemExit(f"{path}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SystemExit(f"{path}: not JSON ({e})") from None
    if isinstance(run, dict) and "tasks" not in run and isinstance(run.get("episodes"), list):
        return {**run, "tasks": outcome_record_tasks(run["episodes"], path)}
    if not isinstance(run, dict) or not isinstance(run.get("tasks"), dict):
        raise SystemExit(f"{path}: expected an eval JSON with a 'tasks' object (or a libero_failures record)")
    return run


def outcome_record_tasks(episodes: list, path: Path) -> dict:
    """A benchmarks/libero_failures.py record's episodes as an eval JSON's tasks: success and layout per episode."""
    tasks: dict[str, dict] = {}
    for i, e in enumerate(episodes):
        if not isinstance(e, dict) or not {"task", "layout", "outcome"} <= e.keys():
            raise SystemExit(f"{path}: episodes[{i}]: expected task, layout and outcome, got {e!r:.80}")
        task = tasks.setdefault(e["task"], {"variations": [], "episode_success": []})
        task["variations"].append(e["layout"])
        task["episode_success"].append(float(e["outcome"] == "success"))
    return tasks


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="eval JSON files; the first is the reference")
    args = ap.parse_args(argv)
    if len(args.runs) < 2:
        raise SystemExit("need a reference and at least one other eval JSON")
    runs = [read_run(p) for p in args.runs]
    ref, ref_path = runs[0], args.runs[0]
    a = episode_outcomes(ref)
    print(f"reference: {ref_path}  mean {a.mean() * 100:.1f} % over {len(a)} episodes ({split(ref)} split)")
    print(f"{'run':<60} {'mean':>6} {'diff':>6} {'paired 95%':>14} {'unpaired 95%':>14} {'corr':>5}")
    for run, path in zip(runs[1:], args.runs[1:]):
        check_same_episodes(ref, run, ref_path, path)
        if run.get("checkpoint") == ref.get("checkpoint") and None not in (
                ref.get("weights_sha256"), run.get("weights_sha256")) and run["weights_sha256"] != ref["weights_sha256"]:
            print(f"NOTE {path}: checkpoint {run['checkpoint']} holds other weights than in {ref_path} (weights_sha256 "
                  f"{run['weights_sha256'][:12]}... vs {ref['weights_sha256'][:12]}...): a retrained run, not the same model")
        b = episode_outcomes(run)
        r = paired_difference(a, b)
        lo, hi = r["difference"] - r["paired_half"], r["difference"] + r["paired_half"]
        ulo, uhi = r["difference"] - r["unpaired_half"], r["difference"] + r["unpaired_half"]
        print(f"{str(path):<60} {b.mean() * 100:>5.1f}% {r['difference'] * 100:>+6.1f} "
              f"{lo * 100:>+6.1f}..{hi * 100:>+5.1f} {ulo * 100:>+6.1f}..{uhi * 100:>+5.1f} {r['correlation']:>5.2f}")


if __name__ == "__main__":
    main()
