"""Wan2.2 DiT weights initialize the video expert exactly: diffusers' WanTransformer3DModel as the reference."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fastwam.config import preset
from fastwam.model import WAM
from fastwam.model.masks import FUTURE
from fastwam.model.wan_weights import ACTION_OWN, init_action_from_video, load_wan_video_weights, resize
from fastwam.nn.attention import attend


@pytest.fixture(scope="module")
def tiny_cfg():
    return preset("tiny").model  # video expert: 2 layers, width 32 = 2 heads x 16, FFN 64, 48 latent channels


@pytest.fixture(scope="module")
def diffusers_dir(tmp_path_factory, tiny_cfg):
    """A random diffusers WanTransformer3DModel (Wan2.2-TI2V layout) of the tiny preset's video-expert size."""
    from diffusers import WanTransformer3DModel

    m = tiny_cfg
    torch.manual_seed(0)
    wan = WanTransformer3DModel(
        patch_size=m.video.patch, num_attention_heads=m.heads, attention_head_dim=m.head_dim,
        in_channels=m.latent_channels, out_channels=m.latent_channels, text_dim=m.text_dim, freq_dim=m.video.freq_dim,
        ffn_dim=m.video.ffn, num_layers=m.layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    )
    with torch.no_grad():  # no parameter left at its neutral initial value (norm scales of 1, zero biases)
        for p in wan.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("wan_dit")
    wan.save_pretrained(path)
    return path


def video_expert_forward(model: WAM, latents, sigma, text):
    """The video expert alone on latents (B, T, C, h, w) at flow time sigma (B,), attending to the
    instruction only (no proprio token) with full attention: what a Wan DiT computes."""
    v = model.video
    context = [block.cross_attn.context_kv(v.condition.text_embedding(text)) for block in v.blocks]
    tokens = v.tokens(latents, sigma, FUTURE, 0, context)
    for layer, block in enumerate(v.blocks):
        tokens.x = block.attention_output(tokens, attend(*block.attention_inputs(tokens), mask=None), layer)
    return v.output(tokens.x, tokens.temb, *latents.shape[1:2], *latents.shape[3:])


def test_diffusers_wan_weights_reproduce_the_wan_forward(diffusers_dir, tiny_cfg):
    from diffusers import WanTransformer3DModel

    model = WAM(tiny_cfg)
    action_before = {k: v.clone() for k, v in model.action.state_dict().items()}
    state_before = model.video.condition.state_embedding.weight.clone()
    names = load_wan_video_weights(model, diffusers_dir)
    assert len(names) == len(model.video.state_dict()) - 2  # all but the proprio embedding's weight and bias
    assert all(torch.equal(v, action_before[k]) for k, v in model.action.state_dict().items())
    assert torch.equal(model.video.condition.state_embedding.weight, state_before)

    wan = WanTransformer3DModel.from_pretrained(diffusers_dir).eval()
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 3, 48, 4, 6, generator=g)  # (B, T, C, h, w): 3 frames of 2 x 3 tokens
    sigma = torch.tensor([0.3, 0.8])
    text = torch.randn(2, 5, tiny_cfg.text_dim, generator=g)
    with torch.no_grad():
        ours = video_expert_forward(model, latents, sigma, text)
        theirs = wan(latents.transpose(1, 2), timestep=1000 * sigma, encoder_hidden_states=text).sample.transpose(1, 2)
    assert ours.shape == theirs.shape == latents.shape
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4), (ours - theirs).abs().max()
    # and the comparison can fail: one weight off changes the output
    with torch.no_grad():
        model.video.blocks[1].ffn[2].bias.add_(0.01)
        assert not torch.allclose(video_expert_forward(model, latents, sigma, text), theirs, atol=1e-4, rtol=1e-4)


def wan_own_names(state: dict) -> dict:
    """The video expert's tensors under the names Wan's repository saves them with."""
    renames = {"condition.text_embedding.": "text_embedding.", "time.": ""}
    out = {}
    for key, value in state.items():
        if key.startswith("condition.state_embedding."):
            continue
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old):]
        out[key] = value.to(torch.bfloat16)
    return out


def test_wan_own_layout_loads_from_shards(tmp_path, tiny_cfg, diffusers_dir):
    source = WAM(tiny_cfg)
    load_wan_video_weights(source, diffusers_dir)
    tensors = wan_own_names(source.video.state_dict())
    assert "blocks.0.self_attn.q.weight" in tensors and "time_projection.1.weight" in tensors and "head.modulation" in tensors
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2], "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in shards.items():
        save_file({k: tensors[k].contiguous() for k in part}, tmp_path / name)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: n for n, p in shards.items() for k in p}}))

    model = WAM(tiny_cfg)
    load_wan_video_weights(model, tmp_path)
    loaded, expected = model.video.state_dict(), source.video.state_dict()
    for key in expected:
        if not key.startswith("condition.state_embedding."):
            assert torch.equal(loaded[key], expected[key].to(torch.bfloat16).float()), key


def test_wan_weights_errors_name_the_keys_and_shapes(tmp_path, tiny_cfg, diffusers_dir):
    from safetensors.torch import load_file

    tensors = load_file(diffusers_dir / "diffusion_pytorch_model.safetensors")
    with pytest.raises(FileNotFoundError, match="neither a .safetensors file nor a directory"):
        load_wan_video_weights(WAM(tiny_cfg), tmp_path / "nothing")

    broken = dict(tensors)
    broken.pop("blocks.1.attn2.to_k.weight")
    broken["blocks.1.attn2.add_k_proj.weight"] = torch.zeros(32, 32)  # a Wan2.1 I2V image branch
    save_file(broken, tmp_path / "broken.safetensors")
    with pytest.raises(ValueError, match=r"missing \['blocks.1.cross_attn.k.weight'\], unexpected \['blocks.1.attn2.add_k_proj.weight'\]"):
        load_wan_video_weights(WAM(tiny_cfg), tmp_path / "broken.safetensors")

    wider = dataclasses.replace(tiny_cfg, video=dataclasses.replace(tiny_cfg.video, ffn=96))
    save_file(tensors, tmp_path / "ok.safetensors")
    model = WAM(wider)
    before = {k: v.clone() for k, v in model.video.state_dict().items()}
    with pytest.raises(ValueError, match=r"6 tensors have other shapes .*'ok.safetensors:blocks.0.ffn.net.0.proj.bias "
                                         r"is \(64,\), video.blocks.0.ffn.0.bias is \(96,\)'"):
        load_wan_video_weights(model, tmp_path / "ok.safetensors")
    assert all(torch.equal(v, before[k]) for k, v in model.video.state_dict().items())  # nothing half-loaded


def test_fastwam_train_init_video_starts_from_the_checkpoint(tmp_path, tiny_cfg, diffusers_dir):
    from test_train import write_dot_dataset

    from fastwam.cli import main
    from fastwam.config import Config
    from fastwam.train import build_trainer

    data = write_dot_dataset(tmp_path / "ds", 16)
    args = ["train", "--data", str(data), "--preset", "tiny", "--steps", "1", "--batch-size", "2",
            "--init-video", str(diffusers_dir), "--init-action", "video", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    cfg = Config.load(tmp_path / "run" / "config.yaml")
    assert cfg.train.init_video == str(diffusers_dir) and cfg.train.init_action == "video"
    reference = WAM(tiny_cfg)
    load_wan_video_weights(reference, diffusers_dir)
    init_action_from_video(reference)
    trainer = build_trainer(cfg, data, tmp_path / "again", progress=False)  # before any step: the loaded weights
    for expert in ("video", "action"):
        ours = getattr(trainer.model, expert).state_dict()
        theirs = getattr(reference, expert).state_dict()
        own = ACTION_OWN if expert == "action" else ("condition.state_embedding.",)
        assert all(torch.equal(ours[k], v) for k, v in theirs.items() if not k.startswith(own)), expert

    # Resuming does not read the Wan checkpoint (the run's own checkpoint replaces every weight): gone, it is not missed.
    moved = diffusers_dir.with_name(diffusers_dir.name + ".moved")
    diffusers_dir.rename(moved)
    try:
        resumed = build_trainer(cfg, data, tmp_path / "run", progress=False, resume=True)
    finally:
        moved.rename(diffusers_dir)
    assert resumed.step == 1


def test_resize_interpolates_each_differing_dim_and_rescales_a_narrower_input():
    src = torch.arange(15.0).reshape(3, 5) ** 2  # not linear along either axis, so interpolation shows
    grid = np.linspace(0, 4, 3)  # end points kept: input columns 0, 2, 4
    inputs = resize(src, (3, 3))
    expected = np.stack([np.interp(grid, np.arange(5), row) for row in src.numpy()]) * np.sqrt(5 / 3)
    np.testing.assert_allclose(inputs.numpy(), expected, rtol=1e-6)
    outputs = resize(src.T.contiguous(), (3, 3))  # only the output dim shrinks: no rescaling
    np.testing.assert_allclose(outputs.numpy(), expected.T / np.sqrt(5 / 3), rtol=1e-6)
    np.testing.assert_allclose(resize(src[0], (9,)).numpy(), np.interp(np.linspace(0, 4, 9), np.arange(5), src[0].numpy()),
                               rtol=1e-6)  # a vector (norm scale, bias) is interpolated, never rescaled
    assert torch.equal(resize(src, (3, 5)), src)
    with pytest.raises(ValueError, match=r"shape \(3, 5\) cannot become rank-1 \(5,\)"):
        resize(src, (5,))


def test_action_expert_starts_from_the_loaded_video_expert(tiny_cfg, diffusers_dir):
    model = WAM(tiny_cfg)
    load_wan_video_weights(model, diffusers_dir)
    before = {k: v.clone() for k, v in model.action.state_dict().items()}
    names = init_action_from_video(model)
    video, action = model.video.state_dict(), model.action.state_dict()
    own = ("action_in.", "head.", "condition.state_embedding.")  # no video counterpart: action input, head, proprio
    assert set(names) == {k for k in action if not k.startswith(own)} and len(names) > 20
    for k in names:
        assert torch.equal(action[k], resize(video[k], tuple(action[k].shape))), k
    # widths: video 32 / FFN 64, action 24 / FFN 48; the attention (2 heads x 16) is shared
    q = "blocks.0.self_attn.q.weight"  # (32 attention, 24 inputs) from (32, 32)
    expected = np.stack([np.interp(np.linspace(0, 31, 24), np.arange(32), row) for row in video[q].numpy()])
    np.testing.assert_allclose(action[q].numpy(), expected * np.sqrt(32 / 24), rtol=1e-5, atol=2e-6)
    assert torch.equal(action["blocks.1.self_attn.norm_k.weight"], video["blocks.1.self_attn.norm_k.weight"])
    for k, v in before.items():  # ... and those keep their initialization
        if k.startswith(own):
            assert torch.equal(action[k], v), k


def test_init_action_needs_the_video_weights():
    cfg = preset("tiny")
    with pytest.raises(ValueError, match="train.init_action: video starts the action expert from the Wan weights"):
        cfg.replace(train=dataclasses.replace(cfg.train, init_action="video"))
