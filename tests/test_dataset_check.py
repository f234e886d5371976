"""``fastwam dataset check``: what a dataset holds and what a preset must change to train on it."""

import pytest

from fastwam.cli import main
from fastwam.config import preset
from fastwam.data.check import needed_changes
from fastwam.data.lerobot import LeRobotDataset
from test_train import write_dot_dataset


@pytest.fixture(scope="module")
def dot(tmp_path_factory):
    return write_dot_dataset(tmp_path_factory.mktemp("check") / "ds", 16)


def test_a_preset_that_fits_trains_as_it_is(dot, capsys):
    assert main(["dataset", "check", str(dot), "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "2 episodes, 24 frames at 10 fps, 2 task(s)" in out
    assert "camera corner3: 16x16 px video (av1, yuv420p)" in out
    assert "vector action: float32 (4,)" in out and "q01" in out
    assert "preset tiny: trains on this dataset as it is" in out


def test_the_changes_a_preset_needs_are_listed_and_make_a_valid_config(dot, capsys):
    assert main(["dataset", "check", str(dot), "--preset", "small"]) == 1
    out = capsys.readouterr().out
    assert "data.image_size      64 -> 16" in out and "model.latent_height  8 -> 2" in out  # small: 8x8 px patches
    changes, problem = needed_changes(preset("small"), LeRobotDataset(dot))
    assert problem is None
    assert changes == [("data.image_size", 64, 16), ("model.latent_height", 8, 2), ("model.latent_width", 8, 2)]


def test_a_change_that_still_leaves_an_invalid_config_says_why(dot):
    cfg = preset("benchmarks/mt10_96px_stem.yaml")  # 4x4 px latents, 6x6-latent patches
    changes, problem = needed_changes(cfg, LeRobotDataset(dot))  # 16 px -> a 4x4 grid, not divisible by 6x6 patches
    assert ("data.image_size", 96, 16) in changes
    assert problem is not None and "latent grid 4x4 is not divisible by patch 6x6" in problem


def test_unknown_cameras_are_named(dot):
    with pytest.raises(SystemExit, match=r"--cameras: \['wrist'\] not among the dataset's cameras \['corner3'\]"):
        main(["dataset", "check", str(dot), "--preset", "tiny", "--cameras", "wrist"])


def _copy(dot, tmp_path):
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(dot, copy, ignore=shutil.ignore_patterns("cache"))
    return copy


def _nan_in_stats(root):
    import json

    stats = json.loads((root / "meta/stats.json").read_text())
    stats["action"]["max"][2] = float("nan")
    (root / "meta/stats.json").write_text(json.dumps(stats))


def _video(root):
    return next((root / "videos").rglob("*.mp4"))


@pytest.mark.parametrize("damage, message", [
    (lambda root: _video(root).unlink(), r"file-000.mp4: missing \(recorded in meta/checksums.json\)"),
    (lambda root: _video(root).write_bytes(_video(root).read_bytes()[:-200]), r"file-000.mp4: altered since it was written"),
    (lambda root: _nan_in_stats(root), r"meta/stats.json: stats of 'action' contain NaN or inf"),
])
def test_what_train_refuses_dataset_check_reports(dot, tmp_path, capsys, damage, message):
    import re

    from fastwam.train import build_trainer
    from test_train import tiny_config

    root = _copy(dot, tmp_path)
    damage(root)
    assert main(["dataset", "check", str(root), "--preset", "tiny"]) == 1
    out = capsys.readouterr().out
    assert "train would refuse this dataset (1 problem(s)):" in out and re.search(message, out), out
    assert "trains on this dataset as it is" not in out
    with pytest.raises(ValueError, match=message):  # ... and train does refuse it
        build_trainer(tiny_config(steps=1), root, tmp_path / "run", progress=False)


def test_altered_video_bytes_are_detected_before_they_decode_to_wrong_frames(dot, tmp_path):
    from fastwam.data.lerobot import DatasetError

    root = _copy(dot, tmp_path)
    video = _video(root)
    data = bytearray(video.read_bytes())
    data[len(data) // 2] ^= 0x5A  # one byte inside the coded frames: still decodes, to other pixels
    video.write_bytes(bytes(data))
    dataset = LeRobotDataset(root)
    with pytest.raises(DatasetError, match=r"file-000.mp4: altered since it was written \(SHA-256"):
        dataset.episode_frames(0, "corner3")
    with pytest.raises(DatasetError, match="altered since it was written"):
        dataset.frames("corner3")
    assert main(["dataset", "check", str(root), "--preset", "tiny"]) == 1


def test_a_dataset_without_checksums_still_loads_and_says_what_it_cannot_detect(dot, tmp_path, capsys):
    root = _copy(dot, tmp_path)
    (root / "meta/checksums.json").unlink()
    assert LeRobotDataset(root).episode_frames(1, "corner3").shape == (12, 16, 16, 3)
    assert main(["dataset", "check", str(root), "--preset", "tiny"]) == 0
    assert "checksums: none (meta/checksums.json is written by fastwam's collections)" in capsys.readouterr().out


def test_stats_of_the_wrong_size_are_refused_naming_the_file(dot, tmp_path):
    import json

    from fastwam.data.normalize import Normalizer

    root = _copy(dot, tmp_path)
    stats = json.loads((root / "meta/stats.json").read_text())
    stats["action"]["min"] = [-1.0]
    (root / "meta/stats.json").write_text(json.dumps(stats))
    with pytest.raises(ValueError, match=r"meta/stats.json: stats of 'action': min has 1 values, max has 4"):
        Normalizer.from_dataset(LeRobotDataset(root))
    stats["action"]["min"], stats["action"]["max"] = [-1.0] * 3, [1.0] * 3
    (root / "meta/stats.json").write_text(json.dumps(stats))
    with pytest.raises(ValueError, match=r"meta/stats.json: stats of 'action' have 3 dimensions, the feature has 4"):
        Normalizer.from_dataset(LeRobotDataset(root))
