"""Datasets between fastwam and LeRobot's own ``LeRobotDataset``, both ways (issue #21's bar).

LeRobot cannot be a dependency here (it needs Python >= 3.12 and a CUDA torch; fastwam's venv is
3.11 with the CPU build), so the check runs in three steps across two environments, handing numpy
archives between them:

    .venv/bin/python benchmarks/lerobot_roundtrip.py write-fastwam   WORK          # fastwam's venv
    LEROBOT_PY       benchmarks/lerobot_roundtrip.py check-in-lerobot WORK --json OUT.json
    .venv/bin/python benchmarks/lerobot_roundtrip.py check-in-fastwam WORK --json OUT.json

1. ``write-fastwam``: fastwam writes a dataset (default AV1 encoding, 2 cameras, state, action, 3
   episodes, 2 tasks) and saves what its own reader reads back (``fastwam_read.npz``).
2. ``check-in-lerobot`` (LeRobot's venv): ``LeRobotDataset`` loads it; values, tasks and frames
   against ``fastwam_read.npz``; the stats LeRobot's quantile normalization needs; a LeRobot
   appended episode and a reload. Then LeRobot writes its own dataset (one camera as a video, one
   as images in the parquet) and saves what LeRobot reads back (``lerobot_read.npz``).
3. ``check-in-fastwam``: fastwam reads LeRobot's dataset; values and frames against
   ``lerobot_read.npz``. Each step merges its findings into ``OUT.json``.

Frames are compared as decoded by each side's reader (PyAV in both, so a lossy codec decodes to the
same pixels); ``max_abs_diff`` is reported, in 0-255 units.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

FPS, SIZE = 10, 32
TASKS = ["pick up the red block", "open the drawer"]
LENGTHS = [12, 9, 15]


def _frames(rng: np.random.Generator, n: int) -> np.ndarray:
    """Smooth moving gradients (a codec's realistic case, unlike noise): (n, SIZE, SIZE, 3) uint8."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    base = rng.uniform(0, 2 * np.pi, 3)
    return np.stack([np.stack([(127 + 100 * np.sin(x / 5 + y / 7 + t / 3 + b)) for b in base], -1)
                     for t in range(n)]).astype(np.uint8)


def write_fastwam(work: Path) -> dict:
    from fastwam.data.lerobot import LeRobotDataset, LeRobotWriter, build_features

    root = work / "fastwam_ds"
    features = build_features(FPS, {"image": (SIZE, SIZE), "wrist_image": (SIZE, SIZE)},
                              {"observation.state": [f"s{i}" for i in range(8)], "action": [f"a{i}" for i in range(7)]})
    rng = np.random.default_rng(0)
    with LeRobotWriter(root, fps=FPS, features=features) as writer:
        for i, n in enumerate(LENGTHS):
            writer.add_episode(TASKS[i % 2], {"observation.state": rng.normal(size=(n, 8)).astype(np.float32),
                                              "action": rng.uniform(-1, 1, (n, 7)).astype(np.float32)},
                               {"observation.images.image": _frames(rng, n), "observation.images.wrist_image": _frames(rng, n)})
    ds = LeRobotDataset(root)
    np.savez(work / "fastwam_read.npz", state=ds.column("observation.state"), action=ds.column("action"),
             image=np.asarray(ds.frames("observation.images.image", cache=False)),
             wrist_image=np.asarray(ds.frames("observation.images.wrist_image", cache=False)),
             tasks=np.array([ds.task(r) for r in range(len(ds.column("action")))]))
    info = json.loads((root / "meta" / "info.json").read_text())
    return {"fastwam_dataset": str(root), "codec": info["features"]["observation.images.image"]["info"]["video.codec"]}


def check_in_lerobot(work: Path) -> dict:
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ref = np.load(work / "fastwam_read.npz")
    ds = LeRobotDataset("local/fastwam_ds", root=work / "fastwam_ds")
    rows = [ds[i] for i in range(len(ds))]
    from importlib.metadata import version

    out = {"lerobot_version": version("lerobot"), "lerobot_loads_fastwam": True, "frames": len(ds),
           "episodes": ds.num_episodes}
    out["state_exact"] = bool(np.array_equal(np.stack([r["observation.state"].numpy() for r in rows]), ref["state"]))
    out["action_exact"] = bool(np.array_equal(np.stack([r["action"].numpy() for r in rows]), ref["action"]))
    out["tasks_exact"] = [r["task"] for r in rows] == ref["tasks"].tolist()
    for cam in ("image", "wrist_image"):
        got = np.stack([(r[f"observation.images.{cam}"].numpy().transpose(1, 2, 0) * 255).round() for r in rows])
        out[f"{cam}_max_abs_diff"] = float(np.abs(got - ref[cam].astype(np.float64)).max())
    stats = ds.meta.stats
    out["stats_keys_action"] = sorted(stats["action"])
    out["image_stats_count"] = int(np.asarray(stats["observation.images.image"]["count"]).reshape(-1)[0])
    # quantile normalization, as pi05's and the LIBERO recipes' processors use it
    from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
    from lerobot.processor.normalize_processor import NormalizerProcessorStep

    step = NormalizerProcessorStep(features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(7,))},
                                   norm_map={FeatureType.ACTION: NormalizationMode.QUANTILES}, stats=stats)
    normalized = step._normalize_action(torch.from_numpy(ref["action"]), inverse=False)
    out["quantile_normalization_ok"] = bool(torch.isfinite(normalized).all())
    # LeRobot appends an episode, then reloads the dataset (the CastError of the issue)
    ds = LeRobotDataset.resume("local/fastwam_ds", root=work / "fastwam_ds")
    for _ in range(5):
        ds.add_frame({"observation.state": np.zeros(8, np.float32), "action": np.zeros(7, np.float32),
                      "observation.images.image": np.zeros((SIZE, SIZE, 3), np.uint8),
                      "observation.images.wrist_image": np.zeros((SIZE, SIZE, 3), np.uint8), "task": TASKS[0]})
    ds.save_episode()
    ds.finalize()
    again = LeRobotDataset("local/fastwam_ds", root=work / "fastwam_ds")
    out["lerobot_appends_and_reloads"] = again.num_episodes == len(LENGTHS) + 1
    out.update(_write_lerobot(work))
    return out


def _write_lerobot(work: Path) -> dict:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.images.image": {"dtype": "video", "shape": (SIZE, SIZE, 3), "names": ["height", "width", "channels"]},
        "observation.images.wrist_image": {"dtype": "image", "shape": (SIZE, SIZE, 3),
                                           "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (8,), "names": [f"s{i}" for i in range(8)]},
        "action": {"dtype": "float32", "shape": (7,), "names": [f"a{i}" for i in range(7)]},
    }
    root = work / "lerobot_ds"
    ds = LeRobotDataset.create("local/lerobot_ds", fps=FPS, features=features, root=root, use_videos=True)
    rng = np.random.default_rng(1)
    for i, n in enumerate(LENGTHS):
        image, wrist = _frames(rng, n), _frames(rng, n)
        state, action = rng.normal(size=(n, 8)).astype(np.float32), rng.uniform(-1, 1, (n, 7)).astype(np.float32)
        for t in range(n):
            ds.add_frame({"observation.images.image": image[t], "observation.images.wrist_image": wrist[t],
                          "observation.state": state[t], "action": action[t], "task": TASKS[i % 2]})
        ds.save_episode()
    ds.finalize()
    ds = LeRobotDataset("local/lerobot_ds", root=root)
    rows = [ds[i] for i in range(len(ds))]
    np.savez(work / "lerobot_read.npz", state=np.stack([r["observation.state"].numpy() for r in rows]),
             action=np.stack([r["action"].numpy() for r in rows]),
             image=np.stack([(r["observation.images.image"].numpy().transpose(1, 2, 0) * 255).round() for r in rows]),
             wrist_image=np.stack([(r["observation.images.wrist_image"].numpy().transpose(1, 2, 0) * 255).round()
                                   for r in rows]),
             tasks=np.array([r["task"] for r in rows]))
    info = json.loads((root / "meta" / "info.json").read_text())
    return {"lerobot_dataset": str(root), "lerobot_codebase_version": info["codebase_version"],
            "lerobot_video_codec": info["features"]["observation.images.image"]["info"]["video.codec"]}


def check_in_fastwam(work: Path) -> dict:
    from fastwam.data.lerobot import LeRobotDataset

    ref = np.load(work / "lerobot_read.npz")
    ds = LeRobotDataset(work / "lerobot_ds")
    out = {"fastwam_loads_lerobot": True,
           "lerobot_state_exact": bool(np.array_equal(ds.column("observation.state"), ref["state"])),
           "lerobot_action_exact": bool(np.array_equal(ds.column("action"), ref["action"])),
           "lerobot_tasks_exact": [ds.task(r) for r in range(len(ref["tasks"]))] == ref["tasks"].tolist()}
    for cam in ("image", "wrist_image"):
        got = np.asarray(ds.frames(f"observation.images.{cam}", cache=False)).astype(np.float64)
        out[f"lerobot_{cam}_max_abs_diff"] = float(np.abs(got - ref[cam]).max())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=["write-fastwam", "check-in-lerobot", "check-in-fastwam"])
    parser.add_argument("work", type=Path, help="a working directory both environments can read")
    parser.add_argument("--json", type=Path, default=None, help="merge the findings into this JSON")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    found = {"write-fastwam": write_fastwam, "check-in-lerobot": check_in_lerobot,
             "check-in-fastwam": check_in_fastwam}[args.step](args.work)
    found[f"{args.step}_python"] = sys.version.split()[0]
    print(json.dumps(found, indent=1))
    if args.json:
        merged = json.loads(args.json.read_text()) if args.json.is_file() else {}
        args.json.write_text(json.dumps(merged | found, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
