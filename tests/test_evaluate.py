"""Closed-loop evaluation: the JSON schema, the videos, unseen variations, the interval, the plumbing.

The checkpoint is an untrained tiny model written straight into a run directory (no dataset,
no training): it will not succeed, so these tests check the record, not the success rate.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import av
import numpy as np
import pytest
from safetensors.torch import save_file

import fastwam
from fastwam.cli import main as cli_main
from fastwam.config import preset
from fastwam.data.normalize import Normalizer
from fastwam.envs import metaworld as mw
from fastwam.envs.metaworld import VALIDATION_SEED_OFFSET, episode_variations, variations_disjoint
from fastwam.evaluate import EvalPlan, episode_seed, make_plan, wilson_interval
from fastwam.train import write_run_files

TRAINING_VARIATIONS = [0, 1, 2, 3, 5, 8]  # what the (pretend) demonstrations of reach used


MW_STATS = {"observation.state": {"min": [-0.5, 0.3, 0.0, 0.0], "max": [0.5, 0.9, 0.3, 1.0]},
            "action": {"min": [-1.0] * 4, "max": [1.0] * 4}}


DATA_SHA256 = hashlib.sha256(b"the demonstrations").hexdigest()  # what data.json records of the dataset


def write_checkpoint(directory, cfg, collection, stats=MW_STATS, tasks=("reach the goal position",)):
    """A run directory with one checkpoint of an untrained model, as fastwam.train lays it out."""
    ckpt = directory / "checkpoints" / "step-0000001"
    ckpt.mkdir(parents=True)
    model = cfg.model.build()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, ckpt / "model.safetensors")
    info = {"dataset": "/nonexistent/dataset", "dataset_sha256": DATA_SHA256, "tasks": list(tasks),
            "collection": collection}
    for d in (directory, ckpt):
        write_run_files(d, cfg, Normalizer(stats), info)
    return directory


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    collection = {"suite": "metaworld", "benchmark_seed": 0, "variations": {"reach-v3": TRAINING_VARIATIONS},
                  "spec": {"tasks": ["reach-v3"], "image_size": 16, "cameras": ["corner3"], "shadows": False}}
    return write_checkpoint(tmp_path_factory.mktemp("eval") / "run", preset("tiny"), collection)


@pytest.fixture(scope="module")
def evaluated(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_out")
    code = cli_main(["eval", "metaworld", "--checkpoint", str(run_dir), "--episodes", "2", "--tasks", "reach",
                     "--max-steps", "10", "--json", str(out / "out.json"), "--video", str(out / "out.mp4"),
                     "--workers", "1", "--threads", "1", "--quiet"])
    assert code == 0
    return json.loads((out / "out.json").read_text()), out


def test_json_schema_and_ranges(evaluated, run_dir):
    result, _ = evaluated
    assert result["checkpoint"].endswith("step-0000001") and result["episodes_per_task"] == 2
    weights = run_dir / "checkpoints" / "step-0000001" / "model.safetensors"
    assert result["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert result["code"] == fastwam.code_version() and result["training_data_sha256"] == DATA_SHA256
    assert fastwam.cpu_name() in result["machine"] and result["boot_id"] == fastwam.boot_id()
    assert list(result["tasks"]) == ["reach-v3"]
    task = result["tasks"]["reach-v3"]
    assert task["episodes"] == 2 and 0 <= task["success_rate"] <= 1
    lo, hi = task["ci95"]
    assert 0 <= lo <= task["success_rate"] <= hi <= 1
    assert task["mean_chunk_ms"] > 0
    assert all(1 <= s <= 10 for s in task["episode_steps"])  # the episode bound holds
    assert 0 <= result["mean_success_rate"] <= 1
    assert result["mean_success_rate"] == pytest.approx(task["success_rate"])
    assert result["max_steps"] == 10 and result["execute"] == 2  # tiny chunk 4 -> half executed
    assert result["noise_scale"] == 1.0
    json.dumps(result)  # plain JSON types throughout


def test_variations_are_unseen_and_seeds_distinct(evaluated):
    task = evaluated[0]["tasks"]["reach-v3"]
    assert task["variations"] == [4, 6]  # the first unused ones, in order
    assert not set(task["variations"]) & set(TRAINING_VARIATIONS)
    assert task["training_variations"] == TRAINING_VARIATIONS and evaluated[0]["variations_disjoint"]
    assert episode_seed(0, "reach-v3", 0) != episode_seed(0, "reach-v3", 1) != episode_seed(0, "push-v3", 1)
    assert evaluated[0]["split"] == "test" and evaluated[0]["benchmark_seed"] == 0


def test_validation_split_runs_on_fresh_layouts(run_dir, tmp_path, monkeypatch):
    plan = make_plan(run_dir, episodes=3, split="validation")
    assert plan.split == "validation" and plan.benchmark_seed == VALIDATION_SEED_OFFSET
    assert plan.training_benchmark_seed == 0 and plan.variations == {"reach-v3": (0, 1, 2)}
    # the layouts differ from the demonstrations' although the variation indices overlap
    train, fresh = mw.layouts("reach-v3", 0)[TRAINING_VARIATIONS], mw.layouts("reach-v3", VALIDATION_SEED_OFFSET)[:3]
    assert train.shape[1] == fresh.shape[1] and not any(np.allclose(a, b) for a in fresh for b in train)
    assert variations_disjoint(plan, "reach-v3")
    # under the training seed the same indices are layouts the demonstrations used
    assert not variations_disjoint(dataclasses.replace(plan, benchmark_seed=0), "reach-v3")

    out = tmp_path / "val.json"
    assert cli_main(["eval", "metaworld", "--checkpoint", str(run_dir), "--episodes", "1", "--max-steps", "4",
                     "--split", "validation", "--json", str(out), "--threads", "1", "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["split"] == "validation" and result["benchmark_seed"] == VALIDATION_SEED_OFFSET
    assert result["training_benchmark_seed"] == 0 and result["variations_disjoint"]
    assert result["tasks"]["reach-v3"]["variations"] == [0]

    # a layout repeated across seeds is refused, naming the task
    monkeypatch.setattr(mw, "layouts", lambda task, seed: np.zeros((mw.NUM_VARIATIONS, 6)))
    with pytest.raises(ValueError, match=r"repeats a layout the demonstrations of \['reach-v3'\] used"):
        make_plan(run_dir, episodes=3, split="validation")
    with pytest.raises(ValueError, match="--split: expected one of test, validation, got 'val'"):
        make_plan(run_dir, episodes=3, split="val")


def _video_frames(path):
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_videos_open_and_have_frames(evaluated):
    result, out = evaluated
    assert result["videos"] == [str(out / "out.mp4"), str(out / "out_imagined.mp4")]  # tiny trains with video
    rollout = _video_frames(out / "out.mp4")
    # 2 episodes x (up to 10 steps / 2 per chunk + the final frame) + a 1 s hold (40 frames at 80/2 fps) each
    assert 2 * (1 + 40) < len(rollout) <= 2 * (6 + 40)
    assert rollout[0].shape[0] >= 256 and rollout[0].std() > 5
    imagined = _video_frames(out / "out_imagined.mp4")
    assert len(imagined) == 2 * 5  # one panel per replan (steps 0, 2, 4, 6, 8) of each episode
    assert imagined[0].shape[1] > imagined[0].shape[0]  # now + 2 future frames side by side, 2 rows


@pytest.mark.slow
def test_worker_processes(run_dir, tmp_path, capfd):
    """Two spawned workers, one env and one policy each; results come back in (task, episode) order,
    and the workers close their envs on exit (no teardown traceback)."""
    code = cli_main(["eval", "metaworld", "--checkpoint", str(run_dir), "--episodes", "2", "--tasks", "reach,push",
                     "--max-steps", "3", "--json", str(tmp_path / "w.json"), "--workers", "2", "--quiet"])
    assert code == 0
    result = json.loads((tmp_path / "w.json").read_text())
    assert result["workers"] == 2 and list(result["tasks"]) == ["reach-v3", "push-v3"]
    assert result["tasks"]["reach-v3"]["variations"] == [4, 6] and result["tasks"]["push-v3"]["variations"] == [0, 1]
    assert all(t["episode_steps"] == [3, 3] for t in result["tasks"].values())
    assert "Exception ignored" not in capfd.readouterr().err


def test_episode_variations_cycle_through_the_unused():
    assert episode_variations([0, 1, 2], 3, total=6) == (3, 4, 5)
    assert episode_variations([0, 2], 7, total=5) == (1, 3, 4, 1, 3, 4, 1)
    assert episode_variations([], 2) == (0, 1)
    with pytest.raises(ValueError, match="none is left"):
        episode_variations(range(5), 1, total=5)


def test_wilson_interval():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 50)
    assert lo == 0 and hi == pytest.approx(0.0714, abs=1e-4)  # not the degenerate [0, 0] of the Wald interval
    lo, hi = wilson_interval(50, 50)
    assert hi == 1 and lo == pytest.approx(0.9286, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_plan_defaults_to_training_tasks_and_records_rendering(run_dir):
    plan = make_plan(run_dir, episodes=3)
    assert isinstance(plan, EvalPlan) and plan.tasks == ("reach-v3",)
    assert plan.image_size == 16 and plan.cameras == ("corner3",) and plan.benchmark_seed == 0
    assert plan.variations == {"reach-v3": (4, 6, 7)}
    # a task the demonstrations never saw may use every variation
    assert make_plan(run_dir, episodes=2, tasks="push").variations == {"push-v3": (0, 1)}
    # recorded episodes: the first of each task, then the second ...
    plan = make_plan(run_dir, episodes=2, tasks="reach,push", video_episodes=3)
    recorded = [(e.task, e.index) for e in plan.episode_list() if e.record]
    assert recorded == [("reach-v3", 0), ("reach-v3", 1), ("push-v3", 0)]


def test_errors_name_the_problem(run_dir, tmp_path):
    with pytest.raises(SystemExit, match="no-such-run"):
        cli_main(["eval", "metaworld", "--checkpoint", str(tmp_path / "no-such-run"), "--episodes", "1"])
    with pytest.raises(SystemExit, match="unknown MetaWorld task 'fly-v3'"):
        cli_main(["eval", "metaworld", "--checkpoint", str(run_dir), "--episodes", "1", "--tasks", "reach,fly-v3"])
    with pytest.raises(SystemExit, match="--execute"):
        cli_main(["eval", "metaworld", "--checkpoint", str(run_dir), "--episodes", "1", "--execute", "9"])
    with pytest.raises(SystemExit, match="--noise-scale: expected a finite number >= 0, got -0.5"):
        cli_main(["eval", "metaworld", "--checkpoint", str(run_dir), "--episodes", "1", "--noise-scale", "-0.5"])
    bare = write_checkpoint(tmp_path / "bare", preset("tiny"), collection={})
    with pytest.raises(SystemExit, match="--allow-any-variation"):
        cli_main(["eval", "metaworld", "--checkpoint", str(bare), "--episodes", "1"])
    plan = make_plan(bare, episodes=2, allow_any_variation=True)  # tasks from the recorded instructions
    assert plan.tasks == ("reach-v3",) and plan.variations == {"reach-v3": (0, 1)}


def test_recording_a_video_does_not_change_the_actions(run_dir):
    """Imagining draws its own noise and extra renders are side effects only: same episode, same trajectory."""
    import torch

    from fastwam.envs.metaworld import MetaWorldEnv
    from fastwam.evaluate import Episode, run_episode
    from fastwam.policy import Policy

    plan = make_plan(run_dir, episodes=1, max_steps=6, execute=4, video_episodes=1)  # replans at steps 0 and 4
    assert plan.imagine
    policy = Policy.from_checkpoint(plan.checkpoint)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with MetaWorldEnv("reach", 0, plan.image_size, plan.cameras, max_steps=plan.max_steps) as env:
            finals, results = [], []
            for record in (False, True, False):
                results.append(run_episode(plan, policy, env, Episode("reach-v3", 0, 4, seed=7, record=record)))
                finals.append(env.proprio())
                assert bool(results[-1].frames) == record and results[-1].steps == 6 and len(results[-1].chunk_ms) == 2
            every = run_episode(dataclasses.replace(plan, every_step=True), policy, env,
                                Episode("reach-v3", 0, 4, seed=7, record=True))
            finals.append(env.proprio())
            scored = run_episode(dataclasses.replace(plan, score_imagination=True), policy, env,
                                 Episode("reach-v3", 0, 4, seed=7, record=False))
            finals.append(env.proprio())
    finally:
        torch.set_num_threads(threads)
    assert all(np.array_equal(finals[0], f) for f in finals[1:])
    assert sorted(every.frames) == list(range(7))  # --video-every-step: every step's frame
    recorded = results[1]
    assert sorted(recorded.imagined) == [0, 4]
    assert sorted(recorded.frames) == [0, 2, 4, 6]  # observed at 0 and 4; 2 and 6 rendered for the imagined times
    # scoring imagination: every imagined frame whose real one exists (8 is past the end), no frames shipped
    assert [p[:2] for p in scored.imagination] == [[0, 1], [0, 2], [4, 1]] and not scored.frames


def test_imagined_panels_pair_each_imagined_frame_with_the_real_one_at_its_time():
    from fastwam.evaluate import EpisodeResult, imagined_frames

    def frame(value):
        return np.full((4, 4, 3), value, np.uint8)

    result = EpisodeResult("reach-v3", 0, 4, 0, False, 7, [1.0], 1.0,
                           frames={s: frame(10 * s) for s in (0, 2, 4, 6, 7)},
                           imagined={0: np.stack([frame(200), frame(201)]), 4: np.stack([frame(202), frame(203)])})
    first, second = imagined_frames(result, frame_stride=2, height=4)
    assert first.shape == (16 + 4 + 2 + 4, 3 * 4, 3)  # caption, imagined row, separator, real row
    top, bottom = first[16:20], first[22:26]
    assert [top[0, 4 * c, 0] for c in range(3)] == [0, 200, 201]  # now, imagined +2, imagined +4
    assert [bottom[0, 4 * c, 0] for c in range(3)] == [0, 20, 40]  # now, real step 2, real step 4
    bottom = second[22:26]
    assert [bottom[0, 4 * c, 0] for c in range(3)] == [40, 60, 90]  # step 8 is past the end: gray


def test_a_caption_too_long_for_its_frame_keeps_step_and_outcome_and_cuts_the_task_name():
    from PIL import Image, ImageDraw

    from fastwam.evaluate import RED, EpisodeResult, _caption, fit_caption, rollout_frames

    length = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    assert fit_caption("step 8  success at 90", 256) == "step 8  success at 90"
    task = "pick_up_the_black_bowl_between_the_plate_and_the_ramekin_and_place_it_on_the_plate"
    text = f"step 48  failure at 220  layout init:0  {task}"
    fitted = fit_caption(text, 256)
    assert length(text) > 248 >= length(fitted) and fitted.endswith("...")
    assert fitted.startswith("step 48  failure at 220  layout init:0  pick_up")  # only the task name is cut
    frame = np.zeros((256, 256, 3), np.uint8)
    result = EpisodeResult(task, 0, "init:0", 0, False, 220, [1.0], 1.0, frames={48: frame})
    (drawn,) = rollout_frames(result, height=256)
    assert np.array_equal(drawn, _caption(frame, text, RED))  # the rollout video draws that text


def test_cpu_name_is_the_model_name_else_the_architecture(monkeypatch):
    import pathlib
    import platform

    cpuinfo = "processor\t: 0\nvendor_id\t: Test\nmodel name\t: Test CPU 9000 @ 2.0GHz\n\nprocessor\t: 1\n"
    monkeypatch.setattr(pathlib.Path, "read_text", lambda self, *a, **k: cpuinfo)
    assert fastwam.cpu_name() == "Test CPU 9000 @ 2.0GHz"

    def unreadable(self, *a, **k):
        raise OSError("no /proc here")
    monkeypatch.setattr(pathlib.Path, "read_text", unreadable)
    assert fastwam.cpu_name() == (platform.processor() or platform.machine())


def test_code_version_names_the_commit_in_a_checkout_and_the_version_without_git(monkeypatch):
    import subprocess

    here = Path(fastwam.__file__).parent
    head = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert re.fullmatch(rf"{re.escape(fastwam.__version__)}\+{head.stdout.strip()}(\+dirty)?", fastwam.code_version())
    monkeypatch.setenv("PATH", "/nonexistent")  # no git to ask
    assert fastwam.code_version() == fastwam.__version__


def test_code_version_of_a_copy_another_checkout_ignores_is_the_version_alone(tmp_path):
    """An installed copy inside some project's git checkout (a venv there) does not take its commit."""
    import importlib.util
    import shutil
    import subprocess

    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / ".gitignore").write_text(".venv/\n")
    subprocess.run([*git, "add", ".gitignore"], check=True)
    subprocess.run([*git, "commit", "-qm", "project"], check=True)
    copy = tmp_path / ".venv" / "fastwam" / "__init__.py"
    copy.parent.mkdir(parents=True)
    shutil.copy(fastwam.__file__, copy)
    spec = importlib.util.spec_from_file_location("fastwam_copy", copy)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.code_version() == fastwam.__version__
