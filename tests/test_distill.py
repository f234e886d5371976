"""Few-step action sampling: the sampler options (steps, timestep shift) and the distilled student."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from fastwam.cli import main
from fastwam.config import Config, preset
from fastwam.evaluate import sampler_line
from fastwam.model import WAM, flow
from fastwam.policy import Policy
from fastwam.train import build_trainer, latest_checkpoint
from test_train import tiny_config, write_dot_dataset

S = 16


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    data = write_dot_dataset(root / "ds", S)
    build_trainer(tiny_config(steps=3), data, root / "teacher", progress=False).run()
    return data, root / "teacher"


def test_student_sigmas_are_every_smaller_samplers_grid():
    assert flow.student_sigmas(1, 5.0) == [1.0]
    two = flow.student_sigmas(2, 5.0)
    assert two == pytest.approx([1.0, 5 * 0.5 / (1 + 4 * 0.5)])
    assert flow.student_sigmas(3, 1.0) == pytest.approx([1.0, 2 / 3, 0.5, 1 / 3])  # 1, 2 and 3 steps, shared 1.0 once


def _non_trivial_teacher(cfg) -> WAM:
    """A teacher whose 4-step sampler bends: random weights everywhere, output heads included."""
    torch.manual_seed(0)
    teacher = WAM(cfg)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return teacher.eval()


def test_distillation_teaches_one_step_to_land_on_the_teachers_sample():
    cfg = preset("tiny").model
    teacher = _non_trivial_teacher(cfg)
    student = WAM(dataclasses.replace(cfg, action_flow=dataclasses.replace(cfg.action_flow, steps=1)))
    student.load_state_dict(teacher.state_dict())
    g = torch.Generator().manual_seed(1)
    batch = cfg.fake_batch(8, generator=g)

    def error(model, steps):
        noise = torch.randn(batch.actions.shape, generator=torch.Generator().manual_seed(99))
        with torch.no_grad():
            target = teacher.sample_actions(teacher.prefill(batch.context, batch.state, batch.text), noise, 4)
            sample = model.sample_actions(model.prefill(batch.context, batch.state, batch.text), noise, steps)
        return (sample - target).pow(2).mean().item()

    before = error(student, 1)
    assert before > 1e-3  # the teacher's path bends: one Euler step of it misses its own sample

    loss = student.distillation_loss(batch, teacher, generator=g).total
    loss.backward()
    assert all(p.grad is None for p in student.video.parameters())  # one prefill, action-expert gradients only
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.action.parameters())

    optimizer = torch.optim.Adam(student.action.parameters(), lr=3e-3)
    for _ in range(150):
        optimizer.zero_grad()
        student.distillation_loss(batch, teacher, generator=g).total.backward()
        optimizer.step()
    after = error(student, 1)  # on a noise never trained on
    assert after < 0.2 * before, (before, after)


@pytest.mark.parametrize("variant", ["joint", "dual"])
def test_joint_and_dual_have_no_one_action_sampler_to_distil(variant, teacher_run, tmp_path):
    cfg = preset("tiny").with_variant(variant).model
    model = WAM(cfg)
    with pytest.raises(ValueError, match=f"variant {variant!r} has no one action sampler"):
        model.distillation_loss(cfg.fake_batch(2), model)
    with pytest.raises(ValueError, match=f"train.distill_from: .*got variant {variant!r}"):
        tiny_config().with_variant(variant).replace(
            train=dataclasses.replace(tiny_config().train, distill_from=str(teacher_run[1])))


def test_idm_samples_its_video_with_the_video_steps_when_the_action_steps_are_few():
    cfg = preset("tiny").with_variant("idm").model
    cfg = dataclasses.replace(cfg, action_flow=dataclasses.replace(cfg.action_flow, steps=1))
    model = WAM(cfg).eval()
    calls = {"future": 0, "action": 0}
    future, action = model.future_velocity, model.action_velocity

    def count(name, fn):
        def wrapped(*args):
            calls[name] += 1
            return fn(*args)
        return wrapped

    model.future_velocity, model.action_velocity = count("future", future), count("action", action)
    batch = cfg.fake_batch(2)
    model.predict_actions(batch.context, batch.state, batch.text)
    assert calls == {"future": cfg.video_flow.steps, "action": 1}
    calls.update(future=0, action=0)
    model.predict_actions(batch.context, batch.state, batch.text, steps=2)  # an explicit count: the actions'
    assert calls == {"future": cfg.video_flow.steps, "action": 2}


def test_train_distill_from_makes_a_student_of_the_teacher(teacher_run, tmp_path):
    data, teacher = teacher_run
    out = tmp_path / "student"
    assert main(["train", "--data", str(data), "--distill-from", str(teacher), "--student-steps", "1",
                 "--steps", "4", "--out", str(out)]) == 0
    checkpoint = latest_checkpoint(out)
    teacher_checkpoint = latest_checkpoint(teacher)
    cfg, teacher_cfg = Config.load(checkpoint / "config.yaml"), Config.load(teacher_checkpoint / "config.yaml")
    assert cfg.model.action_flow.steps == 1 and teacher_cfg.model.action_flow.steps == 4  # recorded in the checkpoint
    assert dataclasses.replace(cfg.model, action_flow=teacher_cfg.model.action_flow) == teacher_cfg.model
    assert cfg.train.distill_from == str(teacher_checkpoint.resolve()) and cfg.train.steps == 4
    assert (checkpoint / "stats.json").read_text() == (teacher_checkpoint / "stats.json").read_text()

    student, original = load_file(checkpoint / "model.safetensors"), load_file(teacher_checkpoint / "model.safetensors")
    video = [k for k in student if k.startswith("video.")]
    action = [k for k in student if k.startswith("action.")]
    assert video and action and len(video) + len(action) == len(student)
    assert all(torch.equal(student[k], original[k]) for k in video)  # prefill and cache unchanged
    assert not all(torch.equal(student[k], original[k]) for k in action)
    losses = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(m["loss_video"] == 0 and m["loss"] == m["loss_action"] > 0 for m in losses)

    policy = Policy.from_checkpoint(out)
    assert policy.model.cfg.action_flow.steps == 1  # samples in its trained count by default

    trainer = build_trainer(cfg, data, tmp_path / "again", progress=False)
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in trainer.model.action.parameters()}  # the video expert is not optimized
    assert trainer.step_fn.teacher.video is trainer.model.video  # one copy of it


def test_a_distillation_resumes_with_its_own_teacher(teacher_run, tmp_path):
    data, teacher = teacher_run
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = ["train", "--data", str(data), "--distill-from", str(teacher), "--student-steps", "1", "--steps", "6"]
    assert main([*args, "--out", str(whole)]) == 0
    assert main([*args[:-1], "3", "--out", str(cut)]) == 0
    # resumed without repeating the teacher: the run's config names it
    with pytest.raises(SystemExit, match="is a distillation: the student is the teacher's model; --variant cannot"):
        main(["train", "--data", str(data), "--steps", "6", "--out", str(cut), "--resume", "--variant", "idm"])
    assert main(["train", "--data", str(data), "--steps", "6", "--out", str(cut), "--resume"]) == 0
    losses = [[json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
              for run in (whole, cut)]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    with pytest.raises(SystemExit, match="--student-steps 2 asks otherwise"):
        main([*args, "--student-steps", "2", "--out", str(cut), "--resume"])


@pytest.mark.parametrize("extra, message", [
    (["--preset", "tiny"], "--preset cannot change it"),
    (["--variant", "idm"], "--variant cannot change it"),
    (["--student-steps", "4"], "fewer than the teacher's 4 action steps"),
    (["--student-steps", "0"], "expected >= 1 action steps, got 0"),
    (["--recompute-stats"], "keeps its teacher's normalization"),
])
def test_distill_from_refuses_what_would_not_be_a_student(teacher_run, tmp_path, extra, message):
    data, teacher = teacher_run
    with pytest.raises(SystemExit, match=f"^fastwam train: .*{message}"):
        main(["train", "--data", str(data), "--distill-from", str(teacher), "--out", str(tmp_path / "s"), *extra])
    assert not (tmp_path / "s" / "checkpoints").exists()


def test_student_steps_needs_distill_from(tmp_path):
    with pytest.raises(SystemExit, match="--student-steps applies to --distill-from only"):
        main(["train", "--data", str(tmp_path), "--student-steps", "2", "--out", str(tmp_path / "s")])


def test_action_shift_is_a_sampling_option(teacher_run):
    _, teacher = teacher_run
    plain, uniform = Policy.from_checkpoint(teacher), Policy.from_checkpoint(teacher, action_shift=1.0)
    assert plain.model.cfg.action_flow.shift == 5.0 and uniform.model.cfg.action_flow.shift == 1.0
    assert uniform.cfg.model == uniform.model.cfg  # what the policy reports (serve's metadata) is what it samples
    assert torch.equal(plain.model.action.head.head.weight, uniform.model.action.head.head.weight)
    batch = plain.model.cfg.fake_batch(2, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(batch.actions.shape, generator=torch.Generator().manual_seed(1))
    a = plain.model.predict_actions(batch.context, batch.state, batch.text, noise=noise)
    b = uniform.model.predict_actions(batch.context, batch.state, batch.text, noise=noise)
    assert not torch.allclose(a, b)  # other sigmas visited, other actions
    with pytest.raises(ValueError, match="action_shift: expected a finite number > 0, got 0"):
        Policy.from_checkpoint(teacher, action_shift=0.0)


def test_sampler_line_says_when_the_count_is_not_the_trained_one():
    summary = {"mode": "action_only", "denoise_steps": 10, "trained_steps": 2, "action_shift": 5.0,
               "distilled_from": "runs/t/checkpoints/step-0006000"}
    line = sampler_line(summary)
    assert "10 action steps, shift 5" in line and "distilled from runs/t" in line
    assert "NOTE: the checkpoint was trained for 2 steps" in line
    assert "NOTE" not in sampler_line(summary | {"denoise_steps": 2})
    assert sampler_line({"mode": "joint", "denoise_steps": 10}) == "sampler: joint, 10 action steps"  # older records
