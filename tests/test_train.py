"""Training: resume equivalence, atomic checkpoints, strict loading, the policy's units."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fastwam.config import preset
from fastwam.data.lerobot import LeRobotDataset, LeRobotWriter, build_features
from fastwam.data.normalize import Normalizer
from fastwam.policy import Policy, RecedingHorizonController
from fastwam.checkpoint import write_checksums
from fastwam.train import build_trainer, latest_checkpoint, load_model, lr_factor

S = 16  # the tiny preset's image size


def write_dot_dataset(root, size: int, seed: int = 0, dark: bool = False):
    """Two short episodes of a dot drifting right; action = its displacement, state = its position
    (and a noise dimension drawn with ``seed``); ``dark``: a grey dot instead of a white one."""
    features = build_features(10, {"corner3": (size, size)}, {"observation.state": list("xyzg"), "action": list("xyzg")})
    rng = np.random.default_rng(seed)
    with LeRobotWriter(root, fps=10, features=features) as writer:
        for episode, task in enumerate(["reach the goal", "push the puck"]):
            n = 12
            x = np.linspace(2, size - 3, n)
            frames = np.zeros((n, size, size, 3), np.uint8)
            for t in range(n):
                frames[t, size // 2 - 2:size // 2 + 2, int(x[t]) - 1:int(x[t]) + 2] = 100 if dark else 255
            state = np.stack([x, np.full(n, episode), rng.normal(size=n), np.ones(n)], 1).astype(np.float32)
            action = np.stack([np.gradient(x), np.zeros(n), rng.normal(size=n), -np.ones(n)], 1).astype(np.float32)
            writer.add_episode(task, {"observation.state": state, "action": np.clip(action, -1, 1)},
                               {"observation.images.corner3": frames})
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dot_dataset(tmp_path_factory.mktemp("train") / "ds", S)


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


def test_a_signal_checkpoints_the_step_in_progress_and_resume_continues_from_it(dataset, tmp_path, monkeypatch, capsys):
    """SIGTERM mid-step (a scheduler's preemption): the step finishes, is checkpointed off the
    checkpoint grid (every 3) and the run stops with 128 + 15; --resume then repeats the
    uninterrupted run's losses. The handlers are the process's own again afterwards."""
    import os
    import signal

    from fastwam.cli import main as cli_main
    from fastwam.train import Trainer

    args = ["train", "--data", str(dataset), "--preset", "tiny", "--steps", "6", "--batch-size", "4",
            "--checkpoint-every", "3", "--seed", "0"]
    assert cli_main([*args, "--out", str(tmp_path / "full")]) == 0
    step = Trainer.train_step

    def preempted_during_step_4(self):
        if self.step == 3:  # the fourth step
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", preempted_during_step_4)
    before = signal.getsignal(signal.SIGTERM)
    assert cli_main([*args, "--out", str(tmp_path / "cut")]) == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    assert "stopped by SIGTERM at step 4" in capsys.readouterr().err
    assert latest_checkpoint(tmp_path / "cut").name == "step-0000004"
    monkeypatch.setattr(Trainer, "train_step", step)
    assert cli_main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    full, cut = ({row["step"]: row["loss"] for row in map(json.loads, lines)}
                 for lines in ((tmp_path / run / "metrics.jsonl").read_text().splitlines() for run in ("full", "cut")))
    assert 4 in cut and cut[5] == full[5] and cut[6] == full[6]  # the stopped step logged; then as the whole run
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
    state = torch.load(ckpt / "train_state.pt", weights_only=True)  # plain tensors and containers
    ema = load_file(ckpt / "model.safetensors")
    key = "action.head.head.weight"
    assert not torch.equal(ema[key], state["model"][key]) and torch.equal(ema[key], state["ema"][key])


def test_keep_checkpoints_sets_how_many_a_run_keeps_and_a_resume_keeps_its_setting(dataset, tmp_path):
    from fastwam.cli import main

    run = tmp_path / "run"
    train = ["train", "--data", str(dataset), "--preset", "tiny", "--batch-size", "4", "--checkpoint-every", "2",
             "--out", str(run)]
    kept = lambda: sorted(p.name for p in (run / "checkpoints").iterdir())  # noqa: E731
    assert main([*train, "--steps", "4", "--keep-checkpoints", "0"]) == 0
    assert kept() == ["step-0000002", "step-0000004"]
    assert main([*train, "--steps", "6", "--resume"]) == 0  # no flag: the run's own setting, not the default 2
    assert kept() == ["step-0000002", "step-0000004", "step-0000006"]
    assert main([*train, "--steps", "8", "--resume", "--keep-checkpoints", "1"]) == 0
    assert kept() == ["step-0000008"]


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
    with pytest.raises(ValueError, match=r"model.safetensors: damaged \(SHA-256"):  # the checksum sees it first
        load_model(ckpt)
    write_checksums(ckpt)  # as if the file had been written so
    with pytest.raises(ValueError, match=r"missing \['action.head.head.weight'\], unexpected \['extra.weight'\]"):
        load_model(ckpt)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        latest_checkpoint(tmp_path)


def test_wrong_image_size_is_named(dataset, tmp_path):
    cfg = preset("small")
    with pytest.raises(ValueError, match=r"frames are 16x16 px, config data.image_size is 64; set data.image_size "
                                         r"and model.latent_height/latent_width .*fastwam dataset check"):
        build_trainer(cfg, dataset, tmp_path / "run", progress=False)


def test_wrong_action_dim_names_the_config_key(dataset, tmp_path):
    cfg = tiny_config()
    cfg = cfg.replace(model=dataclasses.replace(cfg.model, action_dim=7))
    with pytest.raises(ValueError, match=r"feature 'action' has shape \(4,\), the model expects \(7,\): set model.action_dim"):
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


def test_noise_scale_sets_the_sampling_temperature(dataset, tmp_path):
    build_trainer(tiny_config(steps=3), dataset, tmp_path / "run", progress=False).run()
    obs = {"image": np.full((S, S, 3), 90, np.uint8), "state": np.array([7.5, 0, 0, 1], np.float32),
           "instruction": "reach the goal"}
    act = lambda seed, **kw: Policy.from_checkpoint(tmp_path / "run", seed=seed, **kw).act(obs)
    # scale 1 is the model's own sampling: the same noise stream as predict_actions with that seed
    policy = Policy.from_checkpoint(tmp_path / "run", seed=3)
    context, state, text, _ = policy._inputs(obs)
    expected = policy.model.predict_actions(context, state, text, generator=torch.Generator().manual_seed(3))
    expected = policy.normalizer.unnormalize("action", expected).numpy()[0]
    np.testing.assert_allclose(act(3), expected, atol=1e-6)
    assert not np.allclose(act(3), act(4))
    # scale 0 integrates from zero noise: the seed no longer matters, and it is the noise=0 sample
    zero = policy.model.predict_actions(context, state, text, noise=torch.zeros(1, policy.chunk, 4))
    np.testing.assert_allclose(act(3, noise_scale=0.0), act(4, noise_scale=0.0), atol=1e-6)
    np.testing.assert_allclose(act(3, noise_scale=0.0), policy.normalizer.unnormalize("action", zero).numpy()[0],
                               atol=1e-6)
    # in between, a sample lies nearer the zero-noise one than the full-temperature sample does
    half, full, centre = act(3, noise_scale=0.25), act(3), act(3, noise_scale=0.0)
    assert np.abs(half - centre).mean() < np.abs(full - centre).mean()
    with pytest.raises(ValueError, match="noise_scale: expected a number in 0..10, got -1"):
        act(3, noise_scale=-1.0)


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


def test_fold_pad_marks_a_latent_frame_that_shows_any_frame_past_the_end():
    from fastwam.train import fold_pad

    pixel = np.array([[0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 1, 1, 1, 1, 1]], bool)
    assert fold_pad(pixel, 4).tolist() == [[False, False, False], [False, False, True], [False, True, True]]
    assert fold_pad(pixel, 1).tolist() == pixel.tolist()
    with pytest.raises(ValueError, match=r"frame_pad: expected \(S, 1 \+ 4\*F\) pixel-frame flags, got \(3, 8\)"):
        fold_pad(pixel[:, :8], 4)


def test_wan22_codec_trains_on_cached_clip_latents_and_imagines_pixel_frames(tmp_path, tiny_wan_dir, monkeypatch):
    """The paper's codec path on a tiny random Wan2.2 VAE: 9-frame clips (stride 1) -> 3 latent frames."""
    import fastwam.train
    from fastwam.codecs import build_codec, frames_to_unit
    from fastwam.config import CodecConfig
    from fastwam.data.windows import ChunkDataset

    size = 32  # 16x spatial: 2x2 latents
    root = write_dot_dataset(tmp_path / "ds", size)
    cfg = tiny_config(steps=3)
    codec_cfg = CodecConfig(name="wan22", factor=16, path=str(tiny_wan_dir))
    cfg = cfg.replace(model=dataclasses.replace(cfg.model, latent_height=2, latent_width=2, chunk=8),
                      data=dataclasses.replace(cfg.data, image_size=size, frame_stride=1, codec=codec_cfg))
    trainer = build_trainer(cfg, root, tmp_path / "run", progress=False)
    history = trainer.run()
    assert [m["step"] for m in history] == [1, 2, 3] and all(np.isfinite(m["loss_video"]) for m in history)

    # One clip per sample: the window's 9 frames t .. t + 8 encoded together, as the VAE sees a video.
    data, codec = trainer.data, build_codec(codec_cfg)
    assert data.latents.shape == (24 * 3, 48, 2, 2) and data.latent_rows.shape == (24, 3)
    windows = ChunkDataset(root, chunk=8, frame_stride=1, future_frames=8)
    for i in (0, 5, 11):  # inside the episode, the last full window, and one that runs past the end
        frames = frames_to_unit(windows[i]["frames"])[None]  # (1, 9, 3, 32, 32)
        expected = codec.encode(frames)[0]  # (3, 48, 2, 2)
        assert torch.allclose(data.latents[data.latent_rows[i]].float(), expected, atol=2e-2, rtol=1e-2)
    assert data.latent_pad[[0, 3, 4, 11]].tolist() == [[False] * 3, [False] * 3, [False, False, True], [False, True, True]]

    # The cache is read, not re-encoded, by the next run on the same data and codec.
    monkeypatch.setattr(fastwam.train, "build_codec", lambda *a, **k: pytest.fail("re-encoded a cached clip"))
    again = build_trainer(cfg, root, tmp_path / "run2", progress=False).data
    assert torch.equal(again.latents, data.latents)
    assert len(list((root / "cache").glob("clips-wan22-*.npy"))) == 1 and not list((root / "cache").glob("*.tmp.npy"))
    monkeypatch.undo()

    # The policy encodes the current frame alone (the clip's first latent frame) and decodes the
    # imagined latents after it: 2 latent frames -> 8 pixel frames, one per env step.
    policy = Policy.from_checkpoint(tmp_path / "run")
    obs = {"image": windows[0]["frames"][0].permute(1, 2, 0).numpy(), "state": np.zeros(4, np.float32),
           "instruction": "reach the goal"}
    context = policy._inputs(obs)[0]
    assert torch.allclose(context[0, 0], data.latents[data.latent_rows[0, 0]].float(), atol=2e-2, rtol=1e-2)
    assert policy.act(obs).shape == (8, 4)
    imagined = policy.imagine(obs)
    assert imagined.shape == (8, size, size, 3) and imagined.dtype == np.uint8


# -- trust: resume, checkpoints and arguments ----------------------------------------------------

class Payload:
    """Unpickling this runs code: what a crafted train_state.pt would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_resume_never_unpickles_and_falls_back_past_a_damaged_checkpoint(dataset, tmp_path, capsys):
    cfg = tiny_config(steps=6)
    build_trainer(cfg, dataset, tmp_path / "run", progress=False).run(until=6)  # checkpoints 3 and 6
    newest = latest_checkpoint(tmp_path / "run")
    marker = tmp_path / "pwned"
    torch.save({"step": 6, "model": Payload(marker)}, newest / "train_state.pt")
    write_checksums(newest)  # even with a matching checksum, nothing is unpickled
    resumed = build_trainer(cfg, dataset, tmp_path / "run", progress=False, resume=True)
    assert not marker.exists() and resumed.step == 3
    assert "step-0000006/train_state.pt: unreadable (UnpicklingError" in capsys.readouterr().err
    (newest / "train_state.pt").write_bytes(b"truncated")  # damaged, checksum not updated
    assert build_trainer(cfg, dataset, tmp_path / "run", progress=False, resume=True).step == 3
    assert "step-0000006/train_state.pt: damaged (SHA-256" in capsys.readouterr().err
    oldest = sorted((tmp_path / "run" / "checkpoints").iterdir())[0]
    (oldest / "train_state.pt").unlink()
    with pytest.raises(ValueError, match=r"no checkpoint to resume from \(.*step-0000006.* damaged.*step-0000003"):
        build_trainer(cfg, dataset, tmp_path / "run", progress=False, resume=True)


def test_metrics_hold_each_step_once_after_a_resume(dataset, tmp_path):
    cfg = tiny_config(steps=6)
    build_trainer(cfg, dataset, tmp_path / "run", progress=False).run(until=5)  # killed after step 5; checkpoint 3
    build_trainer(cfg, dataset, tmp_path / "run", progress=False, resume=True).run()
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_changed_settings_unless_allowed_and_records_what_ran(dataset, tmp_path):
    from fastwam.cli import main
    from fastwam.config import Config

    base = ["train", "--data", str(dataset), "--preset", "tiny", "--steps", "3", "--checkpoint-every", "3",
            "--batch-size", "2", "--lr", "0.001", "--out", str(tmp_path / "r")]
    assert main(base) == 0
    changed = base + ["--steps", "4", "--resume", "--lr", "0.5", "--batch-size", "3", "--seed", "7"]
    with pytest.raises(SystemExit, match=r"trained with other settings than asked \(train.batch_size 2 -> 3, "
                                         r"train.lr 0.001 -> 0.5, train.seed 0 -> 7\); pass --allow-changes"):
        main(changed)
    assert Config.load(tmp_path / "r" / "config.yaml").train.lr == 0.001  # the refused run wrote nothing
    with pytest.raises(SystemExit, match=r"another model than the one requested \(variant.mask 'fastwam' -> 'joint', "
                                         r"variant.inference 'action_only' -> 'joint'\)"):
        main(base + ["--steps", "4", "--resume", "--variant", "joint"])
    assert main(changed + ["--allow-changes"]) == 0
    ran = Config.load(latest_checkpoint(tmp_path / "r") / "config.yaml").train
    assert (ran.lr, ran.batch_size, ran.seed, ran.steps) == (0.5, 3, 7, 4)
    row = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 4 and row["lr"] == pytest.approx(0.5 * lr_factor(4, 5, 4))  # the new rate really ran


def test_resume_refuses_other_data(dataset, tmp_path):
    from fastwam.cli import main

    run = ["train", "--preset", "tiny", "--steps", "3", "--checkpoint-every", "1", "--batch-size", "2",
           "--out", str(tmp_path / "r")]
    assert main(run + ["--data", str(dataset), "--steps", "2"]) == 0
    recorded = json.loads((latest_checkpoint(tmp_path / "r") / "data.json").read_text())["dataset_sha256"]
    assert recorded == LeRobotDataset(dataset).content_sha256()
    other = write_dot_dataset(tmp_path / "other", S, seed=1)  # the same frames, other noise in the vectors
    with pytest.raises(SystemExit, match=rf"data.json trained on other data \(dataset_sha256 {recorded[:16]}"):
        main(run + ["--data", str(other), "--resume"])
    assert main(run + ["--data", str(dataset), "--resume"]) == 0  # its own data resumes


@pytest.mark.parametrize("option, value, message", [
    ("--batch-size", "0", "train.batch_size must be an integer >= 1, got 0"),
    ("--checkpoint-every", "0", "train.checkpoint_every must be an integer >= 1, got 0"),
    ("--keep-checkpoints", "-1", r"train.keep_checkpoints must be an integer >= 0 \(0: every one\), got -1"),
    ("--steps", "-5", "train.steps must be an integer >= 1, got -5"),
    ("--ema", "2", r"train.ema must be in \[0, 1\)"),
    ("--lr", "nan", "train.lr must be a finite number > 0, got nan"),
])
def test_bad_arguments_are_refused_in_one_line_before_any_work(tmp_path, option, value, message):
    from fastwam.cli import main

    with pytest.raises(SystemExit, match=f"^fastwam train: {message}"):  # before the (missing) dataset is read
        main(["train", "--data", str(tmp_path / "no-such-data"), "--preset", "tiny", option, value,
              "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit, match="^fastwam train: .*no-such-data"):
        main(["train", "--data", str(tmp_path / "no-such-data"), "--preset", "tiny", "--out", str(tmp_path / "r")])


def test_normalization_is_chosen_per_feature_in_the_config(dataset, tmp_path):
    cfg = tiny_config(steps=1)
    cfg = cfg.replace(data=dataclasses.replace(cfg.data, action_normalization="quantiles",
                                               state_normalization="mean_std"))
    trainer = build_trainer(cfg, dataset, tmp_path / "run", progress=False)
    trainer.run()
    saved = json.loads((latest_checkpoint(tmp_path / "run") / "stats.json").read_text())
    assert saved["modes"] == {"observation.state": "mean_std", "action": "quantiles"}
    assert "q01" in saved["stats"]["action"] and "q99" in saved["stats"]["action"]
    with pytest.raises(ValueError, match=r"data.action_normalization must be min_max\|mean_std\|quantiles, got 'zscore'"):
        dataclasses.replace(cfg.data, action_normalization="zscore")


def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_keeps_finite_checkpoints(dataset, tmp_path):
    from fastwam.cli import main

    out = tmp_path / "r"
    with pytest.raises(SystemExit, match=r"^fastwam train: step (\d+): the loss diverged \(loss (nan|inf).*; training "
                                         r"stopped before applying it and its newest checkpoint, .*step-\d{7}, holds "
                                         r"finite weights") as stopped:
        main(["train", "--data", str(dataset), "--preset", "tiny", "--steps", "40", "--checkpoint-every", "1",
              "--keep-checkpoints", "0", "--batch-size", "2", "--lr", "1e10", "--out", str(out)])
    diverged = int(str(stopped.value).split()[3][:-1])
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert [int(c.name[5:]) for c in checkpoints] == list(range(1, diverged))  # every finite step, none after
    for checkpoint in checkpoints:
        assert all(torch.isfinite(t).all() for t in load_file(checkpoint / "model.safetensors").values())
    load_model(checkpoints[-1])  # the last finite checkpoint loads and verifies


def test_one_writer_per_run_directory(dataset, tmp_path):
    from fastwam.checkpoint import run_lock
    from fastwam.cli import main

    out = tmp_path / "r"
    argv = ["train", "--data", str(dataset), "--preset", "tiny", "--steps", "2", "--batch-size", "2", "--out", str(out)]
    with run_lock(out):  # another run holds it
        with pytest.raises(SystemExit, match=rf"^fastwam train: {out}: another fastwam train is writing this run "
                                             rf"\(pid {os.getpid()} on .* since .*; {out}/train.lock\)"):
            main(argv)
    assert not (out / "checkpoints").exists()
    assert main(argv) == 0  # released: the lock dies with its holder


def test_a_lock_held_by_another_process_is_refused_and_released_by_its_death(dataset, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", f"from fastwam.checkpoint import run_lock\nimport time\n"
                               f"with run_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from fastwam.checkpoint import run_lock

        with pytest.raises(ValueError, match=rf"another fastwam train is writing this run \(pid {holder.pid} "):
            with run_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(out):  # killed (as by kill -9): no stale lock
        pass


def test_resume_verifies_the_weights_and_falls_back_past_altered_ones(dataset, tmp_path, capsys):
    cfg = tiny_config(steps=6)
    build_trainer(cfg, dataset, tmp_path / "run", progress=False).run(until=6)  # checkpoints 3 and 6
    weights = latest_checkpoint(tmp_path / "run") / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # one byte of a tensor altered, checksums.json not updated
    weights.write_bytes(bytes(data))
    assert build_trainer(cfg, dataset, tmp_path / "run", progress=False, resume=True).step == 3
    assert "--resume: skipping a damaged checkpoint: " in (err := capsys.readouterr().err)
    assert "step-0000006/model.safetensors: damaged (SHA-256" in err


def test_out_inside_data_and_a_resume_past_its_steps_are_refused(dataset, tmp_path):
    from fastwam.cli import main

    base = ["train", "--data", str(dataset), "--preset", "tiny", "--batch-size", "2"]
    with pytest.raises(SystemExit, match=r"^fastwam train: --out .*/meta: inside the dataset --data"):
        main(base + ["--steps", "2", "--out", str(dataset / "meta")])
    with pytest.raises(SystemExit, match=r"inside the dataset --data"):
        main(base + ["--steps", "2", "--out", str(dataset)])
    assert main(base + ["--steps", "3", "--checkpoint-every", "3", "--out", str(tmp_path / "r")]) == 0
    with pytest.raises(SystemExit, match=r"^fastwam train: --steps 2: .* is already at step 3 .*; pass the run's --steps"):
        main(base + ["--steps", "2", "--resume", "--out", str(tmp_path / "r")])


@pytest.mark.parametrize("yaml_text, message", [
    ("model:\n  layers: 2.5\n", r"model.layers: expected an integer, got 2.5"),
    ("model:\n  variant:\n    video_weight: .inf\n", r"model.variant.video_weight: expected a finite number, got inf"),
    ("model:\n  action_flow:\n    shift: .nan\n", r"model.action_flow.shift: expected a finite number, got nan"),
    ("train:\n  warmup: .inf\n", r"train.warmup: expected an integer, got inf"),
    ("train:\n  seed: 1.5\n", r"train.seed: expected an integer, got 1.5"),
    ("train:\n  steps: '4'\n", r"train.steps: expected an integer, got '4'"),
    ("train:\n  activation_checkpointing: 1\n", r"train.activation_checkpointing: expected true or false, got 1"),
    ("data:\n  cameras: corner3\n", r"data.cameras: expected a list, got 'corner3'"),
])
def test_yaml_values_are_checked_against_their_field_types(tmp_path, yaml_text, message):
    from fastwam.config import Config

    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ValueError, match=message):
        Config.load(path)


def test_yaml_numbers_written_without_a_dot_are_numbers(tmp_path):
    from fastwam.config import Config

    path = tmp_path / "lr.yaml"
    path.write_text("train:\n  lr: 3e-4\n  weight_decay: 0\n")  # PyYAML reads 3e-4 as text
    train = Config.load(path).train
    assert train.lr == 3e-4 and isinstance(train.weight_decay, float)


def test_the_latent_cache_follows_the_frames_it_encodes(tmp_path):
    """Frames replaced in place (same count, same names) are encoded anew, not served from the old cache."""
    import shutil

    from fastwam.train import load_training_data

    root = write_dot_dataset(tmp_path / "ds", S)
    cfg = tiny_config(steps=1)
    normalizer = Normalizer.from_dataset(LeRobotDataset(root))
    white = load_training_data(cfg, LeRobotDataset(root), normalizer, progress=False).latents
    dark = write_dot_dataset(tmp_path / "dark", S, dark=True)
    shutil.rmtree(root / "videos")
    shutil.copytree(dark / "videos", root / "videos")
    shutil.copy(dark / "meta/checksums.json", root / "meta/checksums.json")
    again = load_training_data(cfg, LeRobotDataset(root), normalizer, progress=False).latents
    expected = load_training_data(cfg, LeRobotDataset(dark), normalizer, progress=False).latents
    assert not torch.equal(again, white) and torch.equal(again, expected)
