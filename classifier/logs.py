"""How the project's commands log: one format for training, evaluation, quantization and the endpoint.

Lives with the model package because it is the one floor every command stands on (serving/ and training/ may
not import each other).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def configure_cli_logging(level: int = logging.INFO) -> None:
    """INFO and up to stderr in LOG_FORMAT, unless the process has set up logging already (an embedding server
    or a test harness keeps its own)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format=LOG_FORMAT)


def run_command(run: Callable, parse_args: Callable, argv: list[str] | None = None) -> None:
    """A command's main: its logging, then `run(parse_args(argv))`, with a bad argument or a missing file
    ending the process with a one-line error instead of a traceback."""
    configure_cli_logging()
    try:
        run(parse_args(argv))
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
