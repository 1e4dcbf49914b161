"""The `offrl` command. Each command group lives in its own module with a `register(subparsers)`.

The library never imports this package; it is the top layer.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, what it adds) — a module missing from an install is skipped, not fatal.
COMMAND_MODULES = [
    "offrl.cli.demo",        # demo
    "offrl.cli.datasets",    # datasets list|info|download|path|convert|build
    "offrl.cli.train",       # train, evaluate
    "offrl.cli.report",      # report, compare
    "offrl.cli.sweep",       # sweep, quickstart
    "offrl.cli.leaderboard", # submit, leaderboard verify|build|serve|add-token
    "offrl.cli.behaviour",   # behaviour train|status (SAC behaviour policies)
    "offrl.cli.finetune",    # finetune (offline-to-online)
]


def build_parser() -> argparse.ArgumentParser:
    from offrl import __version__

    parser = argparse.ArgumentParser(
        prog="offrl",
        description="Offline RL datasets, baselines, statistics and leaderboard.\n\n"
                    "Start with `offrl demo`, then `offrl datasets list`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"offrl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # Registers the "sac-replay" recipe builder (medium-replay datasets), which lives above
    # the data layer, so that any command that builds a dataset can build those too.
    import offrl.training.behaviour  # noqa: F401

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user-facing errors: one clear line, no traceback
        from offrl.errors import UserError

        if isinstance(exc, UserError):
            print(f"offrl: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
