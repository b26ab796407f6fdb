"""Models: the bundle on disk, ONNX inference on it, the candidate score and the output record.

``bundle`` reads and verifies a model bundle, ``inference`` runs its ONNX graphs once per batch,
``scoring`` holds the one candidate rule, ``annotate`` assembles the ``bal`` annotation. Uses
photometry and decode; the pipeline and the runners above it use this package.
"""
