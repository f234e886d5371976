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
