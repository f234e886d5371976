"""Size, decode cost and pixel error of fastwam's video encodings on a dataset's own frames.

Re-encodes every frame of one camera of a LeRobot dataset (decoded once, from any encoding) with each
of ``fastwam.data.lerobot.VIDEO_ENCODINGS`` through the dataset writer, then reads it back with the
dataset reader: megabytes, decode milliseconds per frame (one thread), and the mean and 99th
percentile absolute error against the source frames (levels of 255).

    .venv/bin/python benchmarks/video_encodings.py data/mt10_c3_96 [--camera corner3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from fastwam.data.lerobot import VIDEO_ENCODINGS, LeRobotDataset, LeRobotWriter, build_features, camera_key


def measure(dataset: LeRobotDataset, camera: str, episodes: int | None = None) -> dict:
    key = camera_key(camera)
    chosen = dataset.episodes[:episodes]
    source = np.concatenate([dataset.episode_frames(e.index, key) for e in chosen])
    h, w = source.shape[1:3]
    results = {}
    for name, video in VIDEO_ENCODINGS.items():
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "ds"
            features = build_features(dataset.fps, {camera: (h, w)}, {"action": ["a"]}, video=video)
            start = time.perf_counter()
            with LeRobotWriter(root, fps=dataset.fps, features=features, video=video) as writer:
                start_row = 0
                for e in chosen:
                    writer.add_episode("t", {"action": np.zeros((e.length, 1), np.float32)},
                                       {key: source[start_row:start_row + e.length]})
                    start_row += e.length
            encode = time.perf_counter() - start
            size = sum(p.stat().st_size for p in (root / "videos").rglob("*.mp4"))
            start = time.perf_counter()
            decoded = np.asarray(LeRobotDataset(root).frames(key, cache=False))
            decode = time.perf_counter() - start
        error = np.abs(decoded.astype(np.int16) - source)
        results[name] = {"codec": video.codec, "pix_fmt": video.pix_fmt, "crf": video.crf, "gop": video.gop,
                         "bytes": size, "encode_ms_per_frame": round(encode / len(source) * 1e3, 3),
                         "decode_ms_per_frame": round(decode / len(source) * 1e3, 3),
                         "mean_abs_error": round(float(error.mean()), 3),
                         "p99_abs_error": float(np.percentile(error, 99)), "max_abs_error": int(error.max())}
    return {"dataset": str(dataset.root), "camera": camera, "frames": len(source), "size": [h, w], "encodings": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--camera", default="", help="camera name (default: the dataset's first)")
    parser.add_argument("--episodes", type=int, default=None, help="the first N episodes (default: all)")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    dataset = LeRobotDataset(args.dataset)
    record = measure(dataset, args.camera or dataset.cameras[0], args.episodes)
    print(f"{record['dataset']} {record['camera']}: {record['frames']} frames of {record['size'][0]}x{record['size'][1]} px")
    print(f"{'encoding':<10} {'MB':>7} {'encode ms/frame':>16} {'decode ms/frame':>16} {'mean err':>9} {'p99 err':>8} {'max err':>8}")
    for name, r in record["encodings"].items():
        print(f"{name:<10} {r['bytes'] / 2**20:>7.3f} {r['encode_ms_per_frame']:>16.3f} {r['decode_ms_per_frame']:>16.3f} "
              f"{r['mean_abs_error']:>9.2f} {r['p99_abs_error']:>8.0f} {r['max_abs_error']:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
