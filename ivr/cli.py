"""The ``ivr`` command.

Each subcommand lives in the module that owns its feature and exposes two functions,
``add_parser(subparsers)`` and ``run(args) -> int``; this module only lists them, so a
feature's options and its code stay side by side. Those modules keep their heavy imports
inside ``run`` so that ``ivr --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any, Protocol, cast

from ivr import __version__

#: (subcommand, module providing add_parser/run, one-line help)
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("run", "ivr.run_cmd", "run the controller beside an Asterisk"),
    ("demo", "ivr.demo", "simulator + controller + dashboard on an embedded Redis"),
    ("sim", "ivr.sim.cli", "simulated Asterisk (AMI + FastAGI client) running the shipped dialplan"),
    ("check-config", "ivr.config", "check a configuration file"),
    ("replay", "ivr.replay", "replay recorded AMI transcripts offline"),
    ("report|staffing", "ivr.kpi_cli", "KPIs from the event log; agents needed for a target"),
    ("export-queue-log", "ivr.export_cmd", "Asterisk queue_log lines rebuilt from the event stream"),
)


class _CommandModule(Protocol):
    def add_parser(self, subparsers: Any) -> argparse.ArgumentParser: ...

    def run(self, args: argparse.Namespace) -> int: ...


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ivr",
        description="Décroché: make public-service phone lines answer (IVR, queues, callbacks, KPIs).",
    )
    parser.add_argument("--version", action="version", version=f"decroche {__version__}")
    parser.add_argument("--log-level", default="INFO", help="log level (default INFO)")
    parser.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default="auto",
        help="JSON lines, readable console output, or auto (console on a terminal)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _name, module_name, help_text in COMMANDS:
        module = cast(_CommandModule, importlib.import_module(module_name))
        sub = module.add_parser(subparsers)
        sub.set_defaults(_module=module_name)
        if not sub.description:
            sub.description = help_text
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    from ivr.logs import configure_logging

    fmt = args.log_format
    configure_logging(level=args.log_level, json=None if fmt == "auto" else fmt == "json")
    module = cast(_CommandModule, importlib.import_module(args._module))
    try:
        return module.run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
