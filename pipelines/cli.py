"""The `loraops` command line. Errors print one line naming cause and fix; exit 2 for bad input, 1 for failures."""

import argparse
import sys
from pathlib import Path

from lora_core import LoraError

from .data import DataError


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loraops", description="Train, version and ship LoRA adapters.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="LoRA on the offline MiniLM base: train, evaluate, merge, save")
    demo.add_argument("--steps", type=positive_int, default=300, help="optimizer steps (default 300)")
    demo.add_argument("--out", default=None, help="adapter folder (default $LORAOPS_HOME/demo/adapter)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo  # imports torch and transformers: only when needed
            run_demo(steps=args.steps, out_dir=Path(args.out) if args.out else None)
    except (LoraError, DataError) as e:
        print(f"loraops: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
