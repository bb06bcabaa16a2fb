"""The protocol every latency predictor obeys, and its storage envelope.

Predictors are stored in the database and read back by other versions of hwsearch, so the
stored form must be version-stable and safe to load: a JSON header (kind, format version,
hyper-parameters) followed by a torch ``state_dict`` written with ``torch.save`` and read with
``torch.load(weights_only=True)``. Never pickle. XGBoost-based predictors store their own
JSON/UBJ model instead of a state_dict but use the same header.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any, Protocol, runtime_checkable

import numpy as np

from hwsearch.errors import HwsearchError

MAGIC = b"HWSP"  # hwsearch predictor
FORMAT_VERSION = 1


@runtime_checkable
class LatencyPredictor(Protocol):
    """scikit-learn style: targets and predictions are latencies in milliseconds."""

    kind: str

    def fit(self, X: np.ndarray, y: np.ndarray) -> LatencyPredictor:
        """Learn from features ``X`` (n, d) and latencies ``y`` (n,) in ms; returns self."""
        ...

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Latency in milliseconds for each row of ``X``."""
        ...

    def to_bytes(self) -> bytes:
        """Version-stable serialised form (no pickle)."""
        ...

    @classmethod
    def from_bytes(cls, data: bytes) -> LatencyPredictor:
        """Inverse of :meth:`to_bytes`."""
        ...


def check_X(X: Any, n_features: int | None = None) -> np.ndarray:
    """A 2-D float64 array with finite values (and the expected width, when known)."""
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise HwsearchError(f"features must be a 2-D array (rows, features); got {arr.ndim} dimensions")
    if n_features is not None and arr.shape[1] != n_features:
        raise HwsearchError(f"features have {arr.shape[1]} columns; this predictor accepts {n_features}")
    if not np.isfinite(arr).all():
        raise HwsearchError("features contain NaN or infinite values; accepted: finite numbers")
    return arr


def check_latency(y: Any, n_rows: int) -> np.ndarray:
    """A 1-D float64 array of positive, finite latencies (ms), one per feature row."""
    arr = np.asarray(y, dtype=np.float64).reshape(-1)
    if arr.shape[0] != n_rows:
        raise HwsearchError(f"got {arr.shape[0]} latencies for {n_rows} feature rows; accepted: one per row")
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise HwsearchError("latencies must be positive, finite milliseconds")
    return arr


def pack(header: dict[str, Any], payload: bytes) -> bytes:
    """``MAGIC | u32 header length | JSON header | payload``."""
    head = json.dumps({"format_version": FORMAT_VERSION, **header}, sort_keys=True).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + payload


def unpack(data: bytes, kind: str | None = None) -> tuple[dict[str, Any], bytes]:
    """Split what :func:`pack` wrote; checks the magic, format version and (optionally) kind."""
    if len(data) < 8 or data[:4] != MAGIC:
        raise HwsearchError("not a stored hwsearch predictor (bad magic bytes)")
    (n,) = struct.unpack("<I", data[4:8])
    header = json.loads(data[8 : 8 + n].decode())
    if header.get("format_version") != FORMAT_VERSION:
        raise HwsearchError(
            f"stored predictor format {header.get('format_version')!r}; accepted: {FORMAT_VERSION}"
        )
    if kind is not None and header.get("kind") != kind:
        raise HwsearchError(f"stored predictor is of kind {header.get('kind')!r}; expected {kind!r}")
    return header, data[8 + n :]


def pack_torch(header: dict[str, Any], state: dict[str, Any]) -> bytes:
    """Header plus a tensor dict saved with ``torch.save`` (loadable with ``weights_only``)."""
    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, buf)
    return pack(header, buf.getvalue())


def unpack_torch(data: bytes, kind: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Inverse of :func:`pack_torch`; never unpickles arbitrary objects."""
    import torch

    header, payload = unpack(data, kind)
    state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    return header, state
