"""MetaWorld v3 (goal-observable MT1 tasks) for recording demonstrations and closed-loop evaluation.

Task names are MetaWorld's (``push-v3``; ``push`` is accepted too). A task has
``num_variations(task)`` (= 50) *variations*: object and goal layouts, fixed by the benchmark
seed (``metaworld.MT1(task, seed)``; ``layouts(task, seed)`` returns them). Datasets record the
variations their demonstrations used (``fastwam.envs.collect.used_variations``) so that evaluation
can pick disjoint ones under the same seed, or another seed's layouts altogether.

API used by evaluation::

    env = MetaWorldEnv("drawer-open-v3", variation=7, image_size=64, cameras=("corner3",), seed=0)
    obs = env.reset()                    # {"state": float32 (4,)}: proprio only, no image
    image = env.render()                 # uint8 (S, S * n_cameras, 3), cameras side by side, upright
    obs, success, done = env.step(a)     # a: (4,) in [-1, 1]; done = step limit reached
    env.proprio()                        # float32 (4,): end-effector xyz + gripper opening
    env.instruction                      # "open the drawer"

``success`` does not end an episode by itself (the caller decides); ``done`` means
``max_steps`` steps were taken and ``step`` may not be called again before ``reset``.

Observations recorded for policies are the camera image(s) and the 4-D proprio, never object or
goal state; the 39-D MetaWorld state is used only by the scripted expert (``expert_action``).

Rendering uses MuJoCo's own offscreen renderer at the requested size (``MUJOCO_GL=egl`` for
headless machines; set before mujoco is imported). Shadows and reflections are off by default
(3x faster on CPU). Each env owns its renderer; several envs in one process render correctly,
but renderers are not thread-safe; collection runs one env per worker process.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import functools
import warnings
from typing import Sequence

import numpy as np

SUFFIX = "-v3"
MAX_STEPS = 500  # MetaWorld's own episode limit
NUM_VARIATIONS = 50  # MT1 train tasks per environment (metaworld._N_GOALS)

MT10 = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3"]
# Difficulty split used by the DP3 paper (from Seo et al., "Masked World Models", 2022).
EASY = ["button-press-v3", "button-press-topdown-v3", "button-press-topdown-wall-v3", "button-press-wall-v3",
        "coffee-button-v3", "dial-turn-v3", "door-close-v3", "door-lock-v3", "door-open-v3", "door-unlock-v3",
        "drawer-close-v3", "drawer-open-v3", "faucet-close-v3", "faucet-open-v3", "handle-press-v3",
        "handle-press-side-v3", "handle-pull-v3", "handle-pull-side-v3", "lever-pull-v3", "plate-slide-v3",
        "plate-slide-back-v3", "plate-slide-back-side-v3", "plate-slide-side-v3", "reach-v3", "reach-wall-v3",
        "window-close-v3", "window-open-v3", "peg-unplug-side-v3"]
MEDIUM = ["basketball-v3", "bin-picking-v3", "box-close-v3", "coffee-pull-v3", "coffee-push-v3", "hammer-v3",
          "peg-insert-side-v3", "push-wall-v3", "soccer-v3", "sweep-v3", "sweep-into-v3"]
HARD = ["assembly-v3", "hand-insert-v3", "pick-out-of-hole-v3", "pick-place-v3", "push-v3", "push-back-v3"]
VERY_HARD = ["shelf-place-v3", "disassemble-v3", "stick-pull-v3", "stick-push-v3", "pick-place-wall-v3"]
TASK_SETS = {"mt10": MT10, "easy": EASY, "medium": MEDIUM, "hard": HARD, "very-hard": VERY_HARD,
             "mt50": EASY + MEDIUM + HARD + VERY_HARD}

INSTRUCTIONS = {
    "assembly-v3": "put the nut onto the peg",
    "basketball-v3": "dunk the basketball into the hoop",
    "bin-picking-v3": "move the cube from one bin to the other",
    "box-close-v3": "put the lid on the box",
    "button-press-v3": "press the button from the front",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button from the top behind the wall",
    "button-press-wall-v3": "press the button from the front behind the wall",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the mug out from under the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "take the nut off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by turning the lock",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by turning the lock",
    "drawer-close-v3": "close the drawer",
    "drawer-open-v3": "open the drawer",
    "faucet-close-v3": "turn the faucet off",
    "faucet-open-v3": "turn the faucet on",
    "hammer-v3": "hammer the nail into the wall",
    "hand-insert-v3": "put the block into the hole",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "unplug the peg from the side",
    "pick-out-of-hole-v3": "pick the block out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "plate-slide-back-side-v3": "slide the plate sideways out of the cabinet",
    "plate-slide-back-v3": "slide the plate back out of the cabinet",
    "plate-slide-side-v3": "slide the plate sideways into the cabinet",
    "plate-slide-v3": "slide the plate into the cabinet",
    "push-back-v3": "push the puck back to the goal",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck to the goal behind the wall",
    "reach-v3": "reach the goal position",
    "reach-wall-v3": "reach the goal position behind the wall",
    "shelf-place-v3": "place the puck on the shelf",
    "soccer-v3": "kick the ball into the goal",
    "stick-pull-v3": "grasp the stick and pull the box with it",
    "stick-push-v3": "grasp the stick and push the box with it",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-close-v3": "close the window",
    "window-open-v3": "open the window",
}
ALL_TASKS = sorted(INSTRUCTIONS)


def canonical_task(task: str) -> str:
    """``push`` or ``push-v3`` -> ``push-v3``; unknown names raise ValueError."""
    name = task.strip()
    name = name if name.endswith(SUFFIX) else name + SUFFIX
    if name not in INSTRUCTIONS:
        raise ValueError(f"unknown MetaWorld task {task!r}; known: {', '.join(ALL_TASKS)}")
    return name


def expand_tasks(spec: str | Sequence[str]) -> list[str]:
    """``"mt10"``, ``"easy"``/``"medium"``/``"hard"``/``"very-hard"``, or ``"push,reach-v3"`` -> task names.

    Sets and names can be mixed in a comma list; duplicates are dropped, order kept.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    tasks: list[str] = []
    for item in (i.strip() for i in items if i.strip()):
        key = item.lower().replace("_", "-")
        for task in TASK_SETS.get(key, None) or [canonical_task(item)]:
            if task not in tasks:
                tasks.append(task)
    if not tasks:
        raise ValueError(f"no tasks in {spec!r}")
    return tasks


def instruction(task: str) -> str:
    """The English instruction of a task, the same for all its episodes."""
    return INSTRUCTIONS[canonical_task(task)]


def num_variations(task: str) -> int:
    """Number of object/goal layouts (MT1 train tasks) of a task."""
    canonical_task(task)
    return NUM_VARIATIONS


@functools.lru_cache(maxsize=64)  # an MT1 is small (50 pickled layouts)
def _benchmark(task: str, seed: int):
    """metaworld.MT1 for (task, seed): its train_tasks are the variations (about 1 s to build)."""
    import metaworld

    return metaworld.MT1(task, seed=seed)


def layouts(task: str, seed: int) -> np.ndarray:
    """(num_variations, D) float: each variation's object and goal layout (its ``rand_vec``) under ``seed``."""
    import pickle  # how metaworld itself stores a Task's data

    return np.stack([pickle.loads(t.data)["rand_vec"] for t in _benchmark(canonical_task(task), seed).train_tasks])


def _scripted_policy(task: str):
    from metaworld.policies import ENV_POLICY_MAP

    return ENV_POLICY_MAP[task]()


class MetaWorldEnv:
    """One MetaWorld task in one variation, with camera rendering and a 4-D proprio.

    task: MetaWorld name; variation: 0..num_variations(task)-1; image_size: S (square, per
    camera); cameras: MetaWorld camera names (``corner3``, ``corner2``, ``corner``, ``topview``, ...);
    seed: benchmark seed fixing the variations' layouts; max_steps: steps per episode;
    shadows: render shadows and reflections (slower).
    """

    def __init__(self, task: str, variation: int = 0, image_size: int = 64, cameras: Sequence[str] = ("corner3",),
                 seed: int = 0, max_steps: int = MAX_STEPS, shadows: bool = False):
        import mujoco

        self.task = canonical_task(task)
        if image_size < 1 or not cameras or max_steps < 1:
            raise ValueError(f"need image_size >= 1, cameras and max_steps >= 1; got {image_size}, {cameras}, {max_steps}")
        self.image_size, self.cameras = image_size, tuple(cameras)
        self.seed, self.max_steps = seed, max_steps
        self.instruction = INSTRUCTIONS[self.task]
        self._benchmark = _benchmark(self.task, seed)
        self._env = self._benchmark.train_classes[self.task]()
        self._env.max_path_length = max_steps
        self._policy = _scripted_policy(self.task)
        try:
            self._check_cameras(mujoco)
        except ValueError:
            self._env.close()
            raise
        self._shadows = shadows
        self._renderer = None  # created on first render: planning runs need no GL context
        self._obs: np.ndarray | None = None
        self.steps = 0
        self.set_variation(variation)

    def set_variation(self, variation: int) -> None:
        """Switch to another layout (takes effect at the next ``reset``)."""
        if not 0 <= variation < NUM_VARIATIONS:
            raise ValueError(f"variation must be in 0..{NUM_VARIATIONS - 1}, got {variation}")
        self._env.set_task(self._benchmark.train_tasks[variation])
        self.variation, self._obs = variation, None

    def reset(self, variation: int | None = None) -> dict[str, np.ndarray]:
        """Reset to a variation's initial layout (default: the current one); returns {"state": float32 (4,)}."""
        if variation is not None:
            self.set_variation(variation)
        self._obs, _ = self._env.reset()
        # MetaWorld places its goal markers by writing data.site_xpos after every step; its reset leaves
        # there what a fresh model or the previous episode put (push: the marker on the table, or sunk
        # below it), so an episode's first frame depended on the episode before. Place them as step does.
        for site, position in self._env._target_site_config:
            self._env._set_pos_site(site, position)
        self.steps = 0
        return {"state": self.proprio()}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], bool, bool]:
        """Apply a (4,) action in [-1, 1]; returns (obs, success, done)."""
        from fastwam.envs import checked_action

        action = checked_action(action, 4, self.steps, self.max_steps, self._obs is not None).astype(np.float32)
        self._obs, _, _, _, info = self._env.step(action)
        self.steps += 1
        return {"state": self.proprio()}, bool(info["success"]), self.steps >= self.max_steps

    def proprio(self) -> np.ndarray:
        """End-effector xyz and gripper opening (0 closed .. 1 open): float32 (4,)."""
        if self._obs is None:
            raise RuntimeError("call reset() first")
        return self._obs[:4].astype(np.float32)

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state, clipped to [-1, 1]: float32 (4,)."""
        if self._obs is None:
            raise RuntimeError("call reset() first")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the policies warn when they exceed [-1, 1]; we clip
            action = self._policy.get_action(self._obs)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def render_views(self) -> list[np.ndarray]:
        """One upright uint8 (S, S, 3) image per camera."""
        if self._renderer is None:
            self._renderer = self._make_renderer()
        views = []
        for camera in self.cameras:
            self._renderer.update_scene(self._env.data, camera=camera)
            image = self._renderer.render()
            if camera.startswith("corner"):
                image = image[::-1, ::-1]  # MetaWorld's corner cameras are mounted upside down
            views.append(np.ascontiguousarray(image))
        return views

    def render(self) -> np.ndarray:
        """All cameras side by side: uint8 (S, S * n_cameras, 3)."""
        return np.concatenate(self.render_views(), axis=1)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()

    def __enter__(self) -> "MetaWorldEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_cameras(self, mujoco) -> None:
        model = self._env.model
        unknown = [c for c in self.cameras if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, c) < 0]
        if unknown:
            names = [model.camera(i).name for i in range(model.ncam)]
            raise ValueError(f"unknown camera(s) {unknown}; this scene has {names}")

    def _make_renderer(self):
        import mujoco

        model = self._env.model
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.image_size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.image_size)
        renderer = mujoco.Renderer(model, self.image_size, self.image_size)
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = self._shadows
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = self._shadows
        return renderer


# -- the evaluation adapter (fastwam.envs: one interface for every benchmark) ---------------------

VALIDATION_SEED_OFFSET = 1000  # validation layouts: the variations under benchmark seed + 1000
CONTROL_FPS = 80  # actions per second: 5 physics steps of 2.5 ms each


def episode_variations(used: Sequence[int], episodes: int, total: int = NUM_VARIATIONS) -> tuple[int, ...]:
    """Variation of each episode: the ones not in ``used``, in order, cycled when there are fewer."""
    unused = [v for v in range(total) if v not in set(used)]
    if not unused:
        raise ValueError(f"all {total} variations were used for training; none is left to evaluate on")
    return tuple(unused[e % len(unused)] for e in range(episodes))


def variations_disjoint(plan, task: str) -> bool:
    """Whether no episode of ``task`` in ``plan`` (an EvalPlan) runs on a layout its demonstrations used."""
    used, evaluated = plan.training_variations[task], sorted(set(plan.variations[task]))
    if plan.benchmark_seed == plan.training_benchmark_seed:
        return not set(used) & set(evaluated)
    train = layouts(task, plan.training_benchmark_seed)[list(used)]
    return not any(np.allclose(layout, seen) for layout in layouts(task, plan.benchmark_seed)[evaluated]
                   for seen in train)


def recorded_tasks(info: dict) -> list[str]:
    """The MetaWorld tasks a checkpoint was trained on, from its data record (data.json)."""
    collection = info.get("collection") or {}
    if collection.get("spec", {}).get("tasks"):
        return list(collection["spec"]["tasks"])
    if collection.get("variations"):
        return list(collection["variations"])
    by_instruction = {text: task for task, text in INSTRUCTIONS.items()}
    tasks = [by_instruction[t] for t in info.get("tasks", []) if t in by_instruction]
    if not tasks:
        raise ValueError("the checkpoint does not record which MetaWorld tasks it was trained on; pass --tasks")
    return tasks


class MetaWorldBenchmark:
    """MetaWorld behind ``fastwam.envs``' adapter interface. A layout is a variation index.

    ``test``: the variations the demonstrations left unused under the benchmark seed recorded at
    collection (episode e on ``unused[e % len(unused)]``); ``validation``: the 50 variations of
    benchmark seed + ``VALIDATION_SEED_OFFSET`` (episode e on variation e % 50), checked against
    the demonstrations' layouts.
    """

    name = "metaworld"
    control_fps = CONTROL_FPS

    @staticmethod
    def default_max_steps(suite: str = "") -> int:
        return 200

    @staticmethod
    def check(cfg) -> None:
        m = cfg.model
        if (m.state_dim, m.action_dim) != (4, 4):
            raise ValueError(f"MetaWorld has a 4-D proprio and 4-D actions; the checkpoint has model.state_dim "
                             f"{m.state_dim}, model.action_dim {m.action_dim}")

    @staticmethod
    def plan(info: dict, tasks: str | Sequence[str] | None, episodes: int, split: str, suite: str = "",
             allow_any_layout: bool = False):
        from fastwam.envs import EpisodeLayouts

        if suite not in ("", "metaworld"):
            raise ValueError(f"--suite {suite!r}: MetaWorld has no suites (use --tasks mt10, easy, ...)")
        collection = info.get("collection") or {}
        task_list = expand_tasks(tasks) if tasks else [canonical_task(t) for t in recorded_tasks(info)]
        if "variations" in collection:
            used = {canonical_task(t): tuple(v) for t, v in collection["variations"].items()}
        elif allow_any_layout:
            used = {}
        else:
            raise ValueError("data.json has no record of the MetaWorld variations its demonstrations used "
                             "(collection.variations), so unseen variations cannot be chosen; pass "
                             "--allow-any-variation to evaluate on variations 0, 1, ... anyway")
        training_seed = int(collection.get("benchmark_seed", 0))
        test = split == "test"
        return EpisodeLayouts(
            tasks=tuple(task_list),
            episodes={t: episode_variations(used.get(t, ()) if test else (), episodes) for t in task_list},
            training={t: used.get(t, ()) for t in task_list},
            benchmark_seed=training_seed + (0 if test else VALIDATION_SEED_OFFSET),
            training_benchmark_seed=training_seed,
            env_options={"shadows": bool(collection.get("spec", {}).get("shadows", False))})

    disjoint = staticmethod(variations_disjoint)

    @staticmethod
    def make_env(plan, task: str) -> MetaWorldEnv:
        return MetaWorldEnv(task, 0, plan.image_size, plan.cameras, plan.benchmark_seed, max_steps=plan.max_steps,
                            shadows=plan.env_options.get("shadows", False))
