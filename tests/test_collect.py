"""MetaWorld collection: a 1-task, 1-episode smoke run through the CLI, the env wrapper, task lists."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported

import json

import numpy as np
import pytest

from fastwam.cli import main as cli_main
from fastwam.data.lerobot import LeRobotDataset
from fastwam.envs import metaworld as mw
from fastwam.envs.collect import collection_info, unused_variations, used_variations


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("collect") / "reach"
    code = cli_main(["collect", "metaworld", "--tasks", "reach", "--episodes", "1", "--out", str(out),
                     "--image-size", "16", "--workers", "1", "--max-steps", "150", "--steps-after-success", "3",
                     "--quiet"])
    assert code == 0
    return out


def test_smoke_dataset_contents(collected):
    ds = LeRobotDataset(collected, require=("observation.state", "action"))
    assert ds.num_episodes == 1 and ds.tasks == ["reach the goal position"] and ds.fps == 80
    assert ds.video_keys == ["observation.images.corner3"]
    state, action = ds.column("observation.state"), ds.column("action")
    assert state.shape == (ds.num_frames, 4) and state.dtype == np.float32  # proprio: xyz + gripper only
    assert action.shape == (ds.num_frames, 4) and np.all(np.abs(action) <= 1)
    assert np.all((state[:, 3] >= 0) & (state[:, 3] <= 1))  # gripper opening
    assert np.abs(np.diff(state[:, :3], axis=0)).max() > 0  # the arm moved
    frames = ds.episode_frames(0, "corner3")
    assert frames.shape == (ds.num_frames, 16, 16, 3) and frames.std() > 10  # a real image
    assert np.abs(frames[-1].astype(int) - frames[0]).mean() > 1  # the scene changed


def test_smoke_metadata_records_variations(collected):
    info = collection_info(collected)
    assert used_variations(collected) == {"reach-v3": [0]}
    assert unused_variations(collected, "reach") == list(range(1, 50))
    (episode,) = info["episodes"]
    assert episode["length"] == episode["success_step"] + 3  # stopped 3 steps after success
    assert info["benchmark_seed"] == 0 and info["spec"]["image_size"] == 16
    assert info["spec"]["video_encoding"] == "av1"  # LeRobot's default, what browsers play
    video = json.loads((collected / "meta/info.json").read_text())["features"]["observation.images.corner3"]["info"]
    assert (video["video.codec"], video["video.pix_fmt"], video["video.crf"], video["video.g"]) == ("av1", "yuv420p", 30, 2)
    assert json.loads((collected / "meta/info.json").read_text())["total_frames"] == episode["length"]


def test_collect_refuses_existing_output(collected):
    with pytest.raises(SystemExit, match="fastwam collect: .* already exists"):
        cli_main(["collect", "metaworld", "--tasks", "reach", "--episodes", "1", "--out", str(collected), "--quiet"])


def test_env_wrapper_render_step_and_expert():
    with mw.MetaWorldEnv("drawer-open", variation=3, image_size=24, cameras=("corner2", "topview"), max_steps=5) as env:
        obs = env.reset()
        assert obs["state"].shape == (4,) and obs["state"].dtype == np.float32
        image = env.render()
        assert image.shape == (24, 48, 3) and image.dtype == np.uint8
        assert env.instruction == "open the drawer" == mw.instruction("drawer-open-v3")
        for step in range(5):
            action = env.expert_action()
            assert action.shape == (4,) and np.all(np.abs(action) <= 1)
            obs, success, done = env.step(action)
            assert isinstance(success, bool) and done == (step == 4)
        with pytest.raises(RuntimeError, match="episode is over"):
            env.step(np.zeros(4))
    with pytest.raises(ValueError, match="unknown camera"):
        mw.MetaWorldEnv("reach", cameras=("nope",))


def test_an_episode_starts_the_same_whatever_ran_before():
    """A reused env (evaluation workers run many episodes each) resets to what a fresh one shows:
    MetaWorld left the goal marker where the previous episode put it in the first frame."""
    def start(env):
        env.reset(7)
        return env.render(), env._env.data.site_xpos.copy(), env.proprio()

    with mw.MetaWorldEnv("push", image_size=64, seed=1000) as env:
        fresh = start(env)
        env.reset(3)
        for _ in range(150):
            env.step(env.expert_action())
        reused = start(env)
    for a, b in zip(fresh, reused):
        np.testing.assert_array_equal(a, b)


def test_task_lists_follow_the_dp3_split():
    import metaworld

    sets = {name: mw.expand_tasks(name) for name in ("easy", "medium", "hard", "very-hard")}
    assert [len(v) for v in sets.values()] == [28, 11, 6, 5]
    every = [t for v in sets.values() for t in v]
    assert sorted(every) == sorted(metaworld.ALL_V3_ENVIRONMENTS) == mw.ALL_TASKS  # a partition of all 50
    assert mw.expand_tasks("mt10") == list(metaworld.env_dict.MT10_V3)
    assert mw.expand_tasks("push, reach-v3,push-v3") == ["push-v3", "reach-v3"]
    assert mw.expand_tasks("very_hard") == sets["very-hard"]
    with pytest.raises(ValueError, match="unknown MetaWorld task"):
        mw.expand_tasks("fly-v3")
    assert len(set(mw.INSTRUCTIONS.values())) == 50 and mw.num_variations("push") == 50


def test_collect_refuses_an_odd_size_for_yuv420p_before_any_work(tmp_path):
    with pytest.raises(SystemExit, match=r"--image-size 63: the av1 encoding \(yuv420p\) needs an even size"):
        cli_main(["collect", "metaworld", "--tasks", "reach", "--episodes", "1", "--image-size", "63",
                  "--out", str(tmp_path / "odd"), "--quiet"])
    assert not (tmp_path / "odd").exists()


def test_demo_store_round_trips_and_refuses_what_it_cannot_trust(tmp_path):
    from fastwam.envs.collect import Demo, DemoStore

    recipe = {"image_size": 32, "action_noise": 0.0}
    store = DemoStore(tmp_path / "out", recipe)
    assert store.root == tmp_path / "out.recorded" and store.recorded_before == set()
    demo = Demo("push", 3, 2, {"observation.images.image": np.arange(48, dtype=np.uint8).reshape(1, 4, 4, 3)},
                np.ones((1, 8), np.float32), np.zeros((1, 7), np.float32))
    store.save("push", 3, demo)
    store.save("push", 4, None)  # a failed layout
    again = DemoStore(tmp_path / "out", recipe)
    assert again.recorded_before == {("push", 3), ("push", 4)} and again.load("push", 4) is None
    loaded = again.load("push", 3)
    assert loaded.success_step == 2 and loaded.frames.keys() == demo.frames.keys()
    np.testing.assert_array_equal(loaded.frames["observation.images.image"], demo.frames["observation.images.image"])
    np.testing.assert_array_equal(loaded.state, demo.state)
    with pytest.raises(ValueError, match=r"recorded with --image-size 32, this collection asks --image-size 64"):
        DemoStore(tmp_path / "out", {**recipe, "image_size": 64})
    with pytest.raises(ValueError, match=r"recorded with no --init-noise \(code .*\), this collection asks --init-noise"):
        DemoStore(tmp_path / "out", {**recipe, "init_noise": 0.02})  # an option the store's code did not have
    (store.root / "push" / "3.npz").write_bytes(b"cut short")
    with pytest.raises(ValueError, match=r"push/3.npz: unreadable .*remove it"):
        again.load("push", 3)
    (store.root / "push" / "notes.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"notes.npz: not a recorded layout"):
        DemoStore(tmp_path / "out", recipe)

    empty = DemoStore(tmp_path / "other", recipe)  # stopped before its first layout: another recipe may start it
    assert DemoStore(tmp_path / "other", {**recipe, "image_size": 64}).recorded_before == set()
    assert json.loads((empty.root / "recipe.json").read_text())["image_size"] == 64


def test_a_collection_that_fails_while_writing_keeps_what_it_recorded_and_resumes(tmp_path, monkeypatch, capsys):
    """A failed video encode (once seen at random with AV1) stops the collection; what the workers
    recorded stays in <out>.recorded/, and the same command finishes from it without recording again."""
    from fastwam.data.lerobot import LeRobotWriter
    from fastwam.envs import collect

    out = tmp_path / "reach"
    argv = ["collect", "metaworld", "--tasks", "reach,push", "--episodes", "1", "--out", str(out), "--image-size", "16",
            "--workers", "1", "--max-steps", "150", "--steps-after-success", "3", "--quiet"]
    add_episode = LeRobotWriter.add_episode

    def failing(self, task, columns, videos):
        if self.episodes:  # the second episode's encode fails
            raise OSError(22, "Invalid argument", str(self.tmp / "videos/file-000.mp4"))
        return add_episode(self, task, columns, videos)

    monkeypatch.setattr(LeRobotWriter, "add_episode", failing)
    with pytest.raises(SystemExit, match="Invalid argument"):
        cli_main(argv)
    assert "collection stopped: 2 recorded layouts are kept in" in capsys.readouterr().err
    assert not out.exists() and len(list((tmp_path / "reach.recorded").glob("*/*.npz"))) == 2
    monkeypatch.setattr(LeRobotWriter, "add_episode", add_episode)
    monkeypatch.setattr(collect, "record_demo", lambda *a, **k: pytest.fail("a stored layout was recorded again"))
    assert cli_main(argv) == 0
    assert "resuming: 2 layouts already recorded" in capsys.readouterr().out
    assert LeRobotDataset(out).num_episodes == 2 and not (tmp_path / "reach.recorded").exists()


def test_collect_refuses_repeated_cameras_and_more_episodes_than_layouts(tmp_path):
    base = ["collect", "metaworld", "--out", str(tmp_path / "x"), "--image-size", "16", "--quiet"]
    for extra, message in [(["--tasks", "reach", "--cameras", "corner3,corner3"], "--cameras: corner3 given more than once"),
                           (["--tasks", "reach", "--episodes", "51"], "--episodes 51: reach-v3 has 50 variations")]:
        with pytest.raises(SystemExit, match=message):
            cli_main(base + extra)
