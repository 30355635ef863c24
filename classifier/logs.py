"""How the project's commands log: one format for training, evaluation, quantization and the endpoint.

Lives with the model package because it is the one floor every command stands on (serving/ and training/ may
not import each other).
"""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def configure_cli_logging(level: int = logging.INFO) -> None:
    """INFO and up to stderr in LOG_FORMAT, unless the process has set up logging already (an embedding server
    or a test harness keeps its own)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format=LOG_FORMAT)
