"""``fastwam plan``: will a preset train on N GPUs of M GB, and with which sharding?

Per GPU, in bytes, for AdamW training with fp32 master weights (``train.mixed_precision: bf16``
computes in bf16 from them), for the strategies ``fastwam train`` runs (``train.strategy``,
``fastwam.parallel``):

- parameters 4 P, gradients 4 P, AdamW moments 8 P and, with ``train.ema`` > 0, the EMA 4 P:
  whole on every GPU under ``ddp``, divided by the number of GPUs under ``zero2`` and ``fsdp``;
- weights gathered for compute, in the compute dtype: ``zero2`` holds the whole model gathered
  from the forward pass to the end of the backward pass; ``fsdp`` holds the root unit (embeddings,
  heads: everything outside the blocks, exact) plus two layers' blocks (the current and the
  prefetched next);
- the optimizer step: torch's foreach AdamW holds one fp32 temporary per parameter (4 P, divided
  like the moments) while it steps, after the backward pass has freed activations and gathered
  weights, so the peak is the memory held throughout plus the larger of the forward/backward
  transients (activations, gathered weights) and the step's temporaries (``--measure`` on an
  H200 agreed within 0.5 % for wan22-5b, batch 8, with and without activation checkpointing);
- activations, an **estimate**, for ``train.batch_size`` samples per GPU (each process draws a
  batch of its own): per sample, every token of each expert keeps about
  (16 width + 3 ffn) values of the compute dtype per layer for the backward pass (attention by
  SDPA/flash, so no token x token scores); with activation checkpointing per layer only the
  layer inputs (width values) per layer, plus one layer's full set while it is recomputed.

P, the root's share and the widths come from the model built on PyTorch's meta device (exact, no
memory); the recommendation is the first plan that fits with ``HEADROOM`` spare, trying ddp, ddp
with activation checkpointing and, on several GPUs, zero2, fsdp, then fsdp with activation
checkpointing.

``--measure`` checks the plan on this machine's one GPU: it builds the model there with random
weights, takes a few training steps on random batches of the model's shapes (fp32 weights, the
preset's compute dtype, AdamW as ``fastwam train`` builds it, the plan's activation checkpointing)
and reports the peak of allocated memory and the step time beside the plan's total.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass

from fastwam.config import STRATEGIES

HEADROOM = 0.10  # of GPU memory kept free for the allocator, CUDA context, fragmentation
GB = 1e9


@dataclass(frozen=True)
class Plan:
    preset: str
    gpus: int
    gpu_memory_gb: float
    strategy: str
    activation_checkpointing: bool
    batch_per_gpu: int  # train.batch_size: every process trains on a batch of this size
    parameters: int  # P, exact
    terms_gb: dict  # per GPU
    total_gb: float
    fits: bool


def parameter_count(cfg) -> tuple[int, int]:
    """P of the model ``cfg`` describes and the part of it outside the blocks (FSDP's root unit),
    built on the meta device (exact, no memory)."""
    import torch

    from fastwam.model import WAM

    with torch.device("meta"):
        model = WAM(cfg.model)
    total = sum(p.numel() for p in model.parameters())
    blocks = sum(p.numel() for expert in (model.video, model.action) for p in expert.blocks.parameters())
    return total, total - blocks


def _tokens(m) -> dict[str, int]:
    """Self-attention tokens per sample in training, per expert."""
    future = m.tokens(m.future_frames) * (2 if m.variant.reads_clean_future else 1) if m.variant.has_future else 0
    return {"video": m.tokens(m.context_frames) + future, "action": m.chunk}


def activations_gb(cfg, batch: int, checkpointing: bool, compute_bytes: int) -> float:
    """The activation estimate per GPU (module docstring)."""
    m = cfg.model
    tokens = _tokens(m)
    dims = {"video": (m.video.width, m.video.ffn), "action": (m.action.width, m.action.ffn)}
    full_block = sum(tokens[e] * (16 * w + 3 * f) for e, (w, f) in dims.items())  # values per sample and layer
    if checkpointing:
        values = m.layers * sum(tokens[e] * dims[e][0] for e in dims) + full_block
    else:
        values = m.layers * full_block
    return batch * values * compute_bytes / GB


STEP_TERM = "AdamW step temporaries (fp32, after activations are freed)"


def _freed_before_step(terms: dict[str, float]) -> float:
    """What the forward and backward passes hold and free before the optimizer steps."""
    return sum(v for k, v in terms.items() if k.startswith(("activations", "gathered")))


def plan(cfg, preset_name: str, gpus: int, gpu_memory_gb: float, strategy: str, checkpointing: bool,
         batch_size: int | None = None) -> Plan:
    if gpus < 1:
        raise ValueError(f"--gpus: expected >= 1, got {gpus}")
    if not (math.isfinite(gpu_memory_gb) and gpu_memory_gb > 0):
        raise ValueError(f"--gpu-memory: expected GB > 0, got {gpu_memory_gb}")
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    batch = cfg.train.batch_size if batch_size is None else batch_size
    if batch < 1:
        raise ValueError(f"--batch-size: expected >= 1, got {batch}")
    if gpus == 1 and strategy != "ddp":
        raise ValueError(f"--strategy {strategy}: sharding needs several GPUs; one trains with ddp")
    P, root = parameter_count(cfg)
    compute_bytes = 2 if cfg.train.mixed_precision == "bf16" else 4
    shards = 1 if strategy == "ddp" else gpus
    terms = {
        "parameters (fp32)": 4 * P / shards,
        "gradients (fp32)": 4 * P / shards,
        "AdamW moments (fp32 x 2)": 8 * P / shards,
    }
    if cfg.train.ema > 0:
        terms[f"EMA (fp32, {'full copy' if shards == 1 else 'sharded'})"] = 4 * P / shards
    if strategy == "zero2":
        terms["gathered weights (whole model, compute dtype)"] = compute_bytes * P
    if strategy == "fsdp":
        terms["gathered root (embeddings, heads; compute dtype)"] = compute_bytes * root
        terms["gathered blocks (2 layers, compute dtype)"] = 2 * compute_bytes * (P - root) / cfg.model.layers
    terms = {k: v / GB for k, v in terms.items()}
    per_gpu = batch
    label = "activations (estimate" + (", checkpointed per layer)" if checkpointing else ")")
    terms[label] = activations_gb(cfg, per_gpu, checkpointing, compute_bytes)
    step = 4 * P / shards / GB  # torch's foreach AdamW: one fp32 temporary per parameter while it steps
    total = sum(terms.values()) + max(0.0, step - _freed_before_step(terms))
    terms[STEP_TERM] = step
    return Plan(preset_name, gpus, gpu_memory_gb, strategy, checkpointing, per_gpu, P,
                {k: round(v, 3) for k, v in terms.items()}, round(total, 3), total <= (1 - HEADROOM) * gpu_memory_gb)


def recommend(cfg, preset_name: str, gpus: int, gpu_memory_gb: float, batch_size: int | None = None) -> Plan:
    """The first plan that fits (else the last): ddp, ddp with activation checkpointing, and on several
    GPUs zero2, fsdp, fsdp with activation checkpointing."""
    candidates = [("ddp", False), ("ddp", True)] + ([("zero2", False), ("fsdp", False), ("fsdp", True)] if gpus > 1 else [])
    plans = [plan(cfg, preset_name, gpus, gpu_memory_gb, s, c, batch_size) for s, c in candidates]
    return next((p for p in plans if p.fits), plans[-1])


def measure(cfg, batch: int, checkpointing: bool, steps: int = 3) -> dict:
    """Peak allocated memory (GB) and median step time (s, after the first step) of ``steps`` training
    steps of ``cfg.model`` on the current CUDA GPU: what ``plan`` estimates for one GPU under ddp.
    An out-of-memory error is a result, reported with the step it stopped at."""
    import statistics
    import time

    import torch

    from fastwam.train import EMA, adamw

    if not torch.cuda.is_available():
        raise ValueError("--measure: no CUDA GPU is visible; it measures the memory of this machine's GPU")
    device = torch.device("cuda")
    torch.manual_seed(0)
    with device:
        model = cfg.model.build()
    model.activation_checkpointing = checkpointing
    optimizer = adamw(model, cfg.train)
    ema = EMA(model, cfg.train.ema) if cfg.train.ema > 0 else None
    compute = torch.bfloat16 if cfg.train.mixed_precision == "bf16" else torch.float32
    torch.cuda.reset_peak_memory_stats(device)
    times, error = [], None
    try:
        for _ in range(steps):
            sample = cfg.model.fake_batch(batch).to(device)
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            with torch.autocast("cuda", dtype=compute, enabled=compute != torch.float32):
                loss = model.loss(sample).total
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    except torch.cuda.OutOfMemoryError as e:
        error = f"out of memory at step {len(times) + 1}: {str(e).splitlines()[0]}"
    return {"gpu": torch.cuda.get_device_name(device), "batch": batch, "activation_checkpointing": checkpointing,
            "peak_allocated_gb": round(torch.cuda.max_memory_allocated(device) / GB, 3),
            "peak_reserved_gb": round(torch.cuda.max_memory_reserved(device) / GB, 3),
            "steps": len(times), "step_s": round(statistics.median(times[1:] or times), 4) if times else None,
            "error": error}


def format_plan(p: Plan, recommended: bool) -> str:
    lines = [f"{p.preset}: {p.parameters / 1e9:.3f} B parameters; {p.gpus} GPU(s) x {p.gpu_memory_gb:g} GB, "
             f"strategy {p.strategy}{' + activation checkpointing' if p.activation_checkpointing else ''}"
             f"{' (recommended)' if recommended else ''}, {p.batch_per_gpu} sample(s) per GPU"]
    width = max(map(len, p.terms_gb))
    lines += [f"  {k:<{width}}  {v:9.2f} GB" for k, v in p.terms_gb.items()]
    lines.append(f"  {'total (peak)':<{width}}  {p.total_gb:9.2f} GB of {p.gpu_memory_gb:g} GB: "
                 + ("fits" if p.fits else "does not fit") + f" ({HEADROOM:.0%} kept free)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="wan22-5b", help="tiny, small, wan22-5b or a YAML path")
    parser.add_argument("--variant", default=None, choices=["fastwam", "joint", "idm", "dual"],
                        help="default: the preset's (fastwam unless its YAML names another)")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="GB per GPU")
    parser.add_argument("--strategy", default="", choices=["", *STRATEGIES],
                        help="force one (default: the first that fits of ddp, ddp + checkpointing, zero2, fsdp, fsdp + checkpointing)")
    parser.add_argument("--activation-checkpointing", action="store_true", help="with --strategy")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="samples per GPU (train.batch_size: each process draws its own; default: the preset's)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--measure", action="store_true",
                        help="with --gpus 1: also train a few steps on this machine's GPU (random weights and batches) "
                             "and report the peak memory and step time beside the plan")


def run(args: argparse.Namespace) -> int:
    from fastwam.config import preset

    cfg = preset(args.preset)
    if args.variant:
        cfg = cfg.with_variant(args.variant)
    if args.strategy:
        result = plan(cfg, args.preset, args.gpus, args.gpu_memory, args.strategy, args.activation_checkpointing,
                      args.batch_size)
    elif args.activation_checkpointing:
        raise ValueError("--activation-checkpointing goes with --strategy (the recommendation tries it itself)")
    else:
        result = recommend(cfg, args.preset, args.gpus, args.gpu_memory, args.batch_size)
    measured = None
    if args.measure:
        if args.gpus != 1:
            raise ValueError(f"--measure runs on this machine's one GPU: expected --gpus 1, got {args.gpus}")
        measured = measure(cfg, result.batch_per_gpu, result.activation_checkpointing)
    if args.json:
        print(json.dumps({**asdict(result), **({"measured": measured} if measured else {})}, indent=2))
    else:
        print(format_plan(result, not args.strategy))
        if measured:
            print(format_measured(measured, result))
    return 0 if result.fits and not (measured and measured["error"]) else 1


def format_measured(m: dict, p: Plan) -> str:
    head = f"measured on {m['gpu']}, batch {m['batch']}" + (", activation checkpointing" if m["activation_checkpointing"] else "")
    if m["error"]:
        return f"{head}: {m['error']} (peak allocated {m['peak_allocated_gb']:.1f} GB; plan {p.total_gb:.1f} GB)"
    return (f"{head}: peak allocated {m['peak_allocated_gb']:.1f} GB against the plan's {p.total_gb:.1f} GB "
            f"({m['peak_allocated_gb'] / p.total_gb:.2f}x), reserved {m['peak_reserved_gb']:.1f} GB; "
            f"{m['step_s']:.3f} s per step (median of {m['steps'] - 1 or 1})")
