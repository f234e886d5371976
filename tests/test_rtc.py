"""Real-time chunking: the guidance math, the guided sampler, asynchronous execution, and its plumbing."""

import math

import numpy as np
import pytest
import torch
from test_model import randomized, tiny

from fastwam.model.rtc import ChunkGuide, guidance_scale, guidance_weights, guided_velocity
from fastwam.policy import RecedingHorizonController


def test_weights_freeze_then_decay_exponentially_to_the_end_of_the_overlap():
    w = guidance_weights(6, 2)
    c = (6 - 3) / (6 - 2 + 1)  # step 3
    assert w[:2].tolist() == [1.0, 1.0] and w[3].item() == pytest.approx(c * math.expm1(c) / math.expm1(1))
    assert torch.all(w[1:] <= w[:-1]) and 0 < w[-1] < 0.1
    assert guidance_weights(3, 0)[0] < 1 and guidance_weights(3, 3).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="expected 0 <= frozen <= overlap, got frozen 4, overlap 3"):
        guidance_weights(3, 4)
    assert guidance_scale(0.5, 10) == pytest.approx(2.0) and guidance_scale(1.0, 10) == guidance_scale(0.0, 10) == 10
    assert guidance_scale(0.02, 10) == 10  # capped where c(s) is large


def test_guided_velocity_is_the_vector_jacobian_formula():
    torch.manual_seed(0)
    M = torch.randn(3, 3)
    velocity = lambda x: x @ M  # noqa: E731  (a linear field: J = I - s M^T per row)
    x, target, sigma = torch.randn(2, 4, 3), torch.randn(2, 2, 3), 0.6
    guide = ChunkGuide(target, torch.tensor([1.0, 0.5]), max_weight=10.0)
    x0 = x - sigma * velocity(x)
    error = torch.zeros_like(x)
    error[:, :2] = guide.weights[None, :, None] * (target - x0[:, :2])
    expected = velocity(x) - guidance_scale(sigma, 10.0) * (error @ (torch.eye(3) - sigma * M).T)
    torch.testing.assert_close(guided_velocity(velocity, x, sigma, guide), expected)


def test_the_guided_sampler_continues_the_previous_chunk():
    cfg = tiny("fastwam")
    model, batch = randomized(cfg), cfg.fake_batch(2, torch.Generator().manual_seed(1))
    prefix = model.prefill(batch.context, batch.state, batch.text)
    noise, target = torch.randn(2, cfg.chunk, cfg.action_dim), torch.randn(2, 3, cfg.action_dim)
    free = model.sample_actions(prefix, noise, 10)
    guided = model.sample_actions(prefix, noise, 10, ChunkGuide(target, guidance_weights(3, 2), 10.0))
    far, near = (free[:, :2] - target[:, :2]).norm(), (guided[:, :2] - target[:, :2]).norm()
    assert near < 0.3 * far  # the frozen steps land near what executes anyway
    idle = model.sample_actions(prefix, noise, 10, ChunkGuide(target, torch.zeros(3), 10.0))
    torch.testing.assert_close(idle, free, atol=1e-5, rtol=0)  # zero weights: the unguided sampler
    with pytest.raises(ValueError, match="guide.target: expected at most 4 steps"):
        model.sample_actions(prefix, noise, 2, ChunkGuide(torch.zeros(2, 5, cfg.action_dim), torch.ones(5)))
    with pytest.raises(ValueError, match="joint inference has none"):
        randomized(tiny("joint")).predict_actions(batch.context, batch.state, batch.text, mode="joint",
                                                  guide=ChunkGuide(target, torch.ones(3)))


class ScriptedPolicy:
    """Chunk c is [100 c, 100 c + 1, ...]: executed values tell which chunk and step ran."""

    chunk, history_frames, frame_stride = 8, 0, 1

    def __init__(self):
        self.calls = []

    def reset(self, seed=None):
        self.calls.clear()

    def act(self, observation, **guide):
        self.calls.append({"step": observation["step"], **guide})
        c = len(self.calls) - 1
        return (100.0 * c + np.arange(self.chunk, dtype=float))[:, None]


def run(controller, steps):
    clock = {"t": 0}
    executed = []
    for t in range(steps):
        clock["t"] = t
        executed.append(controller.act(lambda: {"step": clock["t"]})[0])
    return executed


def test_asynchronous_execution_switches_chunks_after_the_delay_and_guides_toward_the_overlap():
    policy = ScriptedPolicy()
    controller = RecedingHorizonController(policy, execute=4, delay=2, guidance=10.0)
    executed = run(controller, 14)
    # chunk 0 from its step 0 (6 actions), then each chunk from its step 2 (the 2 before ran from the old one)
    assert executed == [0, 1, 2, 3, 4, 5, 102, 103, 104, 105, 202, 203, 204, 205]
    assert [c["step"] for c in policy.calls] == [0, 4, 8, 12]  # requested when 2 actions were left
    assert "previous" not in policy.calls[0]
    np.testing.assert_array_equal(policy.calls[1]["previous"][:, 0], [4, 5, 6, 7])  # chunk 0's plan from step 4
    assert policy.calls[1]["frozen"] == 2 and policy.calls[1]["guidance"] == 10.0
    assert controller.boundary_jumps == [102 - 5, 202 - 105]
    second = np.diff(np.asarray(executed, float), n=2)
    assert controller.jerk() == pytest.approx(np.abs(second).mean())  # 0 within chunks, 96 and -98 around a switch
    naive = ScriptedPolicy()
    run(RecedingHorizonController(naive, execute=4, delay=2), 8)
    assert all("previous" not in c for c in naive.calls)  # no guidance: the naive asynchronous baseline
    synchronous = ScriptedPolicy()
    assert run(RecedingHorizonController(synchronous, execute=4), 8) == [0, 1, 2, 3, 100, 101, 102, 103]
    with pytest.raises(ValueError, match=r"delay: expected 0..4 steps \(chunk 8 - execute 4"):
        RecedingHorizonController(ScriptedPolicy(), execute=4, delay=5)
    with pytest.raises(ValueError, match="guidance: expected a finite number >= 0, got nan"):
        RecedingHorizonController(ScriptedPolicy(), execute=4, guidance=float("nan"))
    with pytest.raises(ValueError, match=r"execute 8 of 8 actions leaves none \(execute < chunk expected\)"):
        RecedingHorizonController(ScriptedPolicy(), execute=8, guidance=10.0)


def test_policy_guides_in_raw_units_and_refuses_bad_previous_actions(tmp_path):
    from test_evaluate import MW_STATS

    from fastwam.config import preset
    from fastwam.data.normalize import Normalizer
    from fastwam.policy import Policy

    cfg = preset("tiny")
    policy = Policy(randomized(cfg.model), cfg, Normalizer(MW_STATS), noise_scale=0.0, steps=10)
    observation = {"image": np.full((16, 16, 3), 90, np.uint8), "state": np.zeros(4, np.float32),
                   "instruction": "reach the goal position"}
    free = policy.act(observation)
    previous = np.full((2, 4), 0.5)
    guided = policy.act(observation, previous=previous, frozen=2, guidance=10.0)
    assert np.abs(guided[:2] - previous).max() < 0.5 * np.abs(free[:2] - previous).max()
    with pytest.raises(ValueError, match="guidance: expected a finite number > 0 .*, got 0"):
        policy.act(observation, previous=previous, guidance=0)
    for bad, message in [(np.zeros((5, 4)), r"^previous: expected finite raw actions \(n, 4\) with 1 <= n <= 4"),
                         (np.zeros((2, 3)), r"got float64 array \(2, 3\)"),
                         (np.array([[0, 0, np.nan, 0]]), r"^previous\[0, 2\]: expected a finite number, got nan"),
                         (np.full((2, 4), 1e4), r"^previous\[0, 0\]: expected a value in \[.*\] \(the training range "
                                                r"widened 10-fold\), got 1e\+04"),
                         ([[0.0, "a", 0.0, 0.0]], r"^previous\[0, 1\]: expected a number, got 'a'"),
                         ("abc", r"^previous: expected finite raw actions .*, got a string of 3 characters")]:
        with pytest.raises(ValueError, match=message):
            policy.act(observation, previous=bad)
    for frozen in (1.5, -1, 3, True):
        with pytest.raises(ValueError, match=rf"^frozen: expected an integer in 0..2 \(the previous actions given\), "
                                             rf"got {frozen!r}"):
            policy.act(observation, previous=previous, frozen=frozen)
    np.testing.assert_array_equal(policy.act(observation, previous=previous.astype(np.int64), frozen=np.int64(1)).shape,
                                  (4, 4))  # integer actions and numpy integers are numbers


def test_eval_runs_asynchronously_with_real_time_chunking(tmp_path):
    import json

    from test_evaluate import TRAINING_VARIATIONS, write_checkpoint

    from fastwam.cli import main as cli_main
    from fastwam.config import preset

    collection = {"suite": "metaworld", "benchmark_seed": 0, "variations": {"reach-v3": TRAINING_VARIATIONS},
                  "spec": {"tasks": ["reach-v3"], "image_size": 16, "cameras": ["corner3"], "shadows": False}}
    run_dir = write_checkpoint(tmp_path / "run", preset("tiny"), collection)
    out = tmp_path / "rtc.json"
    assert cli_main(["eval", "metaworld", "--checkpoint", str(run_dir), "--episodes", "1", "--tasks", "reach",
                     "--max-steps", "9", "--delay", "1", "--rtc-guidance", "10", "--threads", "1", "--quiet",
                     "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    task = result["tasks"]["reach-v3"]
    assert (result["delay"], result["rtc_guidance"]) == (1, 10.0)
    assert 0 <= task["mean_boundary_jump"] <= task["max_boundary_jump"] and task["mean_jerk"] >= 0
    with pytest.raises(SystemExit, match=r"--delay: expected 0..2 steps \(chunk 4 - execute 2\), got 3"):
        cli_main(["eval", "metaworld", "--checkpoint", str(run_dir), "--delay", "3", "--quiet"])
    with pytest.raises(SystemExit, match="--rtc-guidance: expected a finite number >= 0, got -1.0"):
        cli_main(["eval", "metaworld", "--checkpoint", str(run_dir), "--rtc-guidance", "-1", "--quiet"])
