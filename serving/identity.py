"""Which model an answer comes from: the artifact's name, and its version, or the version of the Model
Registry package it was promoted from.

`python -m training.jobs promote` sets the two variables of serving/contract.py on the SageMaker Model it
deploys; without them (locally, or after a plain `deploy`) the version is the artifact's own config.json
version.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from serving.contract import MODEL_PACKAGE_ENV, MODEL_VERSION_ENV


def model_identity(config: Mapping, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The answer's `model`: {name, version} and, for a promoted endpoint, `package` (the package's ARN)."""
    identity = {"name": config["name"], "version": environ.get(MODEL_VERSION_ENV) or str(config["version"])}
    if environ.get(MODEL_PACKAGE_ENV):
        identity["package"] = environ[MODEL_PACKAGE_ENV]
    return identity
