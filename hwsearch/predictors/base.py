"""The protocol every latency predictor obeys, the base the trainable ones share, and their
storage envelope.

`Estimator` is the scikit-learn-style base: hyper-parameters are the dataclass fields a
subclass declares (so they come from ``__init__``), `get_params` / `set_params` read and set
them, fitted attributes end in ``_``, and unfitted use is one line. It also writes and reads the
stored form, so a subclass only says what its fitted state is (`_fitted_state`, `_restore`).

Predictors are stored in the database and read back by other versions of hwsearch, so the
stored form must be version-stable and safe to load: a JSON header (kind, format version,
hyper-parameters) followed by a torch ``state_dict`` written with ``torch.save`` and read with
``torch.load(weights_only=True)``. Never pickle. XGBoost-based predictors store their own
JSON/UBJ model instead of a state_dict but use the same header.
"""

from __future__ import annotations

import abc
import dataclasses
import io
import json
import struct
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

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


def torch_payload(state: dict[str, Any]) -> bytes:
    """A tensor dict saved with ``torch.save`` (loadable with ``weights_only``)."""
    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, buf)
    return buf.getvalue()


def torch_state(payload: bytes) -> dict[str, Any]:
    """Inverse of :func:`torch_payload`; never unpickles arbitrary objects."""
    import torch

    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


def pack_torch(header: dict[str, Any], state: dict[str, Any]) -> bytes:
    """Header plus a tensor dict (see :func:`torch_payload`)."""
    return pack(header, torch_payload(state))


def unpack_torch(data: bytes, kind: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Inverse of :func:`pack_torch`."""
    header, payload = unpack(data, kind)
    return header, torch_state(payload)


class Estimator(abc.ABC):
    """Base of the trainable predictors; subclasses are ``@dataclass(eq=False)`` whose init fields
    are the hyper-parameters.

    `fitted_attr` names the attribute that is None until fitted; `unfitted_hint` says what to call.
    """

    kind: ClassVar[str] = ""
    fitted_attr: ClassVar[str] = ""
    unfitted_hint: ClassVar[str] = "is not fitted yet; call fit(X, y) first"

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        """The hyper-parameters, in ``__init__`` order."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.init)  # type: ignore[arg-type]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.param_names()}

    def set_params(self, **params: Any) -> Self:
        names = self.param_names()
        for k, v in params.items():
            if k not in names:
                raise HwsearchError(f"unknown {type(self).__name__} parameter {k!r}; accepted: {', '.join(names)}")
            setattr(self, k, v)
        return self

    def is_fitted(self) -> bool:
        return getattr(self, self.fitted_attr, None) is not None

    def _require_fitted(self) -> None:
        if not self.is_fitted():
            raise HwsearchError(f"{type(self).__name__} {self.unfitted_hint}")

    # -- storage ---------------------------------------------------------------------------
    @abc.abstractmethod
    def _fitted_state(self) -> tuple[dict[str, Any], bytes]:
        """(header fields beyond kind and params, payload bytes) of a fitted estimator."""

    @abc.abstractmethod
    def _restore(self, header: dict[str, Any], payload: bytes) -> None:
        """Set the fitted attributes from what `_fitted_state` wrote."""

    def to_bytes(self) -> bytes:
        """Version-stable stored form: the common header (kind, params, ...) and the fitted state."""
        self._require_fitted()
        header, payload = self._fitted_state()
        return pack({"kind": self.kind, "params": self.get_params(), **header}, payload)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Inverse of :meth:`to_bytes`: hyper-parameters from the header, then the fitted state."""
        header, payload = unpack(data, cls.kind)
        obj = cls(**header["params"])
        obj._restore(header, payload)
        return obj
