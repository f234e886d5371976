"""The README's first command: `fastwam demo --quick` runs every stage and prints its summary.

Run as a user runs it, in a process of its own (in the test process, after other tests had left
threads behind, its collection's spawned pool once waited forever)."""

import json
import subprocess
import sys


def demo(out) -> str:
    done = subprocess.run([sys.executable, "-m", "fastwam.cli", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_demo_quick_runs_every_stage_and_prints_the_summary(tmp_path):
    out = demo(tmp_path)
    summary = out[out.index("fastwam demo: results"):]
    evaluation = json.loads((tmp_path / "quick" / "eval.json").read_text())
    bench = json.loads((tmp_path / "quick" / "bench.json").read_text())
    # the summary repeats the evaluation's per-task row and every latency table the bench wrote
    for task in evaluation["tasks"]:
        assert f"\n{task:<28} " in summary
    assert summary.count("latency per action chunk: preset small") == len(bench["runs"]) >= 1
    for variant in ("fastwam", "joint", "idm"):
        assert f"\n{variant:<10} " in summary
    assert "stage times: collect" in summary and (tmp_path / "quick" / "run" / "loss.png").is_file()

    # run again: every stage is reused, and the summary still prints
    again = demo(tmp_path)
    assert again.count("(already done:") == 4 and "fastwam demo: results" in again
