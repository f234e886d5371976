"""``fastwam`` command line: one subcommand per module, each owning its arguments.

Each entry names a module that defines ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their subcommand runs, so ``fastwam --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = {
    "collect": ("fastwam.envs.collect", "record scripted-expert demonstrations (LeRobot format)"),
    "train": ("fastwam.train", "train a WAM variant on a LeRobot dataset"),
    "eval": ("fastwam.evaluate", "closed-loop evaluation of a checkpoint"),
    "offline": ("fastwam.offline", "open-loop action error of a checkpoint on a dataset's recorded chunks, per inference mode"),
    "bench": ("fastwam.bench", "latency benchmark of the inference variants"),
    "serve": ("fastwam.serve", "serve a checkpoint's policy (openpi's websocket protocol)"),
    "dataset": ("fastwam.data.check", "what a LeRobot dataset holds and what a preset must change to train on it"),
    "plan": ("fastwam.plan", "per-GPU training memory of a preset, and the sharding that fits"),
    "demo": ("fastwam.demo", "collect -> train -> eval -> bench on the embedded default"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastwam", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="full tracebacks on errors (also FASTWAM_DEBUG=1); else one line naming the problem")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            p.set_defaults(_missing=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "_missing", False):
        print(f"fastwam {args.command}: not yet available in this version", file=sys.stderr)
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (ValueError, OSError) as e:  # bad input or files: one line, the message names it
        if args.debug or os.environ.get("FASTWAM_DEBUG"):
            raise
        raise SystemExit(f"fastwam {args.command}: {e} (--debug for the traceback)") from None


if __name__ == "__main__":
    sys.exit(main())
