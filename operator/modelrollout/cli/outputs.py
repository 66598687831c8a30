"""What every command shares: exit codes, usage errors, and writing a report where it was asked for."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from modelrollout.core.report import Report, to_json, to_markdown, to_text

EXIT_PROMOTE, EXIT_REJECT, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


class UsageError(Exception):
    """Bad input from the command line; printed without a traceback, exit 2."""


def write_outputs(rep: Report, args: argparse.Namespace) -> None:
    print(to_text(rep))
    if getattr(args, "output", None):
        Path(args.output).write_text(json.dumps(to_json(rep), indent=2) + "\n")
    if getattr(args, "markdown", None):
        Path(args.markdown).write_text(to_markdown(rep))
