"""The endpoint side: SageMaker's inference handlers, the runtimes that run the model, the local endpoint,
and the clients that send it many images (batch, batch_results)."""
