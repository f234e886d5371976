"""The model's invariants (DESIGN section 4), variants and boundary checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fastwam.config import VariantConfig, preset
from fastwam.model import WAM
from fastwam.model.experts import Tokens
from fastwam.model.masks import ACTION, CONTEXT, FUTURE, FUTURE_CLEAN, attention_mask, attention_table, dual_mask
from fastwam.model.mot import KVCache
from fastwam.nn.layers import grid_sincos_embedding

VARIANTS = ["fastwam", "joint", "idm", "dual"]


def tiny(variant: str = "fastwam", video_weight: float | None = None, **model_overrides):
    cfg = preset("tiny").with_variant(variant, video_weight).model
    return dataclasses.replace(cfg, **model_overrides) if model_overrides else cfg


def randomized(cfg, seed: int = 0) -> WAM:
    """A model whose every parameter is random, so no zero-initialized gate hides a dependency."""
    torch.manual_seed(seed)
    model = cfg.build()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 and p.shape[0] == cfg.attn_dim else 0.0))
    return model.eval()


def action_velocity(model: WAM, batch, future: torch.Tensor | None, sigma_a: float = 0.7, sigma_v: float = 0.4):
    """Full joint forward over [context | future | action]; returns the action velocity (B, S, A)."""
    B = batch.actions.shape[0]
    vctx, actx = model.contexts(batch.text, batch.state)
    segments = [model.video.tokens(batch.context, torch.zeros(B), CONTEXT, 0, vctx)]
    if future is not None:
        segments.append(model.video.tokens(future, torch.full((B,), sigma_v), FUTURE, 1, vctx))
    action = model.action.tokens(batch.actions, torch.full((B,), sigma_a), actx)
    _, hidden = model(Tokens.cat(segments), action)
    return model.action.output(hidden, action.temb)


# -- masks -------------------------------------------------------------------------------------

def test_mask_worked_example_from_docstring():
    layout = ((CONTEXT, 2), (FUTURE, 1), (ACTION, 2))
    expected = torch.tensor([
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 0, 1, 1],
        [1, 1, 0, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(attention_mask(layout, layout, "fastwam"), expected)


def test_mask_rules_differ_only_in_what_actions_see():
    tables = {rule: attention_table(rule) for rule in VARIANTS}
    for rule in VARIANTS:
        assert torch.equal(tables[rule][:ACTION], tables["fastwam"][:ACTION])
        assert not tables[rule][CONTEXT, [FUTURE, FUTURE_CLEAN, ACTION]].any()
    assert tables["joint"][ACTION, FUTURE] and not tables["fastwam"][ACTION, FUTURE]
    assert tables["idm"][ACTION, FUTURE_CLEAN] and not tables["idm"][ACTION, FUTURE]
    assert torch.equal(tables["dual"], tables["idm"])  # at inference; training draws per sample
    with pytest.raises(ValueError, match="unknown mask rule 'causal'"):
        attention_table("causal")


def test_dual_mask_gives_each_sample_its_own_rule():
    layout = ((CONTEXT, 2), (FUTURE, 1), (FUTURE_CLEAN, 1), (ACTION, 2))
    mask = dual_mask(layout, layout, torch.tensor([True, False, True]))
    assert mask.shape == (3, 1, 6, 6)
    idm, fastwam = attention_mask(layout, layout, "idm"), attention_mask(layout, layout, "fastwam")
    assert torch.equal(mask[0, 0], idm) and torch.equal(mask[2, 0], idm) and torch.equal(mask[1, 0], fastwam)
    assert mask[0, 0, 4, 3] and not mask[1, 0, 4, 3]  # an action reads the clean future only under IDM's rule


def test_full_mask_is_none():
    assert attention_mask(((ACTION, 2),), ((CONTEXT, 1), (ACTION, 2)), "fastwam") is None
    assert attention_mask(((ACTION, 2),), ((CONTEXT, 1), (FUTURE, 1), (ACTION, 2)), "fastwam") is not None


# -- invariant 1: Fast-WAM actions never see the future ----------------------------------------

def test_fastwam_action_velocity_ignores_future_tokens():
    cfg = tiny("fastwam")
    model, batch = randomized(cfg), cfg.fake_batch(3, torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = action_velocity(model, batch, batch.future)
        replaced = action_velocity(model, batch, torch.randn_like(batch.future) * 5)
        removed = action_velocity(model, batch, None)
    assert (base - replaced).abs().max() <= 1e-5
    assert (base - removed).abs().max() <= 1e-5


def test_joint_action_velocity_does_depend_on_future_tokens():
    """The same probe detects a dependency when the mask allows one (so invariant 1's test can fail)."""
    cfg = tiny("joint")
    model, batch = randomized(cfg), cfg.fake_batch(3, torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = action_velocity(model, batch, batch.future) - action_velocity(model, batch, torch.randn_like(batch.future) * 5)
    assert diff.abs().max() > 1e-3


# -- invariant 2: cached path == full forward --------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_prefix_matches_full_forward(variant):
    cfg = tiny(variant)
    model, batch = randomized(cfg), cfg.fake_batch(2, torch.Generator().manual_seed(2))
    B = 2
    with torch.no_grad():
        full = action_velocity(model, batch, batch.future if variant == "joint" else None)
        prefix = model.prefill(batch.context, batch.state, batch.text)
        assert prefix.cache.length == cfg.tokens(cfg.context_frames)
        action = model.action.tokens(batch.actions, torch.full((B,), 0.7), prefix.action_context)
        video = model.video.tokens(batch.future, torch.full((B,), 0.4), FUTURE, 1, prefix.video_context) if variant == "joint" else None
        _, hidden = model(video, action, cache=prefix.cache)
        cached = model.action.output(hidden, action.temb)
    assert (full - cached).abs().max() <= 1e-5


def test_cache_is_read_only_during_denoising_steps():
    cfg = tiny("fastwam")
    model, batch = randomized(cfg), cfg.fake_batch(2)
    prefix = model.prefill(batch.context, batch.state, batch.text)
    keys = [k.clone() for k in prefix.cache.keys]
    model.sample_actions(prefix, torch.randn(2, cfg.chunk, cfg.action_dim), steps=3)
    assert prefix.cache.length == cfg.tokens(1)
    assert all(torch.equal(a, b) for a, b in zip(keys, prefix.cache.keys))


# -- invariant 3: Fast-WAM runs the video expert once, cost independent of future frames --------

def _count_video_calls(model: WAM) -> list[int]:
    calls = []
    original = model.video.blocks[0].attention_inputs

    def counting(tokens):
        calls.append(tokens.length)
        return original(tokens)

    model.video.blocks[0].attention_inputs = counting
    return calls


def test_fastwam_inference_runs_video_expert_once_on_context_only():
    cfg = tiny("fastwam")
    model, batch = randomized(cfg), cfg.fake_batch(2)
    calls = _count_video_calls(model)
    model.predict_actions(batch.context, batch.state, batch.text, steps=5)
    assert calls == [cfg.tokens(cfg.context_frames)]


def test_idm_and_joint_run_video_expert_every_step():
    # joint: the 5 steps asked for; IDM: its video_flow.steps (the tiny preset's 4; `steps` counts the
    # action steps), then the prefill of the generated future
    for variant, expected_calls in [("joint", 5), ("idm", 4 + 1)]:
        cfg = tiny(variant)
        assert cfg.video_flow.steps == 4
        model, batch = randomized(cfg), cfg.fake_batch(2)
        calls = _count_video_calls(model)
        model.predict_actions(batch.context, batch.state, batch.text, steps=5)
        assert len(calls) == 1 + expected_calls, variant


def _inference_flops(cfg) -> int:
    model, batch = randomized(cfg), cfg.fake_batch(1)
    with FlopCounterMode(display=False) as counter:
        model.predict_actions(batch.context, batch.state, batch.text, steps=4)
    return counter.get_total_flops()


def test_fastwam_inference_cost_independent_of_future_frames():
    assert _inference_flops(tiny("fastwam", future_frames=2)) == _inference_flops(tiny("fastwam", future_frames=8))
    # ... whereas imagining the future costs more with more future frames:
    assert _inference_flops(tiny("idm", future_frames=8)) > _inference_flops(tiny("idm", future_frames=2))


# -- invariant 4: lambda = 0 ---------------------------------------------------------------------

def test_no_video_cotraining_builds_no_future_and_leaves_video_head_without_gradient():
    cfg = tiny("fastwam", video_weight=0.0)
    model = randomized(cfg).train()
    batch = cfg.fake_batch(2)
    assert batch.future is None
    out = model.loss(batch)
    out.total.backward()
    assert out.video.item() == 0.0
    assert all(p.grad is None for p in model.video.head.parameters())
    assert model.action.head.head.weight.grad.abs().sum() > 0


def test_video_cotraining_trains_video_head():
    cfg = tiny("fastwam")
    model = randomized(cfg).train()
    model.loss(cfg.fake_batch(2)).total.backward()
    assert model.video.head.head.weight.grad.abs().sum() > 0


def test_joint_and_idm_reject_zero_video_weight():
    for variant in ("joint", "idm"):
        with pytest.raises(ValueError, match="needs video_weight > 0"):
            preset("tiny").with_variant(variant, video_weight=0.0)


# -- invariant 6 (model side): padded steps never contribute --------------------------------------

def test_padded_steps_do_not_contribute_to_loss():
    """The loss gradient reaches no prediction at a padded step (action or future frame)."""
    cfg = tiny("fastwam")
    model = randomized(cfg)
    batch = cfg.fake_batch(3, torch.Generator().manual_seed(3))
    batch.action_pad[:, 2:] = True
    batch.future_pad[0, 1:] = True
    predictions = {}

    def capture(name, fn):
        def wrapped(*args):
            out = fn(*args)
            out.retain_grad()
            predictions[name] = out
            return out
        return wrapped

    model.action.output = capture("action", model.action.output)
    model._video_velocity = capture("video", model._video_velocity)
    model.loss(batch).total.backward()
    g_action, g_video = predictions["action"].grad, predictions["video"].grad
    assert g_action[:, 2:].abs().max() == 0 and g_action[:, :2].abs().min() > 0
    assert g_video[0, 1:].abs().max() == 0 and g_video[0, :1].abs().max() > 0 and g_video[1:].abs().max() > 0


def test_masked_mse_ignores_invalid_positions():
    from fastwam.model.wam import masked_mse

    pred, target = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    valid = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    expected = ((pred - target) ** 2).mean(-1)[valid].mean()
    assert torch.allclose(masked_mse(pred, target, valid), expected)
    pred2 = pred.clone()
    pred2[~valid] = 1e6
    assert torch.allclose(masked_mse(pred2, target, valid), expected)


# -- inference modes ---------------------------------------------------------------------------

def test_joint_sampling_equals_fastwam_sampling_under_fastwam_mask():
    """With actions blind to the future, denoising the video alongside changes nothing."""
    cfg = tiny("fastwam")
    model, batch = randomized(cfg), cfg.fake_batch(2)
    noise = torch.randn(2, cfg.chunk, cfg.action_dim)
    fast = model.predict_actions(batch.context, batch.state, batch.text, noise=noise, mode="action_only")
    prefix = model.prefill(batch.context, batch.state, batch.text)
    joint, _ = model.sample_joint(prefix, noise, torch.randn(2, cfg.future_frames, *cfg.latent_shape),
                                cfg.action_flow.steps)
    assert (fast - joint).abs().max() <= 1e-5


def test_joint_sampling_differs_under_joint_mask():
    cfg = tiny("joint")
    model, batch = randomized(cfg), cfg.fake_batch(2)
    noise = torch.randn(2, cfg.chunk, cfg.action_dim)
    fast = model.sample_actions(model.prefill(batch.context, batch.state, batch.text), noise, cfg.action_flow.steps)
    joint = model.predict_actions(batch.context, batch.state, batch.text, noise=noise, mode="joint")
    assert (fast - joint).abs().max() > 1e-4


def test_a_model_runs_only_the_modes_it_was_trained_for():
    batch = tiny().fake_batch(1)
    observation = (batch.context, batch.state, batch.text)
    for variant, refused in (("fastwam", "video_then_action"), ("joint", "action_only"), ("idm", "joint"),
                             ("dual", "joint")):
        model = randomized(tiny(variant))
        with pytest.raises(ValueError, match=rf"mode '{refused}': this model \(variant.mask '{variant}'\) was trained"):
            model.predict_actions(*observation, mode=refused)


def test_dual_model_acts_in_both_modes_with_one_set_of_weights():
    cfg = tiny("dual")
    model, batch = randomized(cfg), cfg.fake_batch(2)
    observation, noise = (batch.context, batch.state, batch.text), torch.randn(2, cfg.chunk, cfg.action_dim)
    fast = model.predict_actions(*observation, noise=noise)  # the default mode: Fast-WAM
    assert cfg.variant.inference == "action_only" and cfg.variant.modes == ("action_only", "video_then_action")
    assert torch.equal(fast, model.sample_actions(model.prefill(*observation), noise, cfg.action_flow.steps))
    imagined = model.predict_actions(*observation, noise=noise, mode="video_then_action",
                                     generator=torch.Generator().manual_seed(1))
    assert (imagined - fast).abs().max() > 1e-3  # the generated future changes the actions
    # ... exactly as an IDM model with the same weights acts
    idm = WAM(tiny("idm"))
    idm.load_state_dict(model.state_dict())
    same = idm.eval().predict_actions(*observation, noise=noise, generator=torch.Generator().manual_seed(1))
    assert (imagined - same).abs().max() <= 1e-6


def test_dual_training_applies_each_samples_rule():
    """In one dual batch, an IDM sample's actions read the clean future, a Fast-WAM sample's do not."""
    cfg = tiny("dual")
    model, batch = randomized(cfg), cfg.fake_batch(2, torch.Generator().manual_seed(1))
    ones = torch.ones(2)
    vctx, actx = model.contexts(batch.text, batch.state)

    def hidden(clean_future, idm_samples):
        video = Tokens.cat([model.video.tokens(batch.context, 0 * ones, CONTEXT, 0, vctx),
                            model.video.tokens(batch.future, 0.4 * ones, FUTURE, 1, vctx),
                            model.video.tokens(clean_future, 0 * ones, FUTURE_CLEAN, 1, vctx)])
        action = model.action.tokens(batch.actions, 0.7 * ones, actx)
        return model(video, action, idm_samples=idm_samples)[1]

    with torch.no_grad():
        rules = torch.tensor([True, False])
        base, other = hidden(batch.future, rules), hidden(torch.randn_like(batch.future) * 5, rules)
        fastwam_view = hidden(batch.future, torch.tensor([False, False]))
    assert (base[0] - other[0]).abs().max() > 1e-3  # IDM sample: depends on the clean future
    assert (base[1] - other[1]).abs().max() <= 1e-5  # Fast-WAM sample: blind to it
    assert (base[1] - fastwam_view[1]).abs().max() <= 1e-5  # and what the rule gives the whole batch


def test_dual_loss_draws_the_rule_per_sample_at_idm_fraction():
    cfg = dataclasses.replace(tiny("dual"), variant=VariantConfig(mask="dual", idm_fraction=0.25))
    model, batch = randomized(cfg), cfg.fake_batch(400, torch.Generator().manual_seed(0))
    seen = []
    model.forward = lambda video, action, idm_samples=None, **kw: seen.append(idm_samples) or WAM.forward(
        model, video, action, idm_samples=idm_samples, **kw)
    with torch.no_grad():
        loss = model.loss(batch, torch.Generator().manual_seed(3))
    (drawn,) = seen
    assert drawn.shape == (400,) and drawn.dtype == torch.bool and 0.18 < drawn.float().mean() < 0.32
    assert torch.isfinite(loss.total) and loss.video > 0


def test_predictions_are_batched_and_per_sample():
    """Batch inference equals running each sample alone (no batch-size-1 assumptions)."""
    for variant in VARIANTS:
        cfg = tiny(variant)
        model, batch = randomized(cfg), cfg.fake_batch(3)
        noise = torch.randn(3, cfg.chunk, cfg.action_dim)
        together = model.predict_actions(batch.context, batch.state, batch.text, noise=noise,
                                         generator=torch.Generator().manual_seed(0))
        if variant == "fastwam":
            alone = torch.cat([model.predict_actions(batch.context[i:i + 1], batch.state[i:i + 1], batch.text[i:i + 1],
                                                     noise=noise[i:i + 1]) for i in range(3)])
            assert (together - alone).abs().max() <= 1e-5
        assert together.shape == (3, cfg.chunk, cfg.action_dim) and torch.isfinite(together).all()


def test_imagine_shapes_and_refusal_without_video():
    cfg = tiny("fastwam")
    model, batch = randomized(cfg), cfg.fake_batch(2)
    assert model.imagine(batch.context, batch.state, batch.text, steps=3).shape == batch.future.shape
    cfg0 = tiny("fastwam", video_weight=0.0)
    model0 = randomized(cfg0)
    with pytest.raises(ValueError, match="trained without video"):
        model0.imagine(batch.context, batch.state, batch.text)
    with pytest.raises(ValueError, match="trained without video"):
        model0.predict_actions(batch.context, batch.state, batch.text, mode="joint")


# -- video token positions ---------------------------------------------------------------------

def test_grid_sincos_embedding_codes_row_and_column_in_separate_halves():
    rows, cols, dim = 3, 4, 16
    emb = grid_sincos_embedding(rows, cols, dim).view(rows, cols, dim)
    row_half, col_half = emb[..., : dim // 2], emb[..., dim // 2:]
    assert torch.equal(row_half, row_half[:, :1].expand_as(row_half))  # the row half ignores the column
    assert torch.equal(col_half, col_half[:1].expand_as(col_half))
    flat = emb.flatten(0, 1)
    assert torch.cdist(flat, flat).add(torch.eye(rows * cols)).min() > 0.1  # every cell is distinct
    zero_position = torch.cat([torch.zeros(dim // 4), torch.ones(dim // 4)])  # sin 0, cos 0 at every frequency
    torch.testing.assert_close(emb[0, 0], zero_position.repeat(2))
    torch.testing.assert_close(emb[0, 1, dim // 2: dim // 2 + 1], torch.tensor([1.0]).sin())  # column 1, frequency 1
    with pytest.raises(ValueError, match="divisible by 4, got 10"):
        grid_sincos_embedding(2, 2, 10)


def test_grid_position_adds_the_same_cell_features_to_every_frame():
    cfg = tiny(future_frames=2, latent_width=8)  # a 2 x 4 token grid: rows and columns cannot be confused
    grid = dataclasses.replace(cfg, video=dataclasses.replace(cfg.video, grid_position=True))
    plain_model, grid_model = randomized(cfg), randomized(grid)
    assert grid_model.state_dict().keys() == plain_model.state_dict().keys()  # no weights of its own
    latents = torch.randn(2, 2, *cfg.latent_shape)
    plain = plain_model.video.tokens(latents, torch.zeros(2), FUTURE, 1, None)
    shifted = grid_model.video.tokens(latents, torch.zeros(2), FUTURE, 1, None)
    _, h, w = cfg.video.patch
    rows, cols = cfg.latent_height // h, cfg.latent_width // w
    expected = grid_sincos_embedding(rows, cols, cfg.video.width).repeat(2, 1)  # frame-major, then row-major
    torch.testing.assert_close(shifted.x - plain.x, expected.expand(2, -1, -1))
    assert torch.equal(shifted.rope, plain.rope)


def test_conv_stem_shares_weights_across_positions_and_keeps_wan_names():
    cfg = tiny()
    stem = dataclasses.replace(cfg, video=dataclasses.replace(cfg.video, conv_stem=6))
    plain_keys, model = set(cfg.build().state_dict()), randomized(stem)
    assert {k for k in model.state_dict() if not k.startswith("video.stem.")} == plain_keys
    assert model.video.patch_embedding.in_channels == 6
    # Away from the borders, moving a latent frame by one cell moves the stem's features by one cell.
    latents = torch.randn(1, cfg.latent_channels, 1, 12, 12)
    features = model.video.stem(latents)
    moved = model.video.stem(latents.roll(1, dims=-1))
    torch.testing.assert_close(moved[..., 2:-2, 3:-2], features[..., 2:-2, 2:-3])
    batch = stem.fake_batch(2)
    model.loss(batch).total.backward()
    assert model.video.stem[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="video.conv_stem must be >= 0 channels, got -1"):
        dataclasses.replace(cfg.video, conv_stem=-1)


# -- boundary checks ---------------------------------------------------------------------------

def test_loss_rejects_bad_shapes_with_named_tensor():
    cfg = tiny("fastwam")
    model = cfg.build()
    good = cfg.fake_batch(2)
    cases = {
        "context": dataclasses.replace(good, context=good.context[..., :3]),
        "actions": dataclasses.replace(good, actions=good.actions[:, :-1]),
        "action_pad": dataclasses.replace(good, action_pad=good.action_pad.float()),
        "state": dataclasses.replace(good, state=good.state[:1]),
        "text": dataclasses.replace(good, text=good.text[..., :3]),
        "future": dataclasses.replace(good, future=good.future[:, :1]),
        "future_pad": dataclasses.replace(good, future_pad=good.future_pad[:, :1]),
    }
    for name, bad in cases.items():
        with pytest.raises((ValueError, TypeError), match=rf"^{name}: expected (shape|dtype) .*got"):
            model.loss(bad)
    with pytest.raises(ValueError, match=r"context: expected shape \(B, 1, 48, 4, 4\), got \(2, 1, 48, 4, 3\)"):
        model.loss(cases["context"])
    with pytest.raises(ValueError, match="batch.future and batch.future_pad are required"):
        model.loss(dataclasses.replace(good, future=None))


def test_inference_rejects_bad_shapes_with_named_tensor():
    cfg = tiny("idm")
    model = cfg.build()
    b = cfg.fake_batch(2)
    with pytest.raises(ValueError, match=r"state: expected shape \(2, 4\), got \(2, 5\)"):
        model.predict_actions(b.context, torch.zeros(2, 5), b.text)
    with pytest.raises(ValueError, match=r"text: expected shape \(2, 1, 384\), got \(3, 1, 8\)"):
        model.imagine(b.context, b.state, torch.zeros(3, 1, 8))
    with pytest.raises(ValueError, match=r"noise: expected shape \(2, 4, 4\), got \(2, 4, 3\)"):
        model.predict_actions(b.context, b.state, b.text, noise=torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match=r"mode: expected one of"):
        model.predict_actions(b.context, b.state, b.text, mode="dream")
    prefix = model.prefill(b.context, b.state, b.text)
    with pytest.raises(ValueError, match=r"future: expected shape \(2, 2, 48, 4, 4\), got \(2, 1, 48, 4, 4\)"):
        model.extend_prefix(prefix, b.future[:, :1])
    with pytest.raises(TypeError, match="context: expected a torch.Tensor"):
        model.prefill(b.context.numpy(), b.state, b.text)


# -- presets -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny", "small"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_preset_smoke(name, variant):
    cfg = preset(name).with_variant(variant).model
    model, batch = cfg.build(), cfg.fake_batch(2)
    out = model.loss(batch)
    out.total.backward()
    assert torch.isfinite(out.total) and out.action > 0 and out.video > 0
    actions = model.predict_actions(batch.context, batch.state, batch.text, steps=2)
    assert actions.shape == batch.actions.shape


def test_wan22_5b_parameter_counts_match_the_paper_scale():
    cfg = preset("wan22-5b").model
    with torch.device("meta"):
        model = cfg.build()
    video = sum(p.numel() for p in model.video.parameters())
    action = sum(p.numel() for p in model.action.parameters())
    print(f"wan22-5b: video expert {video / 1e9:.3f} B, action expert {action / 1e9:.3f} B parameters")
    assert abs(video - 4.95e9) <= 0.05 * 4.95e9  # Wan2.2-TI2V-5B: ~4.9-5.0 B
    assert abs(action - 1.0e9) <= 0.05 * 1.0e9  # the paper's action expert: ~1.0 B


def test_kv_cache_layer_bookkeeping():
    cache = KVCache()
    assert cache.length == 0 and cache.layer(0) is None
    k = torch.zeros(1, 2, 3, 4)
    cache.set_layer(0, k, k)
    assert cache.layer(0)[0] is k


@pytest.mark.parametrize("variant", ["idm", "joint"])  # idm: future and action steps; joint: joint steps
def test_compiled_inference_traces_as_one_graph_per_unit_and_matches_eager(variant):
    """``compile_inference`` (bench --compile) sees no graph breaks and predicts what eager predicts."""
    torch._dynamo.reset()
    cfg = tiny(variant)
    model = randomized(cfg)
    batch = cfg.fake_batch(2)
    noise = torch.randn(2, cfg.chunk, cfg.action_dim)
    with torch.inference_mode():
        eager = model.predict_actions(batch.context, batch.state, batch.text, steps=2, noise=noise,
                                      generator=torch.Generator().manual_seed(0))
        model.compile_inference(dynamic=False, fullgraph=True)  # fullgraph: any graph break raises
        compiled = model.predict_actions(batch.context, batch.state, batch.text, steps=2, noise=noise,
                                         generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="already compiled"):
        model.compile_inference()
    torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def test_idm_acts_on_a_given_future_exactly_as_on_the_same_future_imagined():
    cfg = tiny("idm")
    model, batch = randomized(cfg), cfg.fake_batch(2)
    observation, noise = (batch.context, batch.state, batch.text), torch.randn(2, cfg.chunk, cfg.action_dim)
    imagined_future = model.imagine(*observation, generator=torch.Generator().manual_seed(3))
    imagined = model.predict_actions(*observation, noise=noise, generator=torch.Generator().manual_seed(3))
    given = model.predict_actions(*observation, noise=noise, future=imagined_future)
    assert (given - imagined).abs().max() <= 1e-6
    true = model.predict_actions(*observation, noise=noise, future=batch.future)
    assert (true - imagined).abs().max() > 1e-3  # the actions read the future they are given
    with pytest.raises(ValueError, match=r"future: expected shape \(2, "):
        model.predict_actions(*observation, noise=noise, future=batch.future[:, :1])
    fast = randomized(tiny("dual"))
    with pytest.raises(ValueError, match=r"future: only IDM inference .* mode is 'action_only'"):
        fast.predict_actions(*observation, noise=noise, future=batch.future)


def test_idm_reads_a_future_at_the_noise_level_its_actions_were_trained_on():
    """Trained on a future copy noised at sigma (variant.idm_future_noise), IDM's actions read the
    generated future labelled with that sigma, as in training, not as clean."""
    clean = tiny("idm")
    noised = dataclasses.replace(clean, variant=dataclasses.replace(clean.variant, idm_future_noise=0.1))
    a, b = randomized(clean), WAM(noised)
    b.load_state_dict(a.state_dict())
    batch = clean.fake_batch(2)
    observation, noise = (batch.context, batch.state, batch.text), torch.randn(2, clean.chunk, clean.action_dim)
    given = [m.eval().predict_actions(*observation, noise=noise, future=batch.future) for m in (a, b)]
    assert (given[0] - given[1]).abs().max() > 1e-4
