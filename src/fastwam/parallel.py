"""Sharded data parallelism for training: PyTorch FSDP2 (``fully_shard``) over the MoT's blocks.

``train.strategy`` (the names ``fastwam plan`` uses):

- ``ddp``: every process holds the whole model; gradients are all-reduced (accelerate's DDP);
- ``zero2``: parameters, gradients, AdamW moments and the EMA are sharded across processes; a
  block's weights, gathered (in the compute dtype) for the forward pass, stay gathered until the
  backward pass (FSDP2 ``reshard_after_forward=False``);
- ``fsdp`` (ZeRO-3): the same, but each block's gathered weights are freed after every use and
  gathered again when needed (lowest memory, most communication).

Each expert block is one FSDP unit (a distilling teacher's too); the embeddings, output heads and
anything else form the root unit, gathered from the start of the loss to the end of its backward
pass. Gradients are reduce-scattered after every micro-batch (with ``train.accumulate`` > 1 too:
skipping that would keep a whole fp32 gradient on every process until the last one).

Communication, not yet measured on GPUs: the blocks are driven through three methods rather than
``forward`` (cross-attention ``context_kv`` for every layer up front, then ``attention_inputs``
and ``attention_output`` around the shared attention), registered as FSDP forward methods; each
call is gathered and reduce-scattered on its own, so a block moves up to three times the bytes
of a block run by one ``forward`` (a unit per MoT layer with a single forward would cut that).

Why ``fully_shard`` directly rather than accelerate's FSDP plugin: accelerate 1.15 turns FSDP on
for accelerator devices only (its ``state.py`` maps MULTI_GPU and the like to FSDP, never
MULTI_CPU), so the plugin path could not run in the CPU (gloo) tests; ``fully_shard`` is the engine
that plugin calls. accelerate still launches the processes and sets up the process group.

A sharded checkpoint holds one training-state file per process (``shard_file``), each with that
process's shards (plain tensors: loaded weights-only, never unpickled) and a consolidated
``model.safetensors`` that ``Policy`` loads. Resuming one needs a sharded strategy and the same
number of processes.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import nn

from fastwam.config import STRATEGIES

BLOCK_METHODS = ("context_kv", "attention_inputs", "attention_output")

# q, k, v leave attention_inputs as head views; nothing modifies a block's outputs in place, which
# is what FSDP2's warning about returned views guards against
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")


def shard_file(rank: int, world: int) -> str:
    return f"train_state.shard-{rank:05d}-of-{world:05d}.pt"


def is_sharded(strategy: str) -> bool:
    return strategy != "ddp"


def shard(root: nn.Module, blocks: list[nn.Module], strategy: str, device: torch.device,
          compute_dtype: torch.dtype | None) -> None:
    """Shard ``root`` (in place, onto ``device``) across the default process group: one unit per
    block of ``blocks``, the rest in the root unit. ``compute_dtype`` (e.g. bf16): the dtype weights
    are gathered in (gradients reduce in fp32; inputs are left as they are, autocast decides the
    dtype of each op); None: the parameters' own."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    if strategy not in STRATEGIES or not is_sharded(strategy):
        raise ValueError(f"train.strategy: expected zero2 or fsdp to shard, got {strategy!r}")
    if not dist.is_initialized() or dist.get_world_size() < 2:
        raise ValueError(f"train.strategy {strategy}: sharding needs several processes (GPUs: `accelerate launch "
                         "--num_processes N -m fastwam.cli train ...`; CPU: `torchrun --nproc-per-node N -m fastwam.cli "
                         "train ...`); one process trains with ddp")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    # cast_forward_inputs=False: batches, noise, targets, residual streams and RoPE stay fp32
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32 if compute_dtype else None,
                                  cast_forward_inputs=False)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=strategy == "fsdp")
        for method in BLOCK_METHODS:
            register_fsdp_forward_method(block, method)
    fully_shard(root, mesh=mesh, mp_policy=policy, reshard_after_forward=False)  # small; needed again by backward


# -- state: sharded <-> per-process plain tensors ------------------------------------------------

def _is_dtensor(x) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(x, DTensor)


def local_state(tree):
    """A state (nested dicts/lists) with every sharded tensor replaced by this process's shard."""
    if isinstance(tree, dict):
        return {k: local_state(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(local_state(v) for v in tree)
    return tree.to_local().detach().cpu() if _is_dtensor(tree) else (tree.detach().cpu() if torch.is_tensor(tree) else tree)


def shard_like(local: torch.Tensor, reference: torch.Tensor, name: str) -> torch.Tensor:
    """This process's shard ``local`` as a tensor sharded like ``reference`` (a plain copy if it is plain)."""
    from torch.distributed.tensor import DTensor

    if not _is_dtensor(reference):
        return local.to(reference.device)
    if local.shape != reference.to_local().shape:
        raise ValueError(f"{name}: a shard of shape {tuple(local.shape)}, where this process holds "
                         f"{tuple(reference.to_local().shape)}")
    return DTensor.from_local(local.to(reference.device), reference.device_mesh, reference.placements,
                              shape=reference.shape, stride=reference.stride())


def load_local_model_state(model: nn.Module, local: dict) -> None:
    """Load per-process shards (``local_state(model.state_dict())`` of an identically sharded model)."""
    current = model.state_dict()
    missing, unexpected = set(current) - set(local), set(local) - set(current)
    if missing or unexpected:
        raise ValueError(f"model shards: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.load_state_dict({k: shard_like(local[k], current[k], k) for k in current})


def load_local_optimizer_state(optimizer: torch.optim.Optimizer, local: dict) -> None:
    """Load per-process optimizer shards: each moment takes its parameter's sharding."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {int(i): {k: shard_like(v, params[int(i)], f"optimizer state {i}.{k}") if torch.is_tensor(v) and v.dim() > 0
                      else v for k, v in s.items()}
             for i, s in local["state"].items()}
    optimizer.load_state_dict({"state": state, "param_groups": local["param_groups"]})


def gather_full(state: dict, keep: bool) -> dict:
    """Every tensor of ``state`` whole, on CPU, gathered one at a time (all processes must call;
    only those with ``keep`` get the tensors, the others an empty dict)."""
    out = {}
    for k, v in state.items():
        full = v.full_tensor() if _is_dtensor(v) else v
        if keep:
            out[k] = full.detach().cpu()
    return out


def scalar(x) -> float:
    """A (possibly sharded-reduction) 0-d tensor as a float, e.g. a gradient norm under FSDP."""
    return float(x.full_tensor() if _is_dtensor(x) else x)


def all_agree(ok: bool, device: torch.device) -> bool:
    """True on every process iff ``ok`` on every process (processes pick a checkpoint together)."""
    if not dist.is_initialized():
        return ok
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def all_checksums(name: str, digest: str) -> dict[str, str]:
    """Every process's (file name, SHA-256) of its own shard, on every process: each hashes its own."""
    if not dist.is_initialized():
        return {name: digest}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (name, digest))
    return dict(gathered)
