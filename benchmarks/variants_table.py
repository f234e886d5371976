"""The controlled comparison's table (issue #18), in the paper's form, from the files of
``benchmarks/mt10_variants.sh``: per variant, mean success with its 95 % interval, the paired
difference against Fast-WAM with its paired 95 % interval (``paired_comparison.py``: the same
episodes), policy latency per chunk from the same eval runs (with its ratio to Fast-WAM's where both
were timed on one machine), and imagination PSNR/SSIM (validation
episodes) — per seed and pooled over seeds (episodes of both seeds together, each paired with
Fast-WAM's of its seed); then the per-task breakdown. Missing files are shown as not run; rows
trained on different datasets (``training_data_sha256``) or timed on different machines (``machine``, ``boot_id``)
are named in notes under the table, and a row's seeds timed on two machines are not pooled.

    .venv/bin/python benchmarks/variants_table.py [--dir docs/results/mt10_variants] [--split test] [--plot F.png]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np

ROWS = ("fastwam", "joint", "idm", "lambda0", "dual_fastwam", "dual_idm", "idm_noised")
LABELS = {"fastwam": "Fast-WAM", "joint": "Joint", "idm": "IDM", "lambda0": "no video co-training (λ = 0)",
          "dual_fastwam": "dual, Fast-WAM mode", "dual_idm": "dual, IDM mode",
          "idm_noised": "IDM, future noised (σ = 0.08)"}
SEEDS = (0, 1)

_spec = importlib.util.spec_from_file_location("paired_comparison", Path(__file__).parent / "paired_comparison.py")
paired = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paired)


def load(directory: Path, split: str) -> tuple[dict, dict]:
    """(runs[(row, seed)] -> eval JSON, imagination[(row, seed)] -> imagination JSON), the files that exist."""
    runs, imagination = {}, {}
    for row in ROWS:
        for seed in SEEDS:
            path = directory / f"{row}_s{seed}_{split}.json"
            if path.is_file():
                runs[row, seed] = json.loads(path.read_text())
            path = directory / f"imagination_{row}_s{seed}.json"
            if path.is_file():
                imagination[row, seed] = json.loads(path.read_text())
    return runs, imagination


def _interval(outcomes: np.ndarray) -> str:
    from fastwam.evaluate import wilson_interval

    low, high = wilson_interval(int(outcomes.sum()), len(outcomes))
    return f"{100 * outcomes.mean():.1f} % ({100 * low:.1f}-{100 * high:.1f})"


def row_cells(runs: dict, imagination: dict, row: str, seeds: tuple[int, ...]) -> list[str]:
    """Success, paired difference against fastwam, chunk ms, PSNR, SSIM for ``row`` over ``seeds``."""
    present = [s for s in seeds if (row, s) in runs]
    if len(present) < len(seeds):
        return ["not run"] + [""] * 4
    outcomes = np.concatenate([paired.episode_outcomes(runs[row, s]) for s in seeds])
    cells = [_interval(outcomes)]
    if row == "fastwam":
        cells.append("reference")
    elif (d := against_fastwam(runs, row, seeds)) is not None:
        cells.append(f"{d[0]:+.1f} ({d[1]:+.1f} to {d[2]:+.1f})")
    else:
        cells.append("no Fast-WAM run")
    cells.append(latency_cell(runs, row, seeds))
    source = "dual_fastwam" if row == "dual_idm" else row  # one set of weights: one imagination
    scores = [imagination[source, s] for s in seeds if (source, s) in imagination]
    if row == "lambda0" or len(scores) < len(seeds):
        cells += ["—" if row == "lambda0" else "not run"] * 2
    else:
        cells += [f"{np.mean([r['psnr']['overall'] for r in scores]):.2f}",
                  f"{np.mean([r['ssim']['overall'] for r in scores]):.3f}"]
    return cells


def against_fastwam(runs: dict, row: str, seeds: tuple[int, ...]) -> tuple[float, float, float] | None:
    """(difference, low, high) in points of ``row`` minus Fast-WAM on the same episodes of ``seeds``, with
    its paired 95 % interval; None unless both were run with every seed."""
    if not all((name, s) in runs for name in (row, "fastwam") for s in seeds):
        return None
    for s in seeds:
        paired.check_same_episodes(runs["fastwam", s], runs[row, s], Path(f"fastwam_s{s}"), Path(f"{row}_s{s}"))
    ref, run = (np.concatenate([paired.episode_outcomes(runs[name, s]) for s in seeds]) for name in ("fastwam", row))
    d = paired.paired_difference(ref, run)
    return tuple(100 * x for x in (d["difference"], d["difference"] - d["paired_half"], d["difference"] + d["paired_half"]))


def latency_cell(runs: dict, row: str, seeds: tuple[int, ...]) -> str:
    """Mean policy ms per chunk over ``seeds``, with its ratio to Fast-WAM's where every seed of both
    was timed on one machine; timings of two machines are not averaged into one."""
    if len(machines := {timed_on(runs[row, s]) for s in seeds}) > 1:
        return f"seeds on {len(machines)} machines"

    def ms(name: str) -> float:
        return float(np.mean([t["mean_chunk_ms"] for s in seeds for t in runs[name, s]["tasks"].values()]))

    same_machine = all(("fastwam", s) in runs and timed_on(runs["fastwam", s]) in machines for s in seeds)
    return f"{ms(row):.1f}" + (f" ({ms(row) / ms('fastwam'):.1f}x)" if row != "fastwam" and same_machine else "")


def timed_on(run: dict) -> str:
    """The machine a run's timings come from: its processor and threads (``machine``) and its boot
    (``boot_id``; older records: the day). Each session ran on a fresh VM of the same host name, and two of
    one processor model are not one machine (Fast-WAM's seed 1 ran on a VM losing 25-47 % to its hypervisor)."""
    if not run.get("machine"):
        return "not recorded"
    when = f"boot {run['boot_id'][:8]}" if run.get("boot_id") else run.get("date", "")[:10]
    return f"{run['machine']}, {when}" if when else run["machine"]


def trained_on(run: dict) -> str:
    """The demonstrations a run's checkpoint trained on: the start of their content hash."""
    return (run.get("training_data_sha256") or "not recorded")[:12]  # older records lack the key


# record key -> what differing values mean, and the value rows are grouped by
NOTES = {"training_data_sha256": ("rows trained on different data", trained_on),
         "machine": ("ms / chunk timed on different machines, comparable only within one", timed_on)}


def note(runs: dict, key: str) -> str:
    """The rows grouped by their record's ``key`` (dataset hash, machine), when they hold more than one value."""
    meaning, value_of = NOTES[key]
    groups: dict[str, list[str]] = {}
    for (row, seed), run in sorted(runs.items()):
        groups.setdefault(value_of(run), []).append(f"{row}_s{seed}")
    if len(groups) < 2:
        return ""
    return f"NOTE: {meaning} ({key}): " + "; ".join(f"{value}: {', '.join(rows)}" for value, rows in groups.items())


def table(runs: dict, imagination: dict, split: str) -> str:
    head = ("| variant | seeds | success (95 %) | paired difference vs Fast-WAM (95 %) | ms / chunk | PSNR (dB) | SSIM |\n"
            "|---|---|---|---|---|---|---|")
    lines = [f"MT10, {split} split, 50 episodes per task and seed", "", head]
    for seeds, label in [((s,), str(s)) for s in SEEDS] + [(SEEDS, "pooled")]:
        for row in ROWS:
            lines.append(f"| {LABELS[row]} | {label} | " + " | ".join(row_cells(runs, imagination, row, seeds)) + " |")
    tasks = next((list(r["tasks"]) for r in runs.values()), [])
    if tasks:
        lines += ["", "| task | " + " | ".join(LABELS[r] for r in ROWS) + " |", "|---|" + "---|" * len(ROWS)]
        for task in tasks:
            cells = []
            for row in ROWS:  # the mean over seeds; a row not yet run with every seed names its seeds
                seeds = [s for s in SEEDS if (row, s) in runs]
                rate = np.mean([runs[row, s]["tasks"][task]["success_rate"] for s in seeds]) if seeds else None
                partial = "" if len(seeds) == len(SEEDS) else f" (seed {', '.join(map(str, seeds))})"
                cells.append("—" if rate is None else f"{100 * rate:.0f} %{partial}")
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
    for key in NOTES:
        if text := note(runs, key):
            lines += ["", text]
    return "\n".join(lines)


# The paper's differences against Fast-WAM, in points (its tables: RoboTwin 2.0 average of clean and
# randomized, LIBERO average of the four suites), to read MT10's beside.
PAPER = {"joint": {"RoboTwin": -1.2, "LIBERO": +0.9}, "idm": {"RoboTwin": -0.5, "LIBERO": +0.4},
         "lambda0": {"RoboTwin": -8.0, "LIBERO": -4.1}}


def plot(directory: Path, path: Path) -> dict[str, list[tuple[str, str, float]]]:
    """Every variant's paired difference against Fast-WAM with its 95 % interval, per seed and pooled, one
    panel per split, the paper's differences marked beside (PNG). Returns the points drawn per split:
    (variant, seed group, difference)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in ROWS if r != "fastwam"]
    groups = [((s,), f"seed {s}") for s in SEEDS] + [(SEEDS, "pooled")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.9 * len(rows) + 1.5), sharey=True)
    drawn = {}
    for ax, split in zip(axes, ("test", "validation")):
        runs, _ = load(directory, split)
        drawn[split] = []
        for i, (seeds, label) in enumerate(groups):
            offset = 0.22 * (i - (len(groups) - 1) / 2)
            for y, row in enumerate(rows):
                if (d := against_fastwam(runs, row, seeds)) is None:
                    continue
                pooled = len(seeds) > 1
                ax.errorbar(d[0], y + offset, xerr=[[d[0] - d[1]], [d[2] - d[0]]], fmt="D" if pooled else "o",
                            color=f"C{i}", ms=6 if pooled else 4, lw=2 if pooled else 1, capsize=2,
                            label=label)  # one legend entry per label: deduplicated below
                drawn[split].append((row, label, d[0]))
        for marker, bench in (("x", "RoboTwin"), ("+", "LIBERO")):
            points = [(PAPER[r][bench], y - 0.42) for y, r in enumerate(rows) if r in PAPER]  # above the seeds
            ax.scatter(*zip(*points), marker=marker, color="0.3", s=40, zorder=3, label=f"paper, {bench}")
        ax.axvline(0, color="0.5", lw=0.8)
        ax.set_title(f"MT10, {split} split (50 episodes per task and seed)", fontsize=10)
        ax.set_xlabel("success minus Fast-WAM's, points (paired 95 %)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), [LABELS[r] for r in rows])
    axes[0].set_ylim(len(rows) - 0.5, -0.7)  # the first row on top
    unique = {}  # both panels' entries: a seed group may be drawn on one split only
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        unique |= {label: handle for label, handle in zip(labels, handles) if label not in unique}
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=len(unique), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="docs/results/mt10_variants")
    parser.add_argument("--split", default="test", choices=["test", "validation"])
    parser.add_argument("--plot", type=Path, default=None,
                        help="also draw every variant's paired difference against Fast-WAM, both splits (PNG)")
    args = parser.parse_args(argv)
    runs, imagination = load(Path(args.dir), args.split)
    print(table(runs, imagination, args.split))
    if args.plot:
        plot(Path(args.dir), args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
