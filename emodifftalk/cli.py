"""``emodifftalk <verb>``: thin entry points that parse arguments and call library functions.

Each verb lives in ``emodifftalk/commands/<verb>.py`` and exposes ``register(subparsers)``,
which adds its parser and sets ``func``. Shared spellings across verbs: ``--out``, ``--config``,
``--data``, ``--model``; trailing ``section.key=value`` items override the config preset.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import re
import sys

from emodifftalk.config import PRESETS, ConfigError, build_config
from emodifftalk.threads import add_threads_arg

# verb module names, in the order `--help` lists them
VERBS = (
    "synth", "pack", "inspect", "preview", "ingest", "export_frontal", "check_cameras", "featurize", "rig",
    "train", "eval", "text2au", "animate", "view", "demo",
)


def add_config_args(p: argparse.ArgumentParser, default: str = "tiny") -> None:
    """``--config PRESET`` plus trailing ``section.key=value`` overrides (and ``--threads``: every
    verb with a config does CPU-heavy work)."""
    p.add_argument("--config", default=default, choices=PRESETS,
                   help=f"config preset (default: {default})")
    if "--threads" not in p._option_string_actions:  # a verb may define its own default
        add_threads_arg(p)
    p.add_argument("overrides", nargs="*", default=[], metavar="section.key=value",
                   help="config overrides, e.g. train.lr=1e-4 synth.n_identities=8")


# ``section.key=value`` (also ``section.sub.key=value``); pulled out of argv before argparse runs so
# overrides may stand anywhere, even after options (plain argparse stops taking positionals there).
_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+=")


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(other arguments, config overrides) of a command line."""
    overrides = [a for a in argv if _OVERRIDE.match(a)]
    return [a for a in argv if not _OVERRIDE.match(a)], overrides


def config_from_args(args: argparse.Namespace):
    return build_config(args.config, args.overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emodifftalk",
        description="Editable, emotion-aware 3D Gaussian talking heads (EmoDiffTalk).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        try:
            module = importlib.import_module(f"emodifftalk.commands.{verb}")
        except ModuleNotFoundError as e:
            if e.name != f"emodifftalk.commands.{verb}":
                raise
            continue  # verb not built yet in this checkout
        module.register(sub)
    return parser


def parse_args(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse a command line; ``section.key=value`` overrides may stand anywhere in it."""
    parser = parser or build_parser()
    rest, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(rest)
    if overrides:
        if not hasattr(args, "overrides"):
            parser.error(f"{args.verb or 'this command'} takes no config overrides: {' '.join(overrides)}")
        args.overrides = list(args.overrides) + overrides
    return args


def main(argv: list[str] | None = None) -> int:
    from emodifftalk.interrupt import Terminated, sigterm_as_interrupt, stop_children

    parser = build_parser()
    args = parse_args(argv, parser)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with sigterm_as_interrupt():  # SIGTERM unwinds like Ctrl-C: pools and stage processes stop
        try:
            return _run(args)
        except KeyboardInterrupt as e:
            with contextlib.suppress(Exception):
                stop_children()  # any worker its owner did not stop
            how = "stopped by SIGTERM" if isinstance(e, Terminated) else "interrupted"
            print(f"emodifftalk {args.verb}: {how}", file=sys.stderr)
            return 143 if isinstance(e, Terminated) else 130  # 128 + the signal, as a shell reports it


def _run(args: argparse.Namespace) -> int:
    from emodifftalk.threads import setup_threads
    from emodifftalk.utils import OUTPUT_ERRNOS, OutputError, output_error, setup_logging

    setup_logging(args.verbose)
    try:
        if hasattr(args, "threads"):
            setup_threads(args.threads)  # before any heavy work (and before worker processes start)
        rc = args.func(args)
    except ConfigError as e:
        print(f"emodifftalk {args.verb}: config error: {e}", file=sys.stderr)
        return 2
    except OutputError as e:
        print(f"emodifftalk {args.verb}: error: {e.strerror}", file=sys.stderr)
        return 1
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"emodifftalk {args.verb}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # full disk, read-only or foreign folder met mid-way: one line, with the path
        if e.errno not in OUTPUT_ERRNOS:
            raise
        print(f"emodifftalk {args.verb}: error: {output_error(e, getattr(args, 'out', None)).strerror}",
              file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
