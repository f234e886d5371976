"""Who attends to whom in the shared attention: a pure function of token kinds and the variant.

Token kinds, in sequence order ``[context | future | future_clean | action]``:

- CONTEXT: clean latents of the current frame (timestep 0).
- FUTURE: noisy future-frame latents (trained by the video loss; generated at Joint/IDM inference).
- FUTURE_CLEAN: a clean copy of the future that IDM's actions read (generated video at inference).
- ACTION: one token per step of the action chunk (noisy).

Rules (row = query kind, column = key kind; C, F, FC, A):

    fastwam:  C->C   F->C,F   FC->C,FC   A->C,A
    joint:    C->C   F->C,F   FC->C,FC   A->C,F,A
    idm:      C->C   F->C,F   FC->C,FC   A->C,FC,A
    dual:     as idm at inference (without FC tokens, as in Fast-WAM mode, that is fastwam's
              rule); in training each sample follows idm's or fastwam's rule (``dual_mask``)

Worked example, fastwam, layout ((C, 2), (F, 1), (A, 2)), i.e. kinds [C, C, F, A, A]:

    q\\k  C C F A A
    C    1 1 0 0 0
    C    1 1 0 0 0
    F    1 1 1 0 0
    A    1 1 0 1 1
    A    1 1 0 1 1

Because context rows never see later kinds, the context's keys/values are the same whether or not
future/action tokens are present: that is what makes the prefix K/V cache exact.
"""

from __future__ import annotations

import functools

import torch

CONTEXT, FUTURE, FUTURE_CLEAN, ACTION = 0, 1, 2, 3
KIND_NAMES = ("context", "future", "future_clean", "action")

_COMMON = {CONTEXT: {CONTEXT}, FUTURE: {CONTEXT, FUTURE}, FUTURE_CLEAN: {CONTEXT, FUTURE_CLEAN}}
_ACTION_SEES = {
    "fastwam": {CONTEXT, ACTION},
    "joint": {CONTEXT, FUTURE, ACTION},
    "idm": {CONTEXT, FUTURE_CLEAN, ACTION},
    "dual": {CONTEXT, FUTURE_CLEAN, ACTION},
}


def _sees(rule: str) -> dict[int, set[int]]:
    if rule not in _ACTION_SEES:
        raise ValueError(f"unknown mask rule {rule!r}: expected one of {sorted(_ACTION_SEES)}")
    return {**_COMMON, ACTION: _ACTION_SEES[rule]}


@functools.cache
def attention_table(rule: str) -> torch.Tensor:
    """(4, 4) bool: entry [q, k] says whether a query of kind q may attend to a key of kind k (do not modify)."""
    table = torch.zeros(4, 4, dtype=torch.bool)
    for q, keys in _sees(rule).items():
        table[q, sorted(keys)] = True
    return table


Layout = tuple[tuple[int, int], ...]  # a token sequence as runs of (kind, count), in order


def layout_length(layout: Layout) -> int:
    return sum(count for _, count in layout)


def layout_kinds(layout: Layout) -> torch.Tensor:
    """(N,) int kinds of every token of ``layout``."""
    return torch.tensor([kind for kind, count in layout for _ in range(count)], dtype=torch.long)


def attention_mask(query: Layout, key: Layout, rule: str, device: torch.device | None = None) -> torch.Tensor | None:
    """(Nq, Nk) bool mask of queries laid out as ``query`` over keys laid out as ``key``, or None when
    everything may attend to everything (decided from the layouts alone, without tensors)."""
    sees = _sees(rule)
    if all(k in sees[q] for q, _ in query for k, _ in key):
        return None
    return _mask(query, key, rule, device)


@functools.cache
def _mask(query: Layout, key: Layout, rule: str, device: torch.device | None) -> torch.Tensor:
    """Built once per (layouts, rule, device) and shared by every call: do not modify."""
    return attention_table(rule)[layout_kinds(query)[:, None], layout_kinds(key)[None, :]].to(device)


def dual_mask(query: Layout, key: Layout, idm_samples: torch.Tensor) -> torch.Tensor:
    """Dual-mode training: (B, 1, Nq, Nk) bool, IDM's rule for the samples where ``idm_samples`` (B,)
    bool is True, Fast-WAM's (actions blind to the clean future) for the others."""
    device = idm_samples.device
    idm, fastwam = _mask(query, key, "idm", device), _mask(query, key, "fastwam", device)
    return torch.where(idm_samples[:, None, None, None], idm, fastwam)
