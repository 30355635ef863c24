"""Model, data, training, inference handlers, the local endpoint and SageMaker job launchers."""
