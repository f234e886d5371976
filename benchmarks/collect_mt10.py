"""Time MetaWorld demonstration collection (target: MT10, 10 episodes/task, 96 px, <= 10 min on 2 cores).

Runs exactly ``fastwam collect metaworld --tasks mt10 --episodes 10 --image-size 96 --workers 2
--out OUT`` in a subprocess and reports wall time, frames and the machine's load (other jobs on a
shared machine slow it down; the load average says how much).

    MUJOCO_GL=egl .venv/bin/python benchmarks/collect_mt10.py --out data/mt10_96 [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/mt10_96")
    parser.add_argument("--tasks", default="mt10")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    command = [sys.executable, "-m", "fastwam.cli", "collect", "metaworld", "--tasks", args.tasks,
               "--episodes", str(args.episodes), "--image-size", str(args.image_size),
               "--workers", str(args.workers), "--out", args.out]
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    load_before = os.getloadavg()
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    seconds = time.perf_counter() - start
    meta = json.loads((Path(args.out) / "meta" / "fastwam.json").read_text())
    result = {
        "command": "fastwam " + " ".join(command[3:]),
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()}-core CPU, no GPU ({platform.processor() or platform.machine()})",
        "wall_seconds": round(seconds, 1),
        "episodes": len(meta["episodes"]),
        "frames": meta["total_frames"],
        "frames_per_second": round(meta["total_frames"] / seconds, 1),
        "failed_variations": sum(len(v) for v in meta["failed_variations"].values()),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
