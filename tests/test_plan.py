"""``fastwam plan``: per-GPU training memory against the model built on the meta device."""

import dataclasses

import pytest
import torch

from fastwam.cli import main as cli_main
from fastwam.config import preset
from fastwam.model import WAM
from fastwam.plan import STEP_TERM, activations_gb, measure, plan, recommend


@pytest.fixture(scope="module")
def wan():
    cfg = preset("wan22-5b")
    with torch.device("meta"):
        model = WAM(cfg.model)
    return cfg, model


def test_the_exact_terms_are_the_meta_models(wan):
    cfg, model = wan
    P = sum(p.numel() for p in model.parameters())
    ddp = plan(cfg, "wan22-5b", 8, 80, "ddp", False)
    fsdp = plan(cfg, "wan22-5b", 8, 80, "fsdp", False)
    assert ddp.parameters == fsdp.parameters == P and 5.9e9 < P < 6.1e9
    assert ddp.terms_gb["parameters (fp32)"] == round(4 * P / 1e9, 3)
    assert fsdp.terms_gb["parameters (fp32)"] == round(4 * P / 8 / 1e9, 3)
    assert fsdp.terms_gb["AdamW moments (fp32 x 2)"] == round(8 * P / 8 / 1e9, 3)
    blocks = sum(p.numel() for expert in (model.video, model.action) for p in expert.blocks.parameters())
    assert fsdp.terms_gb["gathered root (embeddings, heads; compute dtype)"] == round(2 * (P - blocks) / 1e9, 3)  # bf16
    assert fsdp.terms_gb["gathered blocks (2 layers, compute dtype)"] == round(2 * 2 * blocks / 30 / 1e9, 3)
    zero2 = plan(cfg, "wan22-5b", 8, 80, "zero2", False)
    assert zero2.terms_gb["gathered weights (whole model, compute dtype)"] == round(2 * P / 1e9, 3)
    assert zero2.terms_gb["gradients (fp32)"] == round(4 * P / 8 / 1e9, 3)
    assert not ddp.fits and ddp.total_gb > 80  # 6 B parameters with AdamW do not fit one 80 GB GPU unsharded
    ema = cfg.replace(train=dataclasses.replace(cfg.train, ema=0.999))
    assert plan(ema, "wan22-5b", 8, 80, "ddp", False).terms_gb["EMA (fp32, full copy)"] == round(4 * P / 1e9, 3)
    assert plan(ema, "wan22-5b", 8, 80, "fsdp", False).terms_gb["EMA (fp32, sharded)"] == round(4 * P / 8 / 1e9, 3)
    with pytest.raises(ValueError, match="--strategy fsdp: sharding needs several GPUs"):
        plan(cfg, "wan22-5b", 1, 80, "fsdp", False)


def test_the_recommendation_fits_and_checkpointing_shrinks_the_activation_estimate(wan):
    cfg, _ = wan
    best = recommend(cfg, "wan22-5b", 8, 80)
    assert best.fits and best.strategy != "ddp"
    assert activations_gb(cfg, 8, True, 2) < activations_gb(cfg, 8, False, 2) / 5
    tight = recommend(cfg, "wan22-5b", 8, 24)
    assert (tight.strategy, tight.activation_checkpointing) == ("fsdp", True)
    one = recommend(preset("small"), "small", 1, 2)  # one GPU: never a sharded strategy
    assert one.strategy == "ddp"


def test_the_peak_is_the_optimizer_step_or_the_backward_pass_whichever_holds_more(wan):
    cfg, _ = wan
    seen = set()
    for checkpointing, batch in ((True, 8), (False, 64)):
        p = plan(cfg, "wan22-5b", 1, 141, "ddp", checkpointing, batch)
        held = p.terms_gb["parameters (fp32)"] + p.terms_gb["gradients (fp32)"] + p.terms_gb["AdamW moments (fp32 x 2)"]
        activations = next(v for k, v in p.terms_gb.items() if k.startswith("activations"))
        step = p.terms_gb[STEP_TERM]
        assert step == pytest.approx(4 * p.parameters / 1e9, abs=1e-3)
        assert p.total_gb == pytest.approx(held + max(activations, step), abs=2e-3)
        seen.add("step" if step > activations else "backward")
    assert seen == {"step", "backward"}  # both regimes occur: the peak is not a plain sum of the terms
    fsdp = plan(cfg, "wan22-5b", 8, 80, "fsdp", True, 8)
    assert fsdp.terms_gb[STEP_TERM] == pytest.approx(4 * fsdp.parameters / 8 / 1e9, abs=1e-3)


def test_command_line(capsys):
    assert cli_main(["plan", "--preset", "wan22-5b", "--gpus", "8", "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    assert "(recommended)" in out and "fits" in out and "activations (estimate" in out
    assert cli_main(["plan", "--preset", "wan22-5b", "--gpus", "1", "--gpu-memory", "80", "--strategy", "ddp"]) == 1
    with pytest.raises(SystemExit, match="fastwam plan: --gpus: expected >= 1, got 0"):
        cli_main(["plan", "--gpus", "0"])
    with pytest.raises(SystemExit, match="fastwam plan: --gpu-memory: expected GB > 0, got nan"):
        cli_main(["plan", "--gpu-memory", "nan"])
    assert cli_main(["plan", "--preset", "small", "--gpus", "1", "--gpu-memory", "8", "--json"]) == 0
    assert '"strategy": "ddp"' in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where no GPU is visible")
def test_measure_needs_one_gpu_and_says_so():
    with pytest.raises(SystemExit, match="expected --gpus 1, got 8"):
        cli_main(["plan", "--preset", "tiny", "--gpus", "8", "--gpu-memory", "80", "--measure"])
    with pytest.raises(SystemExit, match="--measure: no CUDA GPU is visible"):
        cli_main(["plan", "--preset", "tiny", "--gpus", "1", "--gpu-memory", "80", "--measure"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="measures a GPU's memory")
def test_measured_peak_holds_at_least_the_weights_gradients_and_adamw_moments():
    cfg = preset("small")
    p = plan(cfg, "small", 1, 80, "ddp", False, batch_size=4)
    m = measure(cfg, 4, False)
    assert m["error"] is None and m["steps"] == 3 and m["step_s"] > 0
    assert m["peak_allocated_gb"] >= 16 * p.parameters / 1e9  # fp32 weights, gradients and two moments
