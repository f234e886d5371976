"""Does a results directory belong to this checkpoint? Guards the resumable benchmark queues.

A queue (benchmarks/mt10_rtc.sh, mt10_few_step.sh) skips the rows whose JSON exists and pairs new
rows with its reference row. Retraining a run under the same path (on another machine training is
not bitwise reproducible) would silently mix two models in one table; this refuses that: the
reference JSON's ``weights_sha256`` must be the SHA-256 of the checkpoint's newest model.safetensors.

    .venv/bin/python benchmarks/same_weights.py REFERENCE.json RUN   # exit 0, or 1 with the reason
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastwam.checkpoint import latest_checkpoint, sha256


def mismatch(reference: Path, run: Path) -> str | None:
    """Why REFERENCE's rows were not measured with RUN's weights, or None when they were (or none exist yet)."""
    if not reference.is_file():
        return None
    try:
        recorded = json.loads(reference.read_text()).get("weights_sha256")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        return f"{reference}: not an eval JSON ({e}); expected its weights_sha256"
    weights = latest_checkpoint(run) / "model.safetensors"
    if recorded is None:
        return (f"{reference}: records no weights_sha256 (written before it existed), so its rows cannot be "
                f"matched to {weights}; expected another OUT directory for this checkpoint")
    got = sha256(weights)
    if got != recorded:
        return (f"{reference}: measured weights_sha256 {recorded[:12]}..., {weights} is {got[:12]}...: "
                "another model; expected another OUT directory for this checkpoint")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reference", type=Path, help="the queue's reference eval JSON")
    ap.add_argument("run", type=Path, help="the checkpoint (run directory) the queue evaluates")
    args = ap.parse_args(argv)
    reason = mismatch(args.reference, args.run)
    if reason:
        print(reason, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
