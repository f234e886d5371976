"""benchmarks/variants_table.py: the controlled comparison's table from eval and imagination files."""

import importlib.util
import json
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "variants_table", Path(__file__).parents[1] / "benchmarks" / "variants_table.py")
variants = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(variants)


def write_eval(directory, row, seed, successes, ms=20.0, data="", machine="vm", split="test", **record):
    tasks = {}
    for task, outcomes in successes.items():
        tasks[task] = {"episode_success": outcomes, "success_rate": sum(outcomes) / len(outcomes),
                       "variations": list(range(len(outcomes))), "mean_chunk_ms": ms}
    run = {"split": split, "seed": 0, "benchmark_seed": 0, "episodes_per_task": 4, "max_steps": 200, "tasks": tasks,
           "training_data_sha256": data, "machine": machine, **record}
    (directory / f"{row}_s{seed}_{split}.json").write_text(json.dumps(run))


def test_rows_pool_seeds_and_pair_against_fastwam(tmp_path):
    ref = {"reach": [1, 1, 0, 0], "push": [1, 0, 0, 0]}  # 3/8
    better = {"reach": [1, 1, 1, 0], "push": [1, 1, 0, 0]}  # 5/8, never worse on an episode
    for seed in (0, 1):
        write_eval(tmp_path, "fastwam", seed, ref, ms=20.0)
        write_eval(tmp_path, "idm", seed, better, ms=80.0)
    (tmp_path / "imagination_idm_s0.json").write_text(json.dumps({"psnr": {"overall": 20.0}, "ssim": {"overall": 0.5}}))
    (tmp_path / "imagination_idm_s1.json").write_text(json.dumps({"psnr": {"overall": 22.0}, "ssim": {"overall": 0.7}}))
    runs, imagination = variants.load(tmp_path, "test")
    pooled = variants.row_cells(runs, imagination, "idm", (0, 1))
    assert pooled[0].startswith("62.5 % (")  # 10 of 16 episodes
    difference = pooled[1]
    assert difference.startswith("+25.0 (")  # +2 per seed-task pair of 8 episodes
    low = float(difference.split("(")[1].split(" to ")[0])
    assert 0 < low < 25  # every paired difference >= 0: the paired interval stays above 0
    assert pooled[2] == "80.0 (4.0x)" and pooled[3:] == ["21.00", "0.600"]
    assert variants.row_cells(runs, imagination, "fastwam", (0,))[1] == "reference"
    assert variants.row_cells(runs, imagination, "fastwam", (0,))[3:] == ["not run", "not run"]
    assert variants.row_cells(runs, imagination, "joint", (0, 1))[0] == "not run"
    text = variants.table(runs, imagination, "test")
    assert "| IDM | pooled | 62.5 %" in text and "| push | 25 % | — | 50 % |" in text
    (tmp_path / "idm_s1_test.json").unlink()  # a row measured with one seed so far: its tasks say which
    text = variants.table(*variants.load(tmp_path, "test"), "test")
    assert "| push | 25 % | — | 50 % (seed 0) |" in text and "| IDM | pooled | not run" in text


def test_rows_trained_on_other_data_are_named(tmp_path):
    outcomes = {"reach": [1, 0, 1, 0]}
    write_eval(tmp_path, "fastwam", 0, outcomes, data="a" * 64)
    write_eval(tmp_path, "joint", 0, outcomes, data="a" * 64)
    assert "NOTE" not in variants.table(*variants.load(tmp_path, "test"), "test")
    write_eval(tmp_path, "idm", 0, outcomes, data="b" * 64)
    write_eval(tmp_path, "lambda0", 0, outcomes)  # from before the record
    (note,) = [line for line in variants.table(*variants.load(tmp_path, "test"), "test").splitlines() if "NOTE" in line]
    assert note == ("NOTE: rows trained on different data (training_data_sha256): aaaaaaaaaaaa: fastwam_s0, joint_s0; "
                    "bbbbbbbbbbbb: idm_s0; not recorded: lambda0_s0")


def test_timings_of_different_machines_are_named_and_not_pooled(tmp_path):
    outcomes = {"reach": [1, 0, 1, 0]}
    for seed, machine, ms in ((0, "amd", 20.0), (1, "xeon", 60.0)):
        write_eval(tmp_path, "fastwam", seed, outcomes, ms=ms, machine=machine)
    write_eval(tmp_path, "joint", 0, outcomes, ms=80.0, machine="amd")
    runs, imagination = variants.load(tmp_path, "test")
    assert variants.row_cells(runs, imagination, "fastwam", (0,))[2] == "20.0"
    assert variants.row_cells(runs, imagination, "joint", (0,))[2] == "80.0 (4.0x)"  # both timed on "amd"
    write_eval(tmp_path, "idm", 0, outcomes, ms=80.0, machine="xeon")
    runs, imagination = variants.load(tmp_path, "test")
    assert variants.row_cells(runs, imagination, "idm", (0,))[2] == "80.0"  # Fast-WAM's seed 0 ran elsewhere: no ratio
    (tmp_path / "idm_s0_test.json").unlink()
    runs, imagination = variants.load(tmp_path, "test")
    assert variants.row_cells(runs, imagination, "fastwam", (0, 1))[2] == "seeds on 2 machines"
    assert variants.row_cells(runs, imagination, "fastwam", (0, 1))[0].startswith("50.0 %")  # success still pools
    (note,) = [line for line in variants.table(runs, imagination, "test").splitlines() if "NOTE" in line]
    assert note == ("NOTE: ms / chunk timed on different machines, comparable only within one (machine): "
                    "amd: fastwam_s0, joint_s0; xeon: fastwam_s1")
    write_eval(tmp_path, "joint", 1, outcomes, machine=None)  # from before the record
    runs, imagination = variants.load(tmp_path, "test")
    assert variants.row_cells(runs, imagination, "joint", (0, 1))[2] == "seeds on 2 machines"
    assert "not recorded: joint_s1" in variants.table(runs, imagination, "test")


def test_one_processor_model_on_two_boots_or_days_is_two_machines(tmp_path):
    outcomes = {"reach": [1, 0, 1, 0]}
    write_eval(tmp_path, "fastwam", 1, outcomes, ms=90.0, machine="xeon", date="2026-12-03T05:11:08")
    write_eval(tmp_path, "idm", 1, outcomes, ms=112.0, machine="xeon", date="2026-12-07T14:28:46", boot_id="b1")
    write_eval(tmp_path, "joint", 1, outcomes, ms=200.0, machine="xeon", date="2026-12-03T09:00:00")
    runs, imagination = variants.load(tmp_path, "test")
    assert variants.row_cells(runs, imagination, "idm", (1,))[2] == "112.0"  # another VM of the same processor: no ratio
    assert variants.row_cells(runs, imagination, "joint", (1,))[2] == "200.0 (2.2x)"  # a record without boot id: the day
    (note,) = [line for line in variants.table(runs, imagination, "test").splitlines() if "NOTE" in line]
    assert note.endswith("xeon, 2026-12-03: fastwam_s1, joint_s1; xeon, boot b1: idm_s1")
    write_eval(tmp_path, "fastwam", 1, outcomes, ms=56.0, machine="xeon", date="2026-12-08T00:01:00", boot_id="b1")
    runs, imagination = variants.load(tmp_path, "test")
    assert variants.row_cells(runs, imagination, "idm", (1,))[2] == "112.0 (2.0x)"  # one boot, across midnight


def test_the_plot_draws_every_paired_difference_of_both_splits(tmp_path):
    ref = {"reach": [1, 1, 0, 0]}
    for seed in (0, 1):
        write_eval(tmp_path, "fastwam", seed, ref)
        write_eval(tmp_path, "lambda0", seed, {"reach": [1, 0, 0, 0]})
    write_eval(tmp_path, "fastwam", 0, ref, split="validation")
    write_eval(tmp_path, "joint", 0, {"reach": [1, 1, 1, 0]}, split="validation")
    runs, _ = variants.load(tmp_path, "test")
    difference, low, high = variants.against_fastwam(runs, "lambda0", (0, 1))
    assert difference == -25.0 and low < difference < high
    assert variants.against_fastwam(runs, "joint", (0,)) is None  # not run: no point drawn
    path = tmp_path / "variants.png"
    drawn = variants.plot(tmp_path, path)
    assert drawn == {"test": [("lambda0", "seed 0", -25.0), ("lambda0", "seed 1", -25.0), ("lambda0", "pooled", -25.0)],
                     "validation": [("joint", "seed 0", 25.0)]}  # seed 1 and pooled: no validation files
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert variants.main(["--dir", str(tmp_path), "--plot", str(path)]) == 0
