"""The model artifact: what a model directory holds and everything that runs it.

The BreedClassifier and its files (model), the preprocessing it was trained with, its ONNX graph (graph,
checked_graph) and the runtimes that execute it on this machine's device (runtime). Both the endpoint
(serving/) and training (training/) stand on this package; it imports nothing else of the project.
"""
