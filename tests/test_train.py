"""Training: resume equivalence, atomic checkpoints, strict loading, the policy's units."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fastwam.config import preset
from fastwam.data.lerobot import LeRobotWriter, build_features
from fastwam.policy import Policy, RecedingHorizonController
from fastwam.train import build_trainer, latest_checkpoint, load_model, lr_factor

S = 16  # the tiny preset's image size


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two short episodes of a dot drifting right; action = its displacement, state = its position."""
    root = tmp_path_factory.mktemp("train") / "ds"
    features = build_features(10, {"corner3": (S, S)}, {"observation.state": list("xyzg"), "action": list("xyzg")})
    rng = np.random.default_rng(0)
    with LeRobotWriter(root, fps=10, features=features) as writer:
        for episode, task in enumerate(["reach the goal", "push the puck"]):
            n = 12
            x = np.linspace(2, 13, n)
            frames = np.zeros((n, S, S, 3), np.uint8)
            for t in range(n):
                frames[t, 6:10, int(x[t]) - 1:int(x[t]) + 2] = 255
            state = np.stack([x, np.full(n, episode), rng.normal(size=n), np.ones(n)], 1).astype(np.float32)
            action = np.stack([np.gradient(x), np.zeros(n), rng.normal(size=n), -np.ones(n)], 1).astype(np.float32)
            writer.add_episode(task, {"observation.state": state, "action": np.clip(action, -1, 1)},
                               {"observation.images.corner3": frames})
    return root


def tiny_config(steps=6, **train):
    cfg = preset("tiny")
    return cfg.replace(train=dataclasses.replace(cfg.train, steps=steps, log_every=1, checkpoint_every=3,
                                                 batch_size=4, warmup=2, **train))


@pytest.mark.parametrize("shift", [0, 2], ids=["plain", "random-shift"])
def test_resume_repeats_the_uninterrupted_loss_sequence(dataset, tmp_path, shift):
    cfg = tiny_config(augment_shift=shift)
    full = build_trainer(cfg, dataset, tmp_path / "full", progress=False).run()
    killed = build_trainer(cfg, dataset, tmp_path / "cut", progress=False)
    killed.run(until=3)  # stops right after the step-3 checkpoint, as a killed run would have
    resumed = build_trainer(cfg, dataset, tmp_path / "cut", progress=False)
    resumed.resume()
    assert resumed.step == 3
    rest = resumed.run()
    assert [m["loss"] for m in full[3:]] == [m["loss"] for m in rest]
    assert [m["step"] for m in rest] == [4, 5, 6]
    # the model weights after both runs are identical too
    a = load_file(latest_checkpoint(tmp_path / "full") / "model.safetensors")
    b = load_file(latest_checkpoint(tmp_path / "cut") / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_random_shift_reaches_the_loss(dataset, tmp_path):
    """Same seed, same batches and noise: only the shifted pixels can change the first loss."""
    plain = build_trainer(tiny_config(steps=1), dataset, tmp_path / "plain", progress=False).run()
    shifted = build_trainer(tiny_config(steps=1, augment_shift=3), dataset, tmp_path / "shift", progress=False).run()
    assert plain[0]["loss_action"] != shifted[0]["loss_action"]
    assert plain[0]["loss_video"] != shifted[0]["loss_video"]


def test_run_directory_layout_and_metrics(dataset, tmp_path):
    cfg = tiny_config(steps=6, ema=0.9)
    build_trainer(cfg, dataset, tmp_path / "run", progress=False).run()
    run = tmp_path / "run"
    steps = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert steps == ["step-0000003", "step-0000006"]  # no leftover temp directories
    ckpt = latest_checkpoint(run)
    for name in ("model.safetensors", "config.yaml", "stats.json", "data.json", "train_state.pt"):
        assert (ckpt / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) and r["loss"] == pytest.approx(r["loss_action"] + r["loss_video"]) for r in rows)
    assert (run / "loss.png").stat().st_size > 1000
    # the published weights are the EMA, not the raw weights
    state = torch.load(ckpt / "train_state.pt", weights_only=False)
    ema = load_file(ckpt / "model.safetensors")
    key = "action.head.head.weight"
    assert not torch.equal(ema[key], state["model"][key]) and torch.equal(ema[key], state["ema"][key])


def test_existing_run_needs_resume_flag(dataset, tmp_path):
    from fastwam.cli import main

    args = ["train", "--data", str(dataset), "--preset", "tiny", "--steps", "3", "--checkpoint-every", "3",
            "--batch-size", "2", "--out", str(tmp_path / "r")]
    assert main(args) == 0
    with pytest.raises(SystemExit, match="already holds checkpoints: pass --resume"):
        main(args)
    assert main(args + ["--resume"]) == 0  # nothing left to do, but it loads and finishes cleanly


def test_checkpoints_load_strictly(dataset, tmp_path):
    build_trainer(tiny_config(steps=3), dataset, tmp_path / "run", progress=False).run()
    ckpt = latest_checkpoint(tmp_path / "run")
    model, cfg = load_model(ckpt)
    assert cfg == tiny_config(steps=3)
    weights = load_file(ckpt / "model.safetensors")
    weights.pop("action.head.head.weight")
    weights["extra.weight"] = torch.zeros(1)
    save_file(weights, ckpt / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing \['action.head.head.weight'\], unexpected \['extra.weight'\]"):
        load_model(ckpt)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        latest_checkpoint(tmp_path)


def test_wrong_image_size_is_named(dataset, tmp_path):
    cfg = preset("small")
    with pytest.raises(ValueError, match=r"frames are 16x16 px, config data.image_size is 64"):
        build_trainer(cfg, dataset, tmp_path / "run", progress=False)


def test_lr_schedule_warms_up_then_decays_to_zero():
    values = [lr_factor(s, warmup=10, total=110) for s in range(110)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[9:], values[10:]))
    assert lr_factor(110, 10, 110) == pytest.approx(0.0)


def test_policy_returns_raw_units_and_controller_replans(dataset, tmp_path):
    build_trainer(tiny_config(steps=3), dataset, tmp_path / "run", progress=False).run()
    policy = Policy.from_checkpoint(tmp_path / "run")
    raw = np.random.default_rng(1).uniform(-1, 1, size=(1, policy.chunk, 4)).astype(np.float32)
    raw[..., 0] = np.linspace(0.5, 1.0, policy.chunk)  # inside the data range of dim 0
    normalized = policy.normalizer.normalize("action", torch.from_numpy(raw))
    seen = {}

    def fake_predict(context, state, text, **_):
        seen.update(context=context, state=state, text=text)
        return normalized.expand(context.shape[0], -1, -1)

    policy.model.predict_actions = fake_predict
    obs = {"image": np.zeros((S, S, 3), np.uint8), "state": np.array([7.5, 0, 0, 1], np.float32),
           "instruction": "reach the goal"}
    np.testing.assert_allclose(policy.act(obs), raw[0], atol=1e-6)
    # proprio is normalized on the way in: x in [2, 13] -> 7.5 is the middle of the range
    assert seen["state"][0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert seen["context"].shape == (1, 1, 48, 4, 4) and seen["text"].shape == (1, 1, 384)

    controller = RecedingHorizonController(policy, execute=3)
    observed = []
    actions = [controller.act(lambda: observed.append(1) or obs) for _ in range(7)]
    assert len(observed) == 3 and controller.chunks == 3  # replans at steps 0, 3, 6
    np.testing.assert_allclose(actions[3], raw[0, 0], atol=1e-6)

    with pytest.raises(ValueError, match=r"observation\['image'\]: expected uint8 \(\[B,\] 16, 16, 3\)"):
        policy.act({**obs, "image": np.zeros((S, 2 * S, 3), np.uint8)})
    with pytest.raises(KeyError, match="missing key 'instruction'"):
        policy.act({"image": obs["image"], "state": obs["state"]})


def test_history_policy_trains_and_the_controller_feeds_it_the_past_frames(dataset, tmp_path):
    cfg = tiny_config(steps=2)
    cfg = cfg.replace(model=dataclasses.replace(cfg.model, context_frames=2))
    history = build_trainer(cfg, dataset, tmp_path / "run", progress=False).run()
    assert len(history) == 2 and np.isfinite(history[-1]["loss"])
    policy = Policy.from_checkpoint(tmp_path / "run")
    r = policy.frame_stride
    assert (policy.history_frames, r) == (1, 2)
    image = lambda t: np.full((S, S, 3), 10 * t, np.uint8)  # frame t: gray level 10 t
    obs = lambda t: {"image": image(t), "state": np.zeros(4, np.float32), "instruction": "reach the goal"}
    contexts, acted = [], []
    predict, act = policy.model.predict_actions, policy.act
    policy.model.predict_actions = lambda context, *a, **k: contexts.append(context) or predict(context, *a, **k)
    policy.act = lambda observation: acted.append(observation) or act(observation)

    controller = RecedingHorizonController(policy, execute=2 * r)  # replans at 0, 4, 8; history every 2 steps
    observed = []
    for t in range(9):
        controller.act(lambda: observed.append(t) or obs(t))
    assert observed == [0, 2, 4, 6, 8] and controller.chunks == 3
    # at t = 0 the current frame repeats as its own past; later the frame r steps back is the history
    assert [int(o["history"][0, 0, 0, 0]) for o in acted] == [0, 20, 60]
    assert contexts[0].shape == (1, 2, 48, 4, 4) and torch.equal(contexts[0][:, 0], contexts[0][:, 1])
    assert not torch.equal(contexts[1][:, 0], contexts[1][:, 1])
    # the policy's context is [past, current]: the past of the replan at 8 is the frame seen at 6
    six = policy._inputs({**obs(6), "history": image(6)[None]})[0]
    assert torch.equal(contexts[2][:, 0], six[:, 1])

    with pytest.raises(ValueError, match=r"execute: 3 actions per chunk is not a multiple of the policy's frame stride 2"):
        RecedingHorizonController(policy, execute=3)
    with pytest.raises(KeyError, match="missing key 'history'"):
        act(obs(0))
    with pytest.raises(ValueError, match=r"observation\['history'\]: expected uint8 \(1, 16, 16, 3\).*got uint8 \(2, 16, 16, 3\)"):
        act({**obs(0), "history": np.stack([image(0), image(0)])})


def test_ema_warms_up_instead_of_keeping_the_initial_weights():
    from fastwam.train import EMA

    model = torch.nn.Linear(2, 2, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # first update: d = min(0.999, 1/10) = 0.1
    assert torch.allclose(ema.shadow["weight"], torch.full((2, 2), 0.9))
    for _ in range(2000):
        ema.update(model)
    assert ema.shadow["weight"].min() > 0.999  # with a fixed 0.999, 0.999**2001 = 13 % would still be zeros
