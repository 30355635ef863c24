"""AWS requests as data, so one code path both prints them (`--dry-run`) and sends them (boto3)."""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import boto3
import botocore.session
from botocore import xform_name
from botocore.exceptions import ClientError
from botocore.model import ServiceModel


@dataclass(frozen=True)
class AwsCall:
    """One API request: `service` is the boto3 client name, `operation` the API name (CreateTrainingJob)."""

    service: str
    operation: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {"service": self.service, "operation": self.operation, "params": self.params},
            default=_describe_body,
            sort_keys=True,
        )


def _describe_body(value: Any) -> Any:
    # An upload's Body is a local file or bytes; the dry run shows what would be sent, not the content.
    if isinstance(value, Path):
        return f"<file {value} ({value.stat().st_size} bytes)>"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    raise TypeError(f"cannot show {type(value).__name__} in a request")


class Aws:
    """Sends AwsCalls with boto3 clients of one region; in a dry run prints them and connects nowhere."""

    def __init__(self, region: str, dry_run: bool = False, out: TextIO | None = None):
        self.region = region
        self.dry_run = dry_run
        self.out = out or sys.stdout
        self._session: boto3.session.Session | None = None
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if self.dry_run:
            raise RuntimeError("a dry run must not create AWS clients")
        if service not in self._clients:
            if self._session is None:
                self._session = boto3.session.Session(region_name=self.region)
            self._clients[service] = self._session.client(service)
        return self._clients[service]

    def send(self, call: AwsCall) -> dict[str, Any]:
        """Send the request (dry run: print it and answer {}). Raises botocore's ClientError on AWS errors."""
        if self.dry_run:
            print(call.to_json(), file=self.out)
            return {}
        params = call.params
        if isinstance(params.get("Body"), Path):
            with params["Body"].open("rb") as body:
                return getattr(self.client(call.service), xform_name(call.operation))(
                    **{**params, "Body": body}
                )
        return getattr(self.client(call.service), xform_name(call.operation))(**params)

    def describe(self, call: AwsCall) -> dict[str, Any] | None:
        """A read of something that may not exist: None when it does not, and always in a dry run."""
        if self.dry_run:
            print(call.to_json(), file=self.out)
            return None
        try:
            return self.send(call)
        except ClientError as error:
            if is_not_found(error):
                return None
            raise


def is_not_found(error: ClientError) -> bool:
    """SageMaker answers a missing resource with ValidationException 'Could not find ...' (a model package
    group: '... does not exist'); S3 with 404."""
    code = error.response.get("Error", {}).get("Code", "")
    message = error.response.get("Error", {}).get("Message", "").lower()
    return code in {"404", "NoSuchKey", "NotFound", "ResourceNotFound", "ObjectNotFoundException"} or (
        code == "ValidationException" and ("could not find" in message or "does not exist" in message)
    )


def as_api_params(service: str, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """sagemaker-core's `serialize` output with each key spelled as the API spells it.

    serialize() rebuilds names from snake_case, so `memory_size_in_mb` becomes MemorySizeInMb where the API
    wants MemorySizeInMB; botocore's model of the operation has the real names (matched ignoring case).
    """
    return _respell(params, _service_model(service).operation_model(operation).input_shape)


@functools.cache
def _service_model(service: str) -> ServiceModel:
    return botocore.session.get_session().get_service_model(service)


def _respell(value: Any, shape) -> Any:
    if shape is None:
        return value
    if shape.type_name == "structure" and isinstance(value, dict):
        members = {name.lower(): name for name in shape.members}
        respelled = {}
        for key, item in value.items():
            name = members.get(key.lower(), key)
            respelled[name] = _respell(item, shape.members.get(name))
        return respelled
    if shape.type_name == "list" and isinstance(value, list):
        return [_respell(item, shape.member) for item in value]
    if shape.type_name == "map" and isinstance(value, dict):
        return {key: _respell(item, shape.value) for key, item in value.items()}
    return value
