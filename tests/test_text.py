"""Instruction text encoders: the packaged MiniLM (real embeddings), the cache, a tiny random umT5."""

import re

import pytest
import torch

from fastwam.config import TextConfig
from fastwam.text import build_text_encoder


@pytest.fixture(scope="module")
def minilm():
    return build_text_encoder(TextConfig(name="minilm"), tokens=1)


def count_calls(encoder):
    """Wrap encoder._embed; return the list of prompt lists it is called with."""
    calls, embed = [], encoder._embed
    encoder._embed = lambda prompts: calls.append(list(prompts)) or embed(prompts)
    return calls


def test_minilm_real_embedding(minilm):
    emb = minilm.encode(["open the drawer", "pull the drawer open", "press the button"])
    assert emb.shape == (3, 1, 384) and emb.dtype == torch.float32 and (minilm.dim, minilm.tokens) == (384, 1)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3, 1), atol=1e-5)
    a, b, c = emb[:, 0]
    assert not torch.allclose(a, c)
    assert a @ b > a @ c + 0.2 and a @ b > b @ c + 0.2  # paraphrases closer than unrelated


def test_cache_hit_does_not_rerun_model(minilm, tmp_path):
    encoder = build_text_encoder(TextConfig(name="minilm"), tokens=1, cache_dir=tmp_path)
    encoder.model = minilm.model  # same weights; count the runs of this instance
    calls = count_calls(encoder)
    first = encoder.encode(["reach the goal", "push the puck", "reach the goal"])
    assert calls == [["reach the goal", "push the puck"]]  # each distinct prompt once
    assert torch.equal(first[0], first[2])
    again = encoder.encode(["push the puck", "reach the goal", "open the window"])
    assert calls[1:] == [["open the window"]]
    assert torch.equal(again[:2], first[[1, 0]])
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    # A fresh encoder on the same cache dir reads from disk instead of running the model.
    other = build_text_encoder(TextConfig(name="minilm"), tokens=1, cache_dir=tmp_path)
    other_calls = count_calls(other)
    assert torch.equal(other.encode(["push the puck", "reach the goal"]), first[[1, 0]])
    assert other_calls == []


def test_template_wraps_the_instruction(minilm):
    templated = build_text_encoder(TextConfig(name="minilm", template="a robot video: {instruction}"), tokens=1)
    templated.model = minilm.model
    calls = count_calls(templated)
    emb = templated.encode(["open the drawer"])
    assert calls == [["a robot video: open the drawer"]]
    assert torch.allclose(emb, minilm.encode(["a robot video: open the drawer"]))
    assert not torch.allclose(emb, minilm.encode(["open the drawer"]), atol=1e-3)
    with pytest.raises(ValueError, match="text.template must contain {instruction} once, got 'a robot video'"):
        TextConfig(template="a robot video")


def test_minilm_config_errors(minilm):
    with pytest.raises(ValueError, match="minilm gives one token per prompt.* tokens = 512"):
        build_text_encoder(TextConfig(name="minilm"), tokens=512)
    with pytest.raises(ValueError, match="text.path is for umt5"):
        build_text_encoder(TextConfig(name="minilm", path="/some/where"), tokens=1)
    with pytest.raises(ValueError, match="prompts: expected a list of strings, got str"):
        minilm.encode("open the drawer")


WORDS = ["open", "the", "drawer", "press", "button", "push", "puck", "to", "goal"]


@pytest.fixture(scope="module")
def tiny_umt5_dir(tmp_path_factory):
    """A random 2-layer UMT5EncoderModel with a word-level tokenizer that appends </s>, as T5 does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {tok: i for i, tok in enumerate(["<pad>", "</s>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    path = tmp_path_factory.mktemp("umt5")
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(path)
    torch.manual_seed(0)
    config = UMT5Config(vocab_size=len(vocab), d_model=16, d_kv=4, num_heads=2, num_layers=2, d_ff=32,
                        relative_attention_num_buckets=8, relative_attention_max_distance=16)
    UMT5EncoderModel(config).save_pretrained(path)
    return path


def test_umt5_pads_with_zeros_past_prompt(tiny_umt5_dir):
    encoder = build_text_encoder(TextConfig(name="umt5", path=str(tiny_umt5_dir)), tokens=8)
    assert (encoder.dim, encoder.tokens) == (16, 8)
    emb = encoder.encode(["open the drawer", "push the puck to the goal", "press the button"])
    assert emb.shape == (3, 8, 16) and emb.dtype == torch.float32
    for i, length in enumerate([4, 7, 4]):  # words + </s>
        assert (emb[i, :length].abs().sum(-1) > 0).all(), i
        assert (emb[i, length:] == 0).all(), i
    # Same hidden states as the model run directly on the unpadded prompt.
    ids = encoder.tokenizer(["open the drawer"], return_tensors="pt").input_ids
    assert torch.allclose(emb[0, :4], encoder.model(input_ids=ids).last_hidden_state[0], atol=1e-5)
    # Truncated to `tokens`: a long prompt fills every position.
    short = build_text_encoder(TextConfig(name="umt5", path=str(tiny_umt5_dir)), tokens=3)
    assert (short.encode(["push the puck to the goal"]).abs().sum(-1) > 0).all()


def test_umt5_bad_paths(tmp_path, tiny_umt5_dir):
    def build(path):
        return build_text_encoder(TextConfig(name="umt5", path=str(path)), tokens=8)

    with pytest.raises(FileNotFoundError, match=r"text.path\) is empty"):
        build("")
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'nowhere'} is not a directory")):
        build(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path} has no config.json")):
        build(tmp_path)
    (tmp_path / "config.json").write_text((tiny_umt5_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path} has no weights")):
        build(tmp_path)
    (tmp_path / "model.safetensors").symlink_to(tiny_umt5_dir / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path} lacks a tokenizer")):
        build(tmp_path)


def test_umt5_accepts_pipeline_root(tmp_path, tiny_umt5_dir):
    (tmp_path / "text_encoder").symlink_to(tiny_umt5_dir, target_is_directory=True)
    (tmp_path / "tokenizer").symlink_to(tiny_umt5_dir, target_is_directory=True)
    assert build_text_encoder(TextConfig(name="umt5", path=str(tmp_path)), tokens=8).encode(["open"]).shape == (1, 8, 16)


def test_loading_minilm_prints_no_progress_bar_and_leaves_the_setting_alone(capfd):
    from transformers.utils import logging

    assert logging.is_progress_bar_enabled()
    build_text_encoder(TextConfig(name="minilm"), tokens=1)
    assert "Loading weights" not in capfd.readouterr().err  # eval workers each load one: quiet means quiet
    assert logging.is_progress_bar_enabled()
