"""Imagination quality: PSNR/SSIM of imagined against real frames, the record, and `eval imagination`."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported

import json

import numpy as np
import pytest
from test_evaluate import run_dir, write_checkpoint  # noqa: F401  (the untrained tiny MetaWorld checkpoint)

from fastwam import imagination
from fastwam.cli import main as cli_main
from fastwam.config import preset


def test_scores_follow_their_definitions():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    noisy = np.clip(real.astype(int) + rng.integers(-20, 21, real.shape), 0, 255).astype(np.uint8)
    psnr, ssim = imagination.score_pair(noisy, real)
    mse = np.mean((noisy.astype(float) - real) ** 2)
    assert psnr == pytest.approx(10 * np.log10(255 ** 2 / mse)) and 0 < ssim < 1
    assert imagination.score_pair(real, real) == (imagination.PSNR_CAP, 1.0)
    worse = np.clip(real.astype(int) + rng.integers(-80, 81, real.shape), 0, 255).astype(np.uint8)
    assert imagination.score_pair(worse, real)[0] < psnr and imagination.score_pair(worse, real)[1] < ssim
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\) of one shape, H and W >= 11 \(SSIM's window\), got uint8 \(16, 24, 3\) and float32"):
        imagination.score_pair(real, real.astype(np.float32))


def test_an_episode_scores_each_imagined_frame_against_the_real_one_at_its_time():
    def frame(value):
        return np.full((12, 12, 3), value, np.uint8)  # SSIM's 11x11 window fits

    frames = {s: frame(10 * s) for s in (0, 2, 4, 6)}
    imagined = {0: np.stack([frame(20), frame(41)]), 4: np.stack([frame(60), frame(80)])}  # step 8 never happened
    pairs = imagination.score_episode(imagined, frames, stride=2)
    assert [p[:2] for p in pairs] == [[0, 1], [0, 2], [4, 1]]
    assert pairs[0][2:] == [imagination.PSNR_CAP, 1.0] and pairs[2][2:] == [imagination.PSNR_CAP, 1.0]
    assert pairs[1][2] == pytest.approx(10 * np.log10(255 ** 2 / 1.0))  # off by one everywhere


def _episode(task, index, success, psnrs):
    return {"task": task, "index": index, "success": success,
            "pairs": [[8 * i, 1 + i % 2, p, p / 100] for i, p in enumerate(psnrs)]}


def test_the_record_averages_episodes_per_task_and_horizon_and_correlates_with_success():
    episodes = [_episode("a", 0, True, [30, 20, 50, 20]), _episode("a", 1, True, [40, 30]),  # a: 32.5, 2/2
                _episode("b", 0, True, [20, 20]), _episode("b", 1, False, [20, 20]),  # b: mean 20, 1/2
                _episode("c", 0, False, [10, 10]), _episode("c", 1, False, []),  # c: mean 10, 0/2; one unscored
                _episode("d", 0, False, [15, 5]), _episode("d", 1, False, [5, 15])]  # d: mean 10, 0/2
    record = imagination.summarize(episodes, stride=8)
    assert record["horizons"] == [8, 16] and record["pairs"] == 16 and record["episodes_unscored"] == 1
    psnr = record["psnr"]
    assert psnr["tasks"]["a"]["mean"] == 32.5 and psnr["tasks"]["c"]["mean"] == 10  # episodes weigh the same
    assert psnr["tasks"]["a"]["by_horizon"] == {"8": 40, "16": 25}  # (30 + 50) / 2 and 40; 20 and 30
    assert psnr["by_horizon"]["8"] == pytest.approx(np.mean([40, 40, 20, 20, 10, 15, 5]))  # not pooled over pairs
    assert psnr["overall"] == pytest.approx(np.mean([30, 35, 20, 20, 10, 10, 10]))
    lo, hi = psnr["ci95"]
    assert lo < psnr["overall"] < hi
    assert record["ssim"]["tasks"]["b"]["mean"] == pytest.approx(0.2)
    across_tasks = record["correlation"]["across_tasks"]["psnr"]
    assert across_tasks["n"] == 4 and across_tasks["spearman"] == pytest.approx(1.0)  # the same order, ties alike
    across_episodes = record["correlation"]["across_episodes"]["psnr"]
    assert across_episodes["n"] == 7 and across_episodes["spearman"] > 0.5 and 0 <= across_episodes["p"] <= 1
    constant = imagination.summarize([_episode("a", 0, True, [20]), _episode("a", 1, False, [20]),
                                      _episode("b", 0, True, [20]), _episode("c", 0, True, [20])], stride=8)
    assert constant["correlation"]["across_episodes"]["psnr"] == {"spearman": None, "p": None, "n": 4}


def test_eval_imagination_writes_the_record_beside_an_unchanged_evaluation(run_dir, tmp_path):  # noqa: F811
    common = ["--checkpoint", str(run_dir), "--episodes", "2", "--tasks", "reach", "--max-steps", "10",
              "--threads", "1", "--quiet"]
    assert cli_main(["eval", "metaworld", *common, "--json", str(tmp_path / "eval.json"),
                     "--imagination", str(tmp_path / "imagination.json")]) == 0
    assert cli_main(["eval", "imagination", *common, "--json", str(tmp_path / "alias.json")]) == 0
    # (that scoring leaves the trajectories alone: test_evaluate.test_recording_a_video_does_not_change_the_actions)
    assert json.loads((tmp_path / "eval.json").read_text())["benchmark"] == "metaworld"  # the eval record, beside
    record = json.loads((tmp_path / "imagination.json").read_text())
    alias = json.loads((tmp_path / "alias.json").read_text())
    assert record["benchmark"] == alias["benchmark"] == "metaworld" and record["mode"] == "action_only"
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert record["weights_sha256"] == evaluation["weights_sha256"] and record["code"] == evaluation["code"]
    assert record["horizons"] == [2, 4] and record["pairs"] > 0 and len(record["episodes"]) == 2
    for metric in ("psnr", "ssim"):
        assert set(record[metric]["tasks"]) == {"reach-v3"} and record[metric]["overall"] > 0
        assert record[metric] == alias[metric]  # same seeds, same episodes, same imagined frames
    assert record["correlation"]["across_tasks"]["psnr"]["n"] == 1  # one task: no correlation to report


def test_imagination_is_refused_where_there_is_none(run_dir, tmp_path):  # noqa: F811
    cfg = preset("tiny").with_variant("fastwam", video_weight=0.0)
    blind = write_checkpoint(tmp_path / "blind", cfg, json.loads((run_dir / "data.json").read_text())["collection"])
    with pytest.raises(SystemExit, match="imagination scoring: .* was trained without video"):
        cli_main(["eval", "imagination", "--checkpoint", str(blind), "--episodes", "1", "--quiet"])
    with pytest.raises(SystemExit, match=r"--imagination is for eval metaworld\|libero"):
        cli_main(["eval", "imagination", "--checkpoint", str(run_dir), "--imagination", "x.json", "--quiet"])
    with pytest.raises(SystemExit, match="--imagination same.json: expected another file than --json's"):
        cli_main(["eval", "metaworld", "--checkpoint", str(run_dir), "--json", "same.json", "--imagination",
                  "same.json", "--quiet"])
    unknown = write_checkpoint(tmp_path / "unknown", preset("tiny"), {})
    with pytest.raises(SystemExit, match="records no benchmark the demonstrations came from"):
        cli_main(["eval", "imagination", "--checkpoint", str(unknown), "--episodes", "1", "--quiet"])
    with pytest.raises(SystemExit, match=r"--mode: .* \(variant 'fastwam'\) runs action_only, got 'video_then_action'"):
        cli_main(["eval", "metaworld", "--checkpoint", str(run_dir), "--mode", "video_then_action", "--quiet"])


def test_a_dual_checkpoint_is_evaluated_in_either_mode(run_dir, tmp_path):  # noqa: F811
    from fastwam.policy import Policy

    collection = json.loads((run_dir / "data.json").read_text())["collection"]
    dual = write_checkpoint(tmp_path / "dual", preset("tiny").with_variant("dual"), collection)
    results = {}
    for mode in ("action_only", "video_then_action"):
        out = tmp_path / f"{mode}.json"
        assert cli_main(["eval", "metaworld", "--checkpoint", str(dual), "--mode", mode, "--episodes", "1",
                         "--tasks", "reach", "--max-steps", "4", "--threads", "1", "--quiet", "--json", str(out)]) == 0
        results[mode] = json.loads(out.read_text())
        assert results[mode]["variant"] == "dual" and results[mode]["mode"] == mode
    assert Policy.from_checkpoint(dual).mode == "action_only"  # the variant's default
    # with random weights (the checkpoint's are untrained: zero output heads), the modes act differently
    from test_evaluate import MW_STATS
    from test_model import randomized

    from fastwam.data.normalize import Normalizer

    cfg = preset("tiny").with_variant("dual")
    model = randomized(cfg.model)
    observation = {"image": np.full((16, 16, 3), 90, np.uint8), "state": np.zeros(4, np.float32),
                   "instruction": "reach the goal position"}
    acts = {mode: Policy(model, cfg, Normalizer(MW_STATS), seed=3, mode=mode).act(observation)
            for mode in ("action_only", "video_then_action")}
    assert np.abs(acts["action_only"] - acts["video_then_action"]).max() > 1e-3
    with pytest.raises(ValueError, match=r"mode: this checkpoint \(variant 'dual'\) runs action_only or "
                                         r"video_then_action, got 'joint'"):
        Policy.from_checkpoint(dual, mode="joint")
