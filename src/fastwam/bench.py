"""``fastwam bench latency``: time one action chunk per inference variant, in one process.

Each timed call is what a deployed policy does per chunk: encode the current frame into latents
(the codec), then ``predict_actions`` (instruction embedding cached, as a policy caches it).
Weights are random: latency does not depend on their values.

``--steps 1,2,10`` times every variant at each step count, in one process. JSON keys: preset, steps
(the list), runs: one per step count, each with device, dtype, steps, batch, calls, compiled,
variants.<name>.{median_ms, p90_ms, params, tokens, video_expert_calls, warmup_s},
ratios.{idm_over_fastwam, joint_over_fastwam}, date, host.

``--compile`` runs ``WAM.compile_inference`` (``torch.compile`` of the prefill's layer pass and of each
mode's whole sampling loop; the same for every variant), with inductor's ``freezing`` (weights folded
in as constants, as for any inference-only deployment); the compilation happens during warm-up,
whose duration is reported as ``warmup_s``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fastwam import code_version, cpu_name
from fastwam.checks import check_device, check_output_file, check_threads
from fastwam.codecs import build_codec
from fastwam.config import Config, preset

VARIANT_NAMES = ("fastwam", "joint", "idm")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["latency"], help="what to benchmark")
    parser.add_argument("--preset", default="small", help="model preset (tiny, small, wan22-5b) or a YAML path")
    parser.add_argument("--variants", default="fastwam,joint,idm", help="comma list of fastwam, joint, idm")
    parser.add_argument("--steps", default="10",
                        help="action denoising steps (joint denoises the video in as many; IDM generates it in the "
                             "preset's video_flow.steps), or a comma list timed one after another (1,2,10)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calls", type=int, default=20, help="timed calls per variant (after warm-up)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the prefill and the denoising steps with frozen weights (compiled during warm-up, timed as warmup_s)")
    parser.add_argument("--codec-path", default="", help="wan22: local AutoencoderKLWan dir (default: random Wan2.2 VAE)")
    parser.add_argument("--json", default="", help="write the results here")


def run(args: argparse.Namespace) -> int:
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANT_NAMES))
    if unknown or not names:
        raise SystemExit(f"--variants: unknown {unknown}; expected a comma list of {list(VARIANT_NAMES)}")
    steps = parse_steps(args.steps)
    if args.calls < 1:
        raise SystemExit(f"--calls must be >= 1, got {args.calls}")
    if args.batch < 1:
        raise ValueError(f"--batch: expected >= 1 observations per call, got {args.batch}")
    check_device("--device", args.device)
    if args.json:
        check_output_file("--json", args.json)
    if check_threads("--threads", args.threads):
        torch.set_num_threads(args.threads)
    runs = []
    for count in steps:
        result = benchmark(preset(args.preset), names, steps=count, device=args.device, dtype=DTYPES[args.dtype],
                           batch=args.batch, calls=args.calls, warmup=args.warmup, codec_path=args.codec_path,
                           compile=args.compile)
        result["preset"] = args.preset
        print(format_table(result) + "\n")
        runs.append(result)
    if len(runs) > 1:
        print(format_curve(runs))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"preset": args.preset, "steps": steps, "runs": runs}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def parse_steps(text: str) -> list[int]:
    """'1,2,10' -> [1, 2, 10]: distinct step counts >= 1, in the order given."""
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--steps: expected a comma list of integers such as 1,2,10, got {text!r}") from None
    if not steps or min(steps) < 1 or len(set(steps)) != len(steps):
        raise SystemExit(f"--steps: expected distinct step counts >= 1 such as 1,2,10, got {text!r}")
    return steps


def benchmark(cfg: Config, variants: list[str], *, steps: int, device: str, dtype: torch.dtype, batch: int = 1,
              calls: int = 20, warmup: int = 3, codec_path: str = "", compile: bool = False) -> dict:
    """Median / p90 latency per variant of (encode current frame + predict_actions)."""
    device = torch.device(device)
    with _codec_dir(cfg, codec_path) as path:
        codec = build_codec(_with_codec_path(cfg, path).data.codec, device=device, dtype=dtype)
        frame = _frame(cfg, batch, device)
        out = {"device": _device_name(device), "dtype": str(dtype).removeprefix("torch."), "steps": steps,
               "batch": batch, "calls": calls, "compiled": compile, "code": code_version(), "variants": {}}
        for name in variants:
            # λ weighs a training loss, not inference; a λ = 0 preset has no future tokens to generate,
            # so the variants that generate video are timed at λ = 1
            weight = 1.0 if name != "fastwam" and cfg.model.variant.video_weight == 0 else None
            model_cfg = cfg.with_variant(name, video_weight=weight).model
            torch.manual_seed(0)
            with device:  # initialised where it runs: wan22-5b's 6 B weights take minutes to initialise on a CPU
                model = model_cfg.build()
            model = model.to(dtype=dtype).eval()
            state = torch.zeros(batch, model_cfg.state_dim, device=device, dtype=dtype)
            text = torch.randn(batch, model_cfg.text_tokens, model_cfg.text_dim, device=device, dtype=dtype)

            def call():
                context = codec.encode(frame).to(dtype)[:, :model_cfg.context_frames]
                return model.predict_actions(context, state, text, steps=steps)

            tokens, video_calls = _count_tokens(model, call)  # before compiling: it patches the blocks
            if compile:
                torch._dynamo.reset()  # each variant compiles afresh, within dynamo's recompile limit
                model.compile_inference(dynamic=False, options={"freezing": True})  # weights become constants
            warmup_s, times = _time(call, device, calls, warmup)
            out["variants"][name] = {
                "median_ms": statistics.median(times), "p90_ms": _percentile(times, 90),
                "params": sum(p.numel() for p in model.parameters()), "tokens": tokens,
                "video_expert_calls": video_calls, "warmup_s": round(warmup_s, 1),
            }
            del model
    v = out["variants"]
    if "fastwam" in v:
        out["ratios"] = {f"{n}_over_fastwam": v[n]["median_ms"] / v["fastwam"]["median_ms"] for n in v if n != "fastwam"}
    out["date"] = datetime.date.today().isoformat()
    out["host"] = f"{platform.node()} ({torch.get_num_threads()} threads)"
    return out


def _time(fn, device: torch.device, calls: int, warmup: int) -> tuple[float, list[float]]:
    """Seconds of warm-up (compilation included), then milliseconds per call, synchronizing around each."""
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(warmup):
            fn()
        _sync(device)
        warmup_s = time.perf_counter() - start
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append((time.perf_counter() - start) * 1e3)
    return warmup_s, times


def _count_tokens(model, fn) -> tuple[int, int]:
    """Tokens entering the layer loop during one call, and how often the video expert ran."""
    counts = {"tokens": 0, "video": 0}

    def wrap(block, is_video):
        original = block.attention_inputs

        def counting(tokens):
            counts["tokens"] += tokens.length
            counts["video"] += int(is_video)
            return original(tokens)

        block.attention_inputs = counting
        return original

    originals = [wrap(model.video.blocks[0], True), wrap(model.action.blocks[0], False)]
    try:
        with torch.inference_mode():
            fn()
    finally:
        model.video.blocks[0].attention_inputs, model.action.blocks[0].attention_inputs = originals
    return counts["tokens"], counts["video"]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    lo, hi = int(rank), min(int(rank) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {cpu_name()}, {torch.get_num_threads()} threads"


def _frame(cfg: Config, batch: int, device: torch.device) -> torch.Tensor:
    """The context frames (B, Tc, 3, H, W * cameras) in [-1, 1]: history, then the current frame."""
    d = cfg.data
    return torch.rand(batch, cfg.model.context_frames, 3, d.image_size, d.image_size * len(d.cameras), device=device) * 2 - 1


def _with_codec_path(cfg: Config, path: str) -> Config:
    return cfg.replace(data=dataclasses.replace(cfg.data, codec=dataclasses.replace(cfg.data.codec, path=path)))


@contextlib.contextmanager
def _codec_dir(cfg: Config, path: str):
    """The wan22 VAE directory to use: the given one, or a random Wan2.2-architecture VAE saved to a temp dir."""
    if cfg.data.codec.name != "wan22" or path:
        yield path
        return
    from diffusers import AutoencoderKLWan

    with tempfile.TemporaryDirectory() as tmp:
        AutoencoderKLWan(**WAN22_VAE_CONFIG).save_pretrained(tmp)
        yield tmp


# The Wan2.2-TI2V-5B VAE architecture (diffusers AutoencoderKLWan), for random-weight benchmarks.
WAN22_VAE_CONFIG = dict(
    base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
    attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0, is_residual=True,
    in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
    latents_mean=[0.0] * 48, latents_std=[1.0] * 48,
)


def format_table(result: dict) -> str:
    lines = [f"latency per action chunk: preset {result.get('preset', '?')}, {result['device']}, {result['dtype']}, "
             f"{result['steps']} steps, batch {result['batch']}, {result['calls']} calls"
             f"{', torch.compile' if result.get('compiled') else ''}",
             f"{'variant':<10} {'median ms':>10} {'p90 ms':>10} {'params':>14} {'tokens':>8} {'video calls':>12}"]
    for name, v in result["variants"].items():
        lines.append(f"{name:<10} {v['median_ms']:>10.2f} {v['p90_ms']:>10.2f} {v['params']:>14,} {v['tokens']:>8} "
                     f"{v['video_expert_calls']:>12}")
    for key, value in result.get("ratios", {}).items():
        lines.append(f"{key.replace('_over_', ' / ')}: {value:.2f}x")
    return "\n".join(lines)


def format_curve(runs: list[dict]) -> str:
    """Median ms per chunk, variants by step counts."""
    names = list(runs[0]["variants"])
    lines = ["median ms per chunk by denoising steps", f"{'steps':>6} " + " ".join(f"{n:>10}" for n in names)]
    for run in runs:
        lines.append(f"{run['steps']:>6} " + " ".join(f"{run['variants'][n]['median_ms']:>10.2f}" for n in names))
    return "\n".join(lines)
