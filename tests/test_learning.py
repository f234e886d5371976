"""The model learns: a short CPU training on a synthetic dot world (see tests/synthetic.py).

After training, sampled action chunks must beat the mean-action baseline's MSE by at least 5x,
and imagined future frames must beat "copy the current frame".
"""

import dataclasses

import torch

from fastwam.codecs.patch import PatchCodec
from fastwam.config import ActionExpertConfig, VideoExpertConfig, preset
from synthetic import make_batch

IMAGE, STRIDE = 16, 2


def test_dot_world_is_learned():
    torch.manual_seed(0)
    cfg = dataclasses.replace(
        preset("tiny").model, latent_channels=12, latent_height=8, latent_width=8, heads=4, head_dim=16,
        video=VideoExpertConfig(width=64, ffn=128, freq_dim=32, prediction="data"),
        action=ActionExpertConfig(width=48, ffn=96, freq_dim=32),
    )
    codec = PatchCodec(2)  # 16 px frames -> 8x8x12 latents -> 16 tokens per frame
    model = cfg.build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    data = torch.Generator().manual_seed(0)
    for _ in range(300):
        loss = model.loss(make_batch(cfg, codec, 32, IMAGE, STRIDE, data)).total
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    model.eval()
    test = make_batch(cfg, codec, 256, IMAGE, STRIDE, torch.Generator().manual_seed(123))
    actions = model.predict_actions(test.context, test.state, test.text, generator=torch.Generator().manual_seed(1))
    model_mse = (actions - test.actions).pow(2).mean()
    mean_action_mse = (test.actions - test.actions.mean(0, keepdim=True)).pow(2).mean()
    print(f"action MSE {model_mse:.5f}, mean-action baseline {mean_action_mse:.5f}")
    assert model_mse * 5 <= mean_action_mse

    future = model.imagine(test.context, test.state, test.text, generator=torch.Generator().manual_seed(2))
    imagine_mse = (future - test.future).pow(2).mean()
    copy_mse = (test.context.expand_as(test.future) - test.future).pow(2).mean()
    print(f"imagined-frame MSE {imagine_mse:.5f}, copy-current-frame {copy_mse:.5f}")
    assert imagine_mse < copy_mse
