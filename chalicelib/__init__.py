"""The API side of dogbreeds: fetch, validate and shrink a photo, then ask the SageMaker endpoint about it."""
