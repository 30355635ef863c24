"""The endpoint side: what answers requests for the model, and clients that send it many."""
