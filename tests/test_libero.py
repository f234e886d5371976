"""LIBERO: the adapter's conventions, the scripted expert, collection, and evaluation plumbing.

Needs the ``libero`` extra (``make test`` installs it). Simulator runs are kept short: one
unrendered expert episode, one rendered demonstration at 32 px, evaluations of a few steps.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from fastwam.cli import main as cli_main
from fastwam.config import preset
from fastwam.data.lerobot import LeRobotDataset
from fastwam.envs import libero as lb
from fastwam.envs.collect import collection_info
from fastwam.evaluate import make_plan
from test_evaluate import write_checkpoint

SUITE = "libero_object"
TASK = "pick_up_the_alphabet_soup_and_place_it_in_the_basket"  # task 0 of libero_object


def test_quaternion_to_axis_angle_matches_robosuite_and_scipy():
    from robosuite.utils.transform_utils import quat2axisangle  # what the public LIBERO data used
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    quats = rng.normal(size=(200, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    quats[quats[:, 3] < 0] *= -1  # w >= 0: the rotation angle lies in [0, pi], where scipy's rotvec lies too
    ours = lb.quat_to_axis_angle(quats)
    assert np.allclose(ours, np.stack([quat2axisangle(q) for q in quats]), atol=1e-6)
    assert np.allclose(ours, Rotation.from_quat(quats).as_rotvec(), atol=1e-6)  # scipy: (x, y, z, w) too
    assert np.array_equal(lb.quat_to_axis_angle([0, 0, 0, 1]), np.zeros(3))  # identity
    half_turn = lb.quat_to_axis_angle([1, 0, 0, 0])  # pi about x
    assert np.allclose(half_turn, [np.pi, 0, 0])
    with pytest.raises(ValueError, match=r"expected shape \(..., 4\)"):
        lb.quat_to_axis_angle([1, 0, 0])


def test_layout_text_round_trips_and_bad_ones_are_refused():
    assert lb.Layout.parse("fresh:12") == lb.Layout("fresh", 12) and str(lb.Layout("init", 3)) == "init:3"
    for bad in ("init", "init:-1", "other:3", "fresh:x"):
        with pytest.raises(ValueError, match="layout"):
            lb.Layout.parse(bad)


def test_suites_tasks_and_bad_names():
    assert lb.SUITES == ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
    assert len(lb.task_names("libero_90")) == 90 and lb.MAX_STEPS["libero_90"] == 400
    assert lb.canonical_task(SUITE, "0") == TASK == lb.canonical_task(SUITE, TASK)
    assert len(lb.task_names(SUITE)) == 10 and lb.init_states(SUITE, TASK).shape == (50, 110)
    assert lb.MAX_STEPS[SUITE] == 280 and lb.instruction(SUITE, TASK) == TASK.replace("_", " ")
    with pytest.raises(ValueError, match="unknown LIBERO suite 'libero_nope'"):
        lb.task_names("libero_nope")
    with pytest.raises(ValueError, match="unknown libero_object task 'open_the_door'"):
        lb.canonical_task(SUITE, "open_the_door")
    with pytest.raises(ValueError, match="LIBERO cameras"):
        lb.LiberoEnv(SUITE, 0, cameras=("agentview",))


@pytest.fixture(scope="module")
def env():
    with lb.LiberoEnv(SUITE, TASK, image_size=32) as e:
        yield e


def test_images_are_robosuites_camera_observations_rotated_180_degrees(env):
    from libero.libero.envs import OffScreenRenderEnv

    env.reset("init:0")
    views = env.render_views()
    reference = OffScreenRenderEnv(bddl_file_name=lb.bddl_file(SUITE, TASK), camera_heights=32, camera_widths=32)
    try:
        reference.reset()
        obs = reference.set_init_state(lb.init_states(SUITE, TASK)[0])
        for _ in range(lb.WAIT_STEPS):
            obs, _, _, _ = reference.step(lb.NOOP)
        for view, key in zip(views, ("agentview_image", "robot0_eye_in_hand_image")):
            raw = obs[key].astype(int)
            assert view.shape == (32, 32, 3) and view.dtype == np.uint8
            assert np.abs(view - raw[::-1, ::-1]).mean() < 1.0  # the same picture, rotated
            assert np.abs(view - raw).mean() > 10  # and not the unrotated one
        state = np.concatenate([obs["robot0_eef_pos"], lb.quat_to_axis_angle(obs["robot0_eef_quat"]),
                                obs["robot0_gripper_qpos"]])
        assert np.allclose(env.proprio(), state, atol=1e-5)
    finally:
        reference.close()
    assert env.render().shape == (32, 64, 3)  # cameras side by side


def test_antialias_off_renders_the_same_scene_without_multisampling(env):
    env.reset("init:0")
    smooth = env.render_views()
    with lb.LiberoEnv(SUITE, TASK, image_size=32, antialias=False) as fast:
        fast.reset("init:0")
        jagged = fast.render_views()
        assert fast.sim._render_context_offscreen.con.offSamples == 0
        fast.reset("fresh:0")  # the setting survives a reset
        fast.render_views()
        assert fast.sim._render_context_offscreen.con.offSamples == 0
    assert env.sim._render_context_offscreen.con.offSamples == lb.MULTISAMPLES
    again = env.render_views()  # after another env's GL context came and went: this env's own is current
    assert all(np.array_equal(a, b) for a, b in zip(smooth, again))
    for a, b in zip(smooth, jagged):
        difference = np.abs(a.astype(int) - b)
        assert 0.1 < difference.mean() < 10  # edges differ, the picture is the same
        assert np.median(difference) == 0


def test_reset_waits_then_steps_count_to_the_limit(env):
    obs = env.reset(lb.Layout("init", 1))
    assert obs["state"].shape == (8,) and obs["state"].dtype == np.float32 and env.steps == 0
    assert np.array_equal(env.start_state, env.init_states[1])
    # the wait steps ran: objects settled from their init pose, the episode clock still at 0
    assert not np.allclose(env.sim_state(), env.start_state)
    assert env.max_steps == lb.MAX_STEPS[SUITE]
    env.max_steps = 2
    try:
        _, success, done = env.step(np.zeros(7))
        assert env.steps == 1 and not success and not done
        with pytest.raises(ValueError, match="7 finite numbers"):
            env.step(np.array([0, 0, 0, 0, 0, np.nan, 0]))
        _, _, done = env.step(np.zeros(7))
        assert done and env.steps == 2
        with pytest.raises(RuntimeError, match=r"episode is over \(2 steps\)"):
            env.step(np.zeros(7))
    finally:
        env.max_steps = lb.MAX_STEPS[SUITE]
    with pytest.raises(ValueError, match="init state 50 does not exist"):
        env.reset("init:50")


def test_an_episode_starts_the_same_whatever_ran_before(env):
    """Evaluation workers reuse their env: an episode after another (which ended with the gripper
    closing) is the same, step for step, as in a fresh env."""
    def run(e):
        e.reset("init:3")
        first = e.render(), e.sim_state()
        rng = np.random.default_rng(1)
        for _ in range(20):
            e.step(np.r_[rng.uniform(-0.5, 0.5, 6), -1.0])
        return (*first, e.sim_state())

    with lb.LiberoEnv(SUITE, TASK, image_size=32) as fresh:
        expected = run(fresh)
    env.reset("init:5")
    for _ in range(30):
        env.step(np.r_[np.zeros(6), 1.0])  # close the gripper
    for want, got in zip(expected, run(env)):
        np.testing.assert_array_equal(got, want)


def test_fresh_layouts_are_reproducible_and_never_an_evaluation_init_state(env):
    from fastwam.envs.libero_collect import check_fresh

    official = lb.init_states(SUITE, TASK)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    states = [env.layout_state(lb.Layout("fresh", s)) for s in (0, 1, 0)]
    assert np.array_equal(np.random.get_state()[1], before)  # the caller's numpy stream is left alone
    assert np.array_equal(states[0], states[2]) and not np.array_equal(states[0], states[1])
    for seed, state in enumerate(states[:2]):
        assert np.abs(official - state).max(axis=1).min() > 1e-3  # another sample, not an init state
        env.reset(lb.Layout("fresh", seed))
        check_fresh(env)
    env.reset(lb.Layout("init", 7))  # an episode that started from an init state is refused
    with pytest.raises(RuntimeError, match="init:7: the fresh layout equals an official evaluation init state"):
        check_fresh(env)


def test_init_noise_spreads_the_arm_of_fresh_layouts_as_the_official_init_states(env):
    """The official init states' 7 arm joints spread by ~0.02 rad (robosuite's default noise); a fresh
    reset without noise starts every episode in one pose, with it they spread alike."""
    joints = slice(1, 8)  # the flattened state: time, then the arm's qpos
    official = lb.init_states(SUITE, TASK)[:, joints]
    assert 0.01 < official.std(axis=0).mean() < 0.03
    plain = np.stack([env.layout_state(lb.Layout("fresh", s))[joints] for s in range(8)])
    assert plain.std(axis=0).max() == 0
    with lb.LiberoEnv(SUITE, TASK, image_size=8, init_noise=lb.INIT_NOISE) as noisy:
        spread = np.stack([noisy.layout_state(lb.Layout("fresh", s))[joints] for s in range(8)])
        assert 0.01 < spread.std(axis=0).mean() < 0.04
        assert np.array_equal(noisy.layout_state(lb.Layout("fresh", 3)), noisy.layout_state(lb.Layout("fresh", 3)))
    with pytest.raises(ValueError, match="init_noise: expected a finite number >= 0"):
        lb.LiberoEnv(SUITE, TASK, image_size=8, init_noise=-1.0)


_spec = importlib.util.spec_from_file_location("libero_failures",
                                              Path(__file__).parents[1] / "benchmarks" / "libero_failures.py")
failures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(failures)


def test_turn_between_undirected_axes():
    from fastwam.envs.libero_expert import turn_between

    assert turn_between(np.radians(170), np.radians(10)) == pytest.approx(np.radians(20))  # 180 apart: one axis
    assert turn_between(np.radians(90), np.radians(75)) == pytest.approx(np.radians(-15))
    assert turn_between(0.0, np.radians(90)) == pytest.approx(np.radians(-90))  # either way: [-90, 90)


def test_scripted_expert_succeeds_through_the_wrapper(env):
    from fastwam.envs.libero_expert import LiberoExpert, supports

    assert supports(SUITE, TASK)
    tracked = failures.ObjectTracker(env)  # benchmarks/libero_failures.py: what moved, for failure analysis
    tracked.reset(lb.Layout("fresh", 3))
    for _ in range(3):
        tracked.step(lb.NOOP)
    assert tracked.outcome(False) == ("no_lift", None) and tracked.first_close is None and tracked.closes == 0
    assert tracked.first_close_yaw is None and tracked.first_close_turn is None
    expert = LiberoExpert(env)
    expert.reset()
    success = False
    while not success and env.steps < lb.MAX_STEPS[SUITE]:
        action = expert.act()
        assert action.shape == (7,) and np.all(np.abs(action) <= 1)
        _, success, _ = tracked.step(action)
    assert success, f"no success in {env.steps} steps"
    assert tracked.outcome(True) == ("success", None)
    assert tracked.rise[tracked.object] > failures.LIFT  # the instructed object was lifted ...
    assert tracked.outcome(False) == ("placed_elsewhere", None)  # ... so a failure would not be a wrong grasp
    assert max(r for n, r in tracked.rise.items() if n != tracked.object) < failures.LIFT
    assert tracked.closes == 1 and np.hypot(*tracked.first_close[:2]) < 15  # closed once, on the object (mm)
    assert abs(tracked.first_close_turn) < np.radians(10)  # the expert keeps its yaw for the can ...
    assert tracked.first_close_yaw is None  # ... which is round: no narrow side to close across


def test_scripted_expert_grasps_a_bottle_as_it_stands_rather_than_turning_it():
    """The ketchup is narrowest across its other axis but graspable as the gripper starts: the expert
    closes without turning the gripper 90 degrees, a turn whose direction the arm's start noise would
    pick (TURN_COST)."""
    from fastwam.envs.libero_expert import LiberoExpert, gripper_yaw, turn_between

    with lb.LiberoEnv(SUITE, "pick_up_the_ketchup_and_place_it_in_the_basket", image_size=8, init_noise=0.02) as env:
        env.reset(lb.Layout("fresh", 1))
        expert = LiberoExpert(env)
        expert.reset()
        start = gripper_yaw(env.sim)
        action = expert.act()
        while action[-1] < 0 and env.steps < 150:
            env.step(action)
            action = expert.act()
        assert action[-1] > 0, "the expert never closed"
        turn = np.degrees(abs(turn_between(start, gripper_yaw(env.sim))))
        assert turn < 20, f"turned {turn:.0f} degrees before closing"


def test_noise_injection_executes_noisy_actions_and_records_the_experts(monkeypatch):
    """--action-noise (DART): the env executes the expert's action plus noise on the 6 arm dims, the
    dataset keeps the expert's own action; the expert still succeeds, and a seed records one demo."""
    from fastwam.envs.libero_collect import LiberoSpec, close_envs, record_demo

    executed, step = [], lb.LiberoEnv.step
    monkeypatch.setattr(lb.LiberoEnv, "step", lambda self, a: executed.append(np.array(a)) or step(self, a))
    spec = LiberoSpec(suite=SUITE, tasks=(TASK,), image_size=16, cameras=("image",), steps_after_success=0,
                      action_noise=0.1)
    try:
        demo = record_demo(spec, TASK, 3)
        assert demo is not None, "the expert failed under noise 0.1"
        ran = np.stack(executed)
        assert ran.shape == demo.action.shape
        np.testing.assert_array_equal(ran[:, 6], demo.action[:, 6])  # the gripper command untouched
        noise = (ran - demo.action)[:, :6]
        inside = np.abs(ran[:, :6]) < 1  # where clipping left the noise whole
        assert 0.08 < noise[inside].std() < 0.12 and abs(noise[inside].mean()) < 0.02
        assert np.all(np.abs(demo.action) <= 1)  # the labels are the expert's, clipped as it clips
        executed.clear()
        again = record_demo(spec, TASK, 3)
        np.testing.assert_array_equal(again.action, demo.action)  # reproducible per layout seed
        np.testing.assert_array_equal(np.stack(executed), ran)
    finally:
        close_envs()


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("libero") / "lo"
    code = cli_main(["collect", "libero", "--suite", SUITE, "--tasks", "0", "--episodes", "1", "--out", str(out),
                     "--image-size", "32", "--workers", "1", "--steps-after-success", "3", "--quiet"])
    assert code == 0
    return out


def test_collected_dataset_has_the_public_libero_features(collected):
    ds = LeRobotDataset(collected, require=("observation.state", "action"))
    assert ds.num_episodes == 1 and ds.tasks == [TASK.replace("_", " ")] and ds.fps == 20
    assert ds.video_keys == ["observation.images.image", "observation.images.wrist_image"]
    state, action = ds.column("observation.state"), ds.column("action")
    assert state.shape == (ds.num_frames, 8) and action.shape == (ds.num_frames, 7)
    assert np.all(np.abs(action) <= 1) and set(np.unique(action[:, 6])) <= {-1.0, 1.0}
    info = collection_info(collected)
    (episode,) = info["episodes"]
    assert episode["length"] == episode["success_step"] + 3 == ds.num_frames
    assert info["suite"] == SUITE and info["layouts"] == {TASK: ["fresh:0"]}
    assert info["spec"]["antialias"] is False  # the fast default, recorded for evaluation
    assert info["expert_success"][TASK]["succeeded"] == 1
    frames = ds.episode_frames(0, "image")
    assert frames.shape == (ds.num_frames, 32, 32, 3) and frames.std() > 10
    assert np.abs(frames[-1].astype(int) - frames[0]).mean() > 1  # the scene changed


LIBERO_STATS = {"observation.state": {"min": [-0.3, -0.3, 0.0, -3.2, -3.2, -3.2, -0.05, -0.05],
                                      "max": [0.3, 0.3, 1.2, 3.2, 3.2, 3.2, 0.05, 0.05]},
                "action": {"min": [-1.0] * 7, "max": [1.0] * 7}}


def libero_config():
    cfg = preset("tiny")
    return cfg.replace(model=dataclasses.replace(cfg.model, state_dim=8, action_dim=7, latent_width=8),
                       data=dataclasses.replace(cfg.data, cameras=("image", "wrist_image")))


@pytest.fixture(scope="module")
def run_dir(collected, tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("libero_run") / "run", libero_config(),
                            collection_info(collected), stats=LIBERO_STATS, tasks=[TASK.replace("_", " ")])


def test_eval_runs_on_the_official_init_states_and_writes_the_shared_schema(run_dir, tmp_path):
    out = tmp_path / "eval.json"
    assert cli_main(["eval", "libero", "--checkpoint", str(run_dir), "--episodes", "2", "--max-steps", "4",
                     "--json", str(out), "--video", str(tmp_path / "eval.mp4"), "--video-episodes", "1",
                     "--threads", "1", "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "libero" and result["suite"] == SUITE and result["split"] == "test"
    task = result["tasks"][TASK]  # the collected task, by default
    assert task["variations"] == ["init:0", "init:1"] and task["training_variations"] == ["fresh:0"]
    assert task["episodes"] == 2 and task["episode_steps"] == [4, 4] and result["variations_disjoint"]
    lo, hi = task["ci95"]
    assert 0 <= lo <= task["success_rate"] <= hi <= 1 and task["mean_chunk_ms"] > 0
    assert result["max_steps"] == 4 and result["benchmark_seed"] is None
    assert result["env_options"] == {"antialias": False, "init_noise": 0.0}  # rendered as the demonstrations were
    assert [os.path.basename(v) for v in result["videos"]] == ["eval.mp4", "eval_imagined.mp4"]


def test_validation_split_uses_fresh_layouts_the_demonstrations_did_not(run_dir):
    plan = make_plan(run_dir, episodes=3, benchmark_name="libero", split="validation")
    assert plan.env_options["init_noise"] == lb.INIT_NOISE  # the arm starts as in the official init states
    offset = lb.VALIDATION_SEED_OFFSET
    assert plan.variations == {TASK: (f"fresh:{offset}", f"fresh:{offset + 1}", f"fresh:{offset + 2}")}
    assert plan.max_steps == lb.MAX_STEPS[SUITE] and plan.suite == SUITE
    assert lb.LiberoBenchmark.disjoint(plan, TASK)


def test_evaluation_renders_as_the_demonstrations_were(collected, tmp_path):
    info = collection_info(collected)
    for recorded, expected in ((False, False), (True, True), (None, True)):  # None: a collection before the option
        info["spec"] = {k: v for k, v in info["spec"].items() if k != "antialias"}
        if recorded is not None:
            info["spec"]["antialias"] = recorded
        run = write_checkpoint(tmp_path / f"run_{recorded}", libero_config(), info, stats=LIBERO_STATS)
        plan = make_plan(run, episodes=1, benchmark_name="libero")
        assert plan.env_options == {"antialias": expected, "init_noise": 0.0}  # test split: init states set the arm
        with lb.LiberoBenchmark.make_env(plan, TASK) as env:
            assert env.antialias is expected
    public = write_checkpoint(tmp_path / "public", libero_config(), {}, stats=LIBERO_STATS)  # no collection record
    assert make_plan(public, episodes=1, benchmark_name="libero", suite=SUITE).env_options == {"antialias": True,
                                                                                              "init_noise": 0.0}


def test_a_validation_layout_the_demonstrations_used_is_refused(collected, tmp_path):
    clashing = collection_info(collected)
    clashing["layouts"] = {TASK: [f"fresh:{lb.VALIDATION_SEED_OFFSET + 1}"]}
    run = write_checkpoint(tmp_path / "run", libero_config(), clashing, stats=LIBERO_STATS)
    make_plan(run, episodes=1, benchmark_name="libero", split="validation")  # episode 0: seed offset + 0, unused
    with pytest.raises(ValueError, match=rf"repeats a layout the demonstrations of \['{TASK}'\] used"):
        make_plan(run, episodes=2, benchmark_name="libero", split="validation")


def test_a_task_the_expert_left_without_demonstrations_is_evaluated_by_default(collected, tmp_path):
    info = collection_info(collected)
    unreached = lb.task_names(SUITE)[3]
    info["layouts"] = {TASK: ["fresh:0"], unreached: []}  # collected for two tasks, one without a success
    run = write_checkpoint(tmp_path / "run", libero_config(), info, stats=LIBERO_STATS)
    plan = make_plan(run, episodes=1, benchmark_name="libero")
    assert plan.tasks == (TASK, unreached)  # it counts in the mean: it is not dropped
    assert plan.training_variations == {TASK: ("fresh:0",), unreached: ()}
    assert make_plan(run, episodes=1, tasks="all", benchmark_name="libero").tasks == tuple(lb.task_names(SUITE))


def test_bad_suite_task_or_checkpoint_is_refused_naming_the_mismatch(run_dir, tmp_path):
    with pytest.raises(SystemExit, match="--suite: expected one of libero_spatial"):
        cli_main(["eval", "libero", "--checkpoint", str(run_dir), "--suite", "libero_nope", "--episodes", "1"])
    with pytest.raises(SystemExit, match="unknown libero_object task 'fly'"):
        cli_main(["eval", "libero", "--checkpoint", str(run_dir), "--tasks", "fly", "--episodes", "1"])
    metaworld = write_checkpoint(tmp_path / "mw", preset("tiny"), {})
    with pytest.raises(SystemExit, match=r"data.cameras \['corner3'\]: LIBERO renders \['image', 'wrist_image'\]"):
        cli_main(["eval", "libero", "--checkpoint", str(metaworld), "--suite", SUITE, "--episodes", "1"])
    cfg = libero_config()
    wrong_dims = cfg.replace(model=dataclasses.replace(cfg.model, state_dim=4, action_dim=4))
    wrong = write_checkpoint(tmp_path / "dims", wrong_dims, {})
    with pytest.raises(SystemExit, match="the checkpoint has model.state_dim 4, model.action_dim 4"):
        cli_main(["eval", "libero", "--checkpoint", str(wrong), "--suite", SUITE, "--episodes", "1"])
    bare = write_checkpoint(tmp_path / "bare", cfg, {}, stats=LIBERO_STATS)  # e.g. trained on public data
    with pytest.raises(SystemExit, match="does not record a LIBERO suite; pass one of"):
        cli_main(["eval", "libero", "--checkpoint", str(bare), "--episodes", "1"])
    assert make_plan(bare, 1, benchmark_name="libero", suite="libero_spatial").tasks == tuple(
        lb.task_names("libero_spatial"))  # every task of the suite, by default
    with pytest.raises(SystemExit, match=r"MetaWorld has a 4-D proprio"):
        cli_main(["eval", "metaworld", "--checkpoint", str(run_dir), "--episodes", "1", "--tasks", "reach"])
    with pytest.raises(SystemExit, match="unknown libero_object task 'nope'"):
        cli_main(["collect", "libero", "--suite", SUITE, "--tasks", "nope", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match=r"--tasks: the scripted expert has no skill for a step of "
                                         r"\['KITCHEN_SCENE6_put_the_yellow_and_white_mug_in_the_microwave_and_close_it'\]"):
        cli_main(["collect", "libero", "--suite", "libero_10", "--tasks", "9", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--seed applies to `collect metaworld` only"):
        cli_main(["collect", "libero", "--seed", "3", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--suite applies to `collect libero` only"):
        cli_main(["collect", "metaworld", "--suite", SUITE, "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="need episodes >= 1"):
        cli_main(["collect", "metaworld", "--episodes", "0", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--action-noise applies to `collect libero` only"):
        cli_main(["collect", "metaworld", "--action-noise", "0.1", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--action-noise: expected a finite number >= 0, got -0.1"):
        cli_main(["collect", "libero", "--suite", SUITE, "--action-noise", "-0.1", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--allow-any-variation applies to MetaWorld only"):
        cli_main(["eval", "libero", "--checkpoint", str(run_dir), "--allow-any-variation", "--episodes", "1"])
    assert not (tmp_path / "x").exists()


def test_an_interrupted_collection_resumes_and_writes_what_one_run_would(monkeypatch, tmp_path, capsys):
    """Layouts recorded before an interruption are kept in <out>.recorded and not recorded again; the
    resumed dataset has the uninterrupted one's content (content_sha256) and collection log, episodes
    in the same order; a store of another recipe, or one without its recipe, is refused."""
    from fastwam.data.lerobot import camera_key
    from fastwam.envs import libero_collect as lc
    from fastwam.envs.collect import Demo

    a, b = lb.task_names(SUITE)[:2]
    calls, interrupt_at = [], [5]

    def fake_record_demo(spec, task, seed):  # the expert without the simulator: random frames per layout
        calls.append((task, seed))
        if len(calls) == interrupt_at[0]:
            raise KeyboardInterrupt
        if (task, seed) == (a, 1):
            return None  # a failed layout: replaced by seed 3 in the next round
        rng = np.random.default_rng([seed, len(task)])
        steps = 4 + seed
        return Demo(task, seed, steps - 1, {camera_key("image"): rng.integers(0, 256, (steps, 32, 32, 3), np.uint8)},
                    rng.normal(size=(steps, 8)).astype(np.float32), rng.uniform(-1, 1, (steps, 7)).astype(np.float32))

    monkeypatch.setattr(lc, "record_demo", fake_record_demo)
    spec = lc.LiberoSpec(SUITE, (a, b), episodes=3, image_size=32, cameras=("image",), video_encoding="lossless")
    out, store = tmp_path / "resumed", tmp_path / "resumed.recorded"
    with pytest.raises(KeyboardInterrupt):
        lc.collect(spec, out, progress=False)
    assert "4 recorded layouts are kept" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "resumed.partial").exists()
    assert sorted(p.stem for p in store.glob("*/*.npz")) == ["0", "0", "1", "2"]  # a0 a1(failed) a2 b0
    with pytest.raises(ValueError, match=r"recorded with --action-noise 0.0, this collection asks --action-noise 0.1"):
        lc.collect(dataclasses.replace(spec, action_noise=0.1), out, progress=False)

    (store / a / "0.npz").unlink()  # a gap before stored layouts: the episode order must still be the rounds'
    calls.clear()
    interrupt_at[0] = 0
    summary = lc.collect(spec, out, progress=False)
    assert calls == [(a, 0), (b, 1), (b, 2), (a, 3)]  # only what was missing
    assert summary["resumed"]["layouts"] == 3 and summary["layouts"][a] == ["fresh:0", "fresh:2", "fresh:3"]
    assert not store.exists()
    assert "resuming: 3 layouts already recorded" in capsys.readouterr().out

    calls.clear()
    whole = lc.collect(spec, tmp_path / "whole", progress=False)
    assert len(calls) == 7 and whole["resumed"] is None
    assert LeRobotDataset(out).content_sha256() == LeRobotDataset(tmp_path / "whole").content_sha256()
    assert [{k: v for k, v in log.items() if k not in ("collect_seconds", "resumed")} for log in (summary, whole)] == [
        {k: v for k, v in whole.items() if k not in ("collect_seconds", "resumed")}] * 2

    (tmp_path / "orphan.recorded" / a).mkdir(parents=True)  # layouts without the recipe they were recorded with
    (tmp_path / "orphan.recorded" / a / "0.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="1 recorded layouts but no recipe.json"):
        lc.collect(spec, tmp_path / "orphan", progress=False)


def test_collection_rounds_replace_failed_seeds_and_stop_after_max_failures():
    from fastwam.envs.libero_collect import LiberoSpec, _next_round

    a, b = lb.task_names(SUITE)[:2]
    spec = LiberoSpec(SUITE, (a, b), episodes=3, max_failures=2)
    used, failed, next_seed = {a: [], b: []}, {a: [], b: []}, {a: 0, b: 0}
    # A round tries no more layouts than a task may still fail: a hard task stops at max_failures.
    assert [(t, s) for _, t, s in _next_round(spec, used, failed, next_seed)] == [(a, 0), (a, 1), (b, 0), (b, 1)]
    used[a], failed[b] = [0, 1], [0, 1]  # b failed max_failures times: it keeps what it has
    assert [(t, s) for _, t, s in _next_round(spec, used, failed, next_seed)] == [(a, 2)]
    failed[a] = [2]  # one failure of a: one new seed
    assert [(t, s) for _, t, s in _next_round(spec, used, failed, next_seed)] == [(a, 3)]
    used[a].append(3)
    assert _next_round(spec, used, failed, next_seed) == []
    with pytest.raises(ValueError, match="max_failures >= 1"):
        LiberoSpec(SUITE, (a,), max_failures=0)
    with pytest.raises(ValueError, match="does not handle libero_10 task"):  # no door skill yet
        LiberoSpec("libero_10", ("KITCHEN_SCENE6_put_the_yellow_and_white_mug_in_the_microwave_and_close_it",))


def test_plans_come_from_the_goal_and_the_scene():
    """The top drawer's region opens itself, the microwave's heating region opens with the microwave;
    closing comes last; nothing of the scene is named in the code."""
    from fastwam.envs.libero_expert import containers, plan_for

    with lb.LiberoEnv("libero_goal", "open_the_top_drawer_and_put_the_bowl_inside", image_size=8) as env:
        env.reset(lb.Layout("fresh", 0))
        assert containers(env)["wooden_cabinet_1_top_region"] == "wooden_cabinet_1_top_region"
        assert "wooden_cabinet_1_top_side" not in containers(env)  # on the cabinet, not in it
        assert [str(s) for s in plan_for(env)] == ["(open wooden_cabinet_1_top_region) [precondition]",
                                                   "(in akita_black_bowl_1 wooden_cabinet_1_top_region)"]
    with lb.LiberoEnv("libero_10", "KITCHEN_SCENE6_put_the_yellow_and_white_mug_in_the_microwave_and_close_it",
                      image_size=8) as env:
        env.reset(lb.Layout("fresh", 0))
        assert [str(s) for s in plan_for(env)] == ["(open microwave_1) [precondition]",
                                                   "(in white_yellow_mug_1 microwave_1_heating_region)",
                                                   "(close microwave_1)"]


def _run_skill(env, skill, predicate, steps=200):
    skill.reset()
    while env.steps < steps and not (skill.finished and env.problem._eval_predicate(predicate)):
        action = skill.act()
        assert action.shape == (7,) and np.all(np.abs(action) <= 1)
        env.step(action)
    return bool(env.problem._eval_predicate(predicate))


def test_drawer_and_knob_skills_succeed_through_the_wrapper():
    from fastwam.envs.libero_expert import SlideDrawer, TurnKnob

    with lb.LiberoEnv("libero_goal", "open_the_middle_drawer_of_the_cabinet", image_size=8, max_steps=600) as env:
        env.reset(lb.Layout("fresh", 0))
        drawer = "wooden_cabinet_1_middle_region"
        assert not env.problem._eval_predicate(["open", drawer])
        assert _run_skill(env, SlideDrawer(env, drawer, opening=True), ["open", drawer])
        assert _run_skill(env, SlideDrawer(env, drawer, opening=False), ["close", drawer], steps=env.steps + 200)
        assert _run_skill(env, TurnKnob(env, "flat_stove_1", on=True), ["turnon", "flat_stove_1"], steps=env.steps + 200)


def test_the_expert_plans_and_acts_without_the_official_init_states(monkeypatch):
    """A fresh layout's episode never reads the evaluation init states (collection refuses a layout equal
    to one of them separately); a goal with a predicate the expert has no skill for is refused by name."""
    from fastwam.envs.libero_expert import LiberoExpert

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the expert read the official init states ({name})")

        def __getitem__(self, index):
            raise AssertionError("the expert read the official init states")

    with lb.LiberoEnv("libero_goal", "turn_on_the_stove", image_size=8) as env:
        env.reset(lb.Layout("fresh", 2))
        env.init_states = Untouchable()
        expert = LiberoExpert(env)
        expert.reset()
        success = False
        while not success and env.steps < env.max_steps:
            _, success, _ = env.step(expert.act())
        assert success
        monkeypatch.setitem(env.problem.parsed_problem, "goal_state", [["Stack", "a", "b"]])  # another goal, same scene
        with pytest.raises(ValueError, match="the expert has no skill for predicate 'Stack'"):
            LiberoExpert(env)
