"""``fastwam dataset check DIR``: what a LeRobot dataset holds, and what a preset must change to train on it.

One screen: layout version, episodes, frames, fps, tasks; each camera's size and encoding; the
state and action vectors; which statistics ``meta/stats.json`` carries (quantile normalization needs
q01/q99); then, for ``--preset``, the config keys to change (cameras, image size, ``model.latent_*``,
state and action dims), each as current -> needed, and whether the changed config is valid. Exit
status 0 when the preset trains on the dataset as it is, 1 when something must change.

It checks at least what ``fastwam train`` checks before training: every data and video file the
episodes use is present, matches ``meta/checksums.json`` (where the dataset has one) and opens with
the size, rate and frame count the episodes need; ``meta/stats.json`` is finite, of the features'
sizes and has what the preset's normalization needs; state and action are float32.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from fastwam.config import Config, preset
from fastwam.data.lerobot import DEFAULT_FEATURES, FILE_CHECKSUMS, DatasetError, LeRobotDataset, camera_name
from fastwam.data.normalize import Normalizer
from fastwam.data.windows import ACTION_KEY, STATE_KEY, float_column

QUANTILES = ("q01", "q99")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["check"], help="check: what a dataset holds and what a preset needs to train on it")
    parser.add_argument("dir", help="LeRobot dataset directory")
    parser.add_argument("--preset", default="small", help="tiny, small, wan22-5b or a YAML path (default small)")
    parser.add_argument("--cameras", default="",
                        help="comma list of the cameras to train on (default: the preset's if the dataset has them, "
                             "else all of the dataset's)")


def run(args: argparse.Namespace) -> int:
    dataset = LeRobotDataset(args.dir)
    cfg = preset(args.preset)
    cameras = [c.strip() for c in args.cameras.split(",") if c.strip()] or None
    print(describe(dataset))
    changes, problem = needed_changes(cfg, dataset, cameras)
    problems = training_problems(dataset, cfg)
    print()
    print(format_changes(args.preset, changes, problem, problems))
    return 0 if not changes and problem is None and not problems else 1


def training_problems(dataset: LeRobotDataset, cfg: Config) -> list[str]:
    """What ``fastwam train`` would refuse in the dataset's files and values, one line each."""
    problems = dataset.check_files()
    for key in (STATE_KEY, ACTION_KEY):
        if key in dataset.features:
            try:
                float_column(dataset, key)
            except DatasetError as e:
                problems.append(str(e))
    modes = {STATE_KEY: cfg.data.state_normalization, ACTION_KEY: cfg.data.action_normalization}
    if all(k in dataset.features for k in modes):
        try:
            Normalizer.from_dataset(dataset, modes)
        except (DatasetError, ValueError, OSError) as e:
            problems.append(str(e))
    return problems


def describe(dataset: LeRobotDataset) -> str:
    """What the dataset holds, one line per fact."""
    lines = [f"dataset {dataset.root} (LeRobot {dataset.version}): {dataset.num_episodes} episodes, "
             f"{dataset.num_frames} frames at {dataset.fps:g} fps, {len(dataset.tasks)} task(s)"]
    for task in dataset.tasks[:3]:
        lines.append(f"  task: {task}")
    if len(dataset.tasks) > 3:
        lines.append(f"  ... {len(dataset.tasks) - 3} more")
    for key in dataset.camera_keys:
        feature = dataset.features[key]
        h, w, _ = feature["shape"]
        info = feature.get("info") or {}
        encoding = ", ".join(str(info[k]) for k in ("video.codec", "video.pix_fmt") if info.get(k)) or "encoding not recorded"
        kind = "images in the parquet" if key in dataset.image_keys else f"video ({encoding})"
        lines.append(f"camera {camera_name(key)}: {h}x{w} px {kind}")
    for key, feature in dataset.features.items():
        if feature["dtype"] not in ("video", "image") and key not in DEFAULT_FEATURES:
            names = feature.get("names")
            named = f" {names}" if isinstance(names, list) and len(names) <= 12 else ""
            lines.append(f"vector {key}: {feature['dtype']} {tuple(feature['shape'])}{named}")
    lines.append(stats_line(dataset))
    lines.append(f"checksums: {len(dataset.checksums)} files recorded in {FILE_CHECKSUMS}" if dataset.checksums else
                 f"checksums: none ({FILE_CHECKSUMS} is written by fastwam's collections): altered video bytes "
                 "would decode to wrong frames undetected")
    return "\n".join(lines)


def stats_line(dataset: LeRobotDataset) -> str:
    try:
        stats = dataset.stats
    except (OSError, ValueError) as e:
        return f"stats: unreadable ({e})"
    keys = [k for k in (STATE_KEY, ACTION_KEY) if k in dataset.features]
    missing = [k for k in keys if k not in stats]
    if missing:
        return f"stats: none for {missing} (fastwam train computes them from the data)"
    kinds = sorted(set.intersection(*(set(stats[k]) for k in keys))) if keys else []
    note = "" if all(q in kinds for q in QUANTILES) else " (no q01/q99: quantile normalization needs --recompute-stats)"
    return f"stats: {', '.join(kinds)}{note}"


def needed_changes(cfg: Config, dataset: LeRobotDataset, cameras: Sequence[str] | None = None
                   ) -> tuple[list[tuple[str, object, object]], str | None]:
    """The (config key, current, needed) changes for ``cfg`` to train on ``dataset``, and the error
    the changed config still raises (None: valid)."""
    have = dataset.cameras
    if cameras is None:
        cameras = list(cfg.data.cameras) if all(c in have for c in cfg.data.cameras) else have
    unknown = [c for c in cameras if c not in have]
    if unknown:
        raise ValueError(f"--cameras: {unknown} not among the dataset's cameras {have}")
    if not cameras:
        return [], f"{dataset.root}: no video features: fastwam trains on camera frames"
    sizes = {tuple(dataset.features[f"observation.images.{c}"]["shape"][:2]) for c in cameras}
    if len(sizes) != 1 or len({*next(iter(sizes))}) != 1:
        return [], (f"cameras {cameras} are {sorted(sizes)} px: fastwam trains on square frames of one size; "
                    "re-record (or resize) them to one square size")
    size = next(iter(sizes))[0]
    h = size // cfg.data.codec.factor  # the codec's grid; a size it does not divide is reported by the config check
    needed = {"data.cameras": tuple(cameras), "data.image_size": size,
              "model.latent_channels": 3 * cfg.data.codec.factor**2 if cfg.data.codec.name == "patch"
              else cfg.model.latent_channels,
              "model.latent_height": h, "model.latent_width": h * len(cameras)}
    for key, field in ((STATE_KEY, "state_dim"), (ACTION_KEY, "action_dim")):
        if key not in dataset.features:
            return [], f"{dataset.root}: no {key!r} feature: fastwam trains on state and action vectors"
        needed[f"model.{field}"] = int(dataset.features[key]["shape"][0])
    sections = {"data": cfg.data, "model": cfg.model}
    changes = [(key, getattr(sections[key.split(".")[0]], key.split(".")[1]), value) for key, value in needed.items()]
    changes = [(key, old, new) for key, old, new in changes if old != new]
    try:
        data = dataclasses.replace(cfg.data, **{k[5:]: v for k, v in needed.items() if k.startswith("data.")})
        model = dataclasses.replace(cfg.model, **{k[6:]: v for k, v in needed.items() if k.startswith("model.")})
        cfg.replace(data=data, model=model)
    except ValueError as e:
        return changes, str(e)
    return changes, None


def format_changes(name: str, changes: list[tuple[str, object, object]], problem: str | None,
                   problems: Sequence[str] = ()) -> str:
    lines = [f"preset {name}: to train on this dataset, change"] if changes else []
    width = max([len(k) for k, _, _ in changes] or [0])
    lines += [f"  {key:<{width}}  {_plain(old)} -> {_plain(new)}" for key, old, new in changes]
    if problem is not None:
        lines.append(f"preset {name}, even so: {problem}")
    if problems:
        lines += [f"train would refuse this dataset ({len(problems)} problem(s)):"] + [f"  {p}" for p in problems]
    return "\n".join(lines) or f"preset {name}: trains on this dataset as it is"


def _plain(value: object) -> str:
    return f"[{', '.join(map(str, value))}]" if isinstance(value, (list, tuple)) else str(value)
