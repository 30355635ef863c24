"""Clients of the endpoint and the API that are neither: the batch command (`python -m clients.batch`) and
the results format it and Batch Transform write (batch_results)."""
