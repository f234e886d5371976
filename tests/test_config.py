"""The config tree: presets, validation, YAML round trip."""

import dataclasses
from pathlib import Path

import pytest
import torch

from fastwam.config import Config, ModelConfig, VariantConfig, preset


@pytest.mark.parametrize("name", ["tiny", "small", "wan22-5b"])
def test_presets_load_and_round_trip_through_yaml(name, tmp_path):
    cfg = preset(name)
    cfg.save(tmp_path / "config.yaml")
    assert Config.load(tmp_path / "config.yaml") == cfg


def test_variants_are_data():
    cfg = preset("tiny")
    assert cfg.with_variant("joint").model.variant == VariantConfig(mask="joint", inference="joint")
    assert cfg.with_variant("idm").model.variant.inference == "video_then_action"
    assert not cfg.with_variant("fastwam", 0.0).model.variant.has_future
    with pytest.raises(ValueError, match="unknown variant 'dream'"):
        cfg.with_variant("dream")
    with pytest.raises(ValueError, match="variant.inference for mask 'fastwam' must be 'action_only'"):
        VariantConfig(mask="fastwam", inference="joint")


def test_unknown_keys_and_bad_values_are_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  layers: 2\n  widht: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml.model: unknown key\(s\) \['widht'\]"):
        Config.load(path)
    with pytest.raises(ValueError, match="latent grid 5x4 is not divisible by patch 2x2"):
        ModelConfig(latent_height=5, latent_width=4)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        Config.load(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset("huge")


def test_data_and_model_shapes_must_agree():
    cfg = preset("small")
    with pytest.raises(ValueError, match=r"patch codec .* gives latents \(C, h, w\) = \(192, 8, 16\)"):
        cfg.replace(data=dataclasses.replace(cfg.data, cameras=("corner2", "corner3")))


def test_history_frames_need_a_codec_without_temporal_compression():
    cfg = preset("wan22-5b")
    with pytest.raises(ValueError, match=r"model.context_frames 2: .* needs the patch codec, not 'wan22'"):
        cfg.replace(model=dataclasses.replace(cfg.model, context_frames=2))
    small = preset("small")
    assert small.replace(model=dataclasses.replace(small.model, context_frames=2)).model.context_frames == 2


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("benchmarks/*.yaml")), ids=lambda p: p.name)
def test_benchmark_configs_load(path):
    """The configurations docs/RESULTS.md cites stay loadable as the config tree evolves."""
    cfg = Config.load(path)  # validates every key and the data/model shape agreement
    with torch.device("meta"):
        model = cfg.model.build()
    assert sum(p.numel() for p in model.parameters()) > 0


def test_a_presets_variant_is_kept_and_options_replace_its_fields(tmp_path):
    """`fastwam train --preset X.yaml` trains the variant X names (its noise level, its inference), with
    --variant / --video-weight / --idm-future-noise replacing only what they name."""
    from fastwam.cli import build_parser
    from fastwam.train import config_from_args

    cfg = preset("tiny").with_variant("dual", idm_future_noise=0.08)
    cfg = cfg.replace(model=dataclasses.replace(cfg.model, variant=dataclasses.replace(
        cfg.model.variant, inference="video_then_action", idm_fraction=0.25)))
    cfg.save(path := tmp_path / "dual.yaml")

    def trained(*options):
        args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--preset", str(path), *options])
        return config_from_args(args).model.variant

    assert trained() == cfg.model.variant  # the preset's variant as written, not reset to fastwam's
    assert trained("--idm-future-noise", "0.1") == dataclasses.replace(cfg.model.variant, idm_future_noise=0.1)
    idm = trained("--variant", "idm")  # another mask rule: its default inference, the preset's noise level kept
    assert (idm.mask, idm.inference, idm.idm_future_noise) == ("idm", "video_then_action", 0.08)
    assert trained("--variant", "fastwam").idm_future_noise == 0  # its actions read no future: no level to keep
    with pytest.raises(ValueError, match="idm_future_noise applies to masks idm and dual.*mask 'fastwam'"):
        trained("--variant", "fastwam", "--idm-future-noise", "0.1")
    preset("tiny").with_variant("idm", idm_future_noise=0.08).save(path)  # inference video_then_action
    dual = trained("--variant", "dual")  # the mask changes: dual's default inference, not the preset's
    assert (dual.mask, dual.inference, dual.idm_future_noise) == ("dual", "action_only", 0.08)
