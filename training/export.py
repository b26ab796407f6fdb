"""ONNX helpers shared by the training code: sessions, I/O descriptions for the manifest, parity checks.

Why one module: every model of the bundle (the light-curve forest, the spectral pipeline, the two
fusion models) is exported, re-loaded with onnxruntime and compared with the Python object it came
from before it is written. The bundle records the measured parity, so a reader of the manifest knows
the ONNX file *is* the model that the metrics describe, to a stated tolerance (1e-5 in probability).

The onnxruntime settings mirror the runtime's (:func:`broker_plugin.models.bundle._session`): CPU provider,
one intra-op thread, so a parity figure measured here holds in the plugin.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: Largest acceptable |p_onnx - p_reference| for any probability output.
PARITY_TOL: float = 1e-5

#: ONNX element types -> manifest dtype names (numpy spelling, what the plugin feeds).
_ELEM_NAMES = {1: "float32", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64"}


class ParityError(AssertionError):
    """An exported graph disagrees with its reference implementation beyond :data:`PARITY_TOL`."""


def model_bytes(model: Any) -> bytes:
    """Serialised bytes of an ``onnx.ModelProto`` (or bytes passed through)."""
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    return model.SerializeToString()


def session(model: Any, threads: int = 1) -> Any:
    """An onnxruntime CPU session for a ``ModelProto``, bytes or a path, configured as the plugin does."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = str(model) if isinstance(model, (str, Path)) else model_bytes(model)
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def run(model_or_session: Any, feeds: Mapping[str, np.ndarray], output: str | None = None) -> Any:
    """Run a model once: all outputs as a dict, or just ``output``."""
    sess = model_or_session if hasattr(model_or_session, "run") else session(model_or_session)
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(None, dict(feeds))
    out = dict(zip(names, values, strict=True))
    return out if output is None else out[output]


def _dim(d: Any) -> int | str | None:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    if d.HasField("dim_param"):
        return str(d.dim_param)
    return None


def _value_info(v: Any) -> dict[str, Any]:
    tt = v.type.tensor_type
    shape = [_dim(d) for d in tt.shape.dim]
    # the batch axis is named differently by each exporter ("N", "s0", None...): write None for any
    # symbolic axis so manifests read the same whichever exporter made the file
    shape = [d if isinstance(d, int) else None for d in shape]
    return {"name": v.name, "shape": shape, "dtype": _ELEM_NAMES.get(tt.elem_type, str(tt.elem_type))}


def io_spec(model: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The graph's inputs and outputs as manifest entries ``{name, shape, dtype}`` (None = any size)."""
    import onnx

    proto = model if hasattr(model, "graph") else onnx.load_from_string(model_bytes(model))
    inits = {i.name for i in proto.graph.initializer}
    inputs = [_value_info(v) for v in proto.graph.input if v.name not in inits]
    outputs = [_value_info(v) for v in proto.graph.output]
    return inputs, outputs


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save(model: Any, path: str | Path) -> str:
    """Write a model as one self-contained file (no external data); returns its sha256."""
    data = model_bytes(model)
    Path(path).write_bytes(data)
    return sha256_bytes(data)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| with NaN == NaN (both missing counts as agreement, one missing as infinite)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ParityError(f"shapes differ: {a.shape} vs {b.shape}")
    both_nan = np.isnan(a) & np.isnan(b)
    d = np.abs(a - b)
    d[both_nan] = 0.0
    d[np.isnan(d)] = np.inf
    return float(d.max()) if d.size else 0.0


def check_parity(name: str, onnx_values: np.ndarray, reference: np.ndarray, tol: float = PARITY_TOL) -> float:
    """Measured max |onnx - reference|; raises :class:`ParityError` above ``tol``."""
    diff = max_abs_diff(onnx_values, reference)
    if not diff <= tol:
        raise ParityError(f"{name}: ONNX differs from its reference by {diff:.3g} (tolerance {tol:g})")
    return diff


def set_metadata(model: Any, props: Mapping[str, Any]) -> None:
    """Replace the model's metadata properties (values stringified), keeping the file deterministic."""
    import onnx

    existing = {p.key: p.value for p in model.metadata_props}
    existing.update({str(k): str(v) for k, v in props.items()})
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, existing)


def torch_to_onnx(module: Any, example: tuple[Any, ...], input_names: list[str], output_names: list[str],
                  opset: int) -> Any:
    """Export a torch module with a dynamic batch axis on every input; returns the ModelProto.

    The one place the project calls ``torch.onnx.export``: the dynamo (torch.export) exporter, the
    maintained path in torch 2.13, with ``external_data=False`` so the weights live inside the one
    file the bundle checksums. The exporter's own chatter (pytree FutureWarnings, the note that
    inputs sharing one batch Dim keep one name, onnxscript progress lines) is silenced: not ours
    to fix, and it would bury the training progress.
    """
    import contextlib
    import logging
    import warnings

    import torch

    batch = torch.export.Dim("batch", min=1)
    quiet = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, example, dynamo=True, input_names=input_names, output_names=output_names,
                dynamic_shapes=tuple({0: batch} for _ in example), opset_version=opset,
                external_data=False, optimize=True, verify=False, verbose=False,
            )
    finally:
        for lg, lvl in zip(quiet, levels, strict=True):
            lg.setLevel(lvl)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    return program.model_proto
