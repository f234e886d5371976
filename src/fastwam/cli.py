"""``fastwam`` command line: one subcommand per module, each owning its arguments.

Each entry names a module that defines ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their subcommand runs, so ``fastwam --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "collect": ("fastwam.envs.collect", "record scripted-expert demonstrations (LeRobot format)"),
    "train": ("fastwam.train", "train a WAM variant on a LeRobot dataset"),
    "eval": ("fastwam.evaluate", "closed-loop evaluation of a checkpoint"),
    "bench": ("fastwam.bench", "latency benchmark of the inference variants"),
    "serve": ("fastwam.serve", "serve a checkpoint's policy over HTTP"),
    "demo": ("fastwam.demo", "collect -> train -> eval -> bench on the embedded default"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastwam", description=__doc__.splitlines()[0])
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
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
