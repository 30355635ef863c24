"""SageMaker jobs as code: `python -m training.jobs <command>` (upload-data, train, tune, deploy, teardown,
transform, pipeline, promote, rollback).

Requests are built from the SageMaker Python SDK v3's typed shapes (`sagemaker.core.shapes`, serialised by the
SDK exactly as its resource classes would send them) with image URIs resolved offline by
`sagemaker.core.image_uris`, and sent with boto3, so `--dry-run` can print the very same requests without
connecting. The code shipped to SageMaker is the `training/` package itself (see `source_bundle`).
"""
