"""Loader throughput: ChunkDataset samples/s on a collected dataset (e.g. MT10 at 96 px).

Measures (1) the one-time decode of all frames into the dataset's cache/ (skipped when the cache
exists unless --fresh), (2) samples/s of a shuffled DataLoader at the given batch size with 0 and
with --workers worker processes. A CPU training step of the small preset takes ~0.5-3 s per batch
of 32, i.e. needs ~10-60 samples/s.

    .venv/bin/python benchmarks/loader_speed.py --data data/mt10_96 [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from fastwam.data.lerobot import LeRobotDataset
from fastwam.data.windows import ChunkDataset


def time_decode(root: Path, fresh: bool) -> dict:
    if fresh and (root / "cache").exists():
        shutil.rmtree(root / "cache")
    start = time.perf_counter()
    dataset = LeRobotDataset(root)
    for key in dataset.video_keys:
        dataset.frames(key, progress=True)
    seconds = time.perf_counter() - start
    return {"frames": dataset.num_frames, "cameras": len(dataset.video_keys), "open_and_decode_seconds": round(seconds, 2),
            "decoded_frames_per_second": round(dataset.num_frames * len(dataset.video_keys) / seconds, 1)}


def time_loader(windows: ChunkDataset, batch_size: int, workers: int, batches: int) -> float:
    """Samples per second over `batches` shuffled batches (after one warm-up batch)."""
    loader = DataLoader(windows, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    count = 0
    for _ in range(batches):
        try:
            count += len(next(iterator)["frames"])
        except StopIteration:
            break
    return count / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/mt10_96")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--frame-stride", type=int, default=8)
    parser.add_argument("--future-frames", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the second measurement")
    parser.add_argument("--fresh", action="store_true", help="delete cache/ first to time the decode")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="intra-op threads of the main process (collate); >1 can stall badly on a busy 2-core box")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    root = Path(args.data)
    result = {"command": "python " + " ".join(sys.argv), "date": datetime.date.today().isoformat(),
              "machine": f"{os.cpu_count()}-core CPU, no GPU", "data": str(root), "torch_threads": args.torch_threads,
              "batch_size": args.batch_size}
    result.update(time_decode(root, args.fresh))
    windows = ChunkDataset(root, args.chunk, args.frame_stride, args.future_frames)
    result["samples"] = len(windows)
    result["sample_shape"] = list(windows[0]["frames"].shape)
    for workers in (0, args.workers):
        rate = time_loader(windows, args.batch_size, workers, args.batches)
        result[f"samples_per_second_workers_{workers}"] = round(rate, 1)
    result["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
