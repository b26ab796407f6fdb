"""bal-broker: find Broad Absorption Line quasar candidates in ZTF and Rubin/LSST alert streams.

The package is the runtime half of the project (decode -> light curves -> features -> ONNX models
-> annotated output). It depends on onnxruntime only; the training code lives in ``training``.
"""

__version__ = "0.1.0"
