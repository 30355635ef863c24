"""The endpoint side: SageMaker's inference handlers, the runtimes that run the model, the local endpoint."""
