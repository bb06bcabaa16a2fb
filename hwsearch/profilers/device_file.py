"""The device profile file (`hwsearch devices export/import`): its schema, and reading one safely.

A device file comes from another installation, so nothing in it is trusted: it is read with a
size limit after decompression, decoded as UTF-8 JSON, and every row is validated here (required
keys, finite positive timings, repeats >= 1, names within the database's lengths, the device-name
rule, each kernel rebuilt from its parameters) before anything is written. A bad file is one line
naming the first bad row and field, and how many rows are bad.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from hwsearch.errors import HwsearchError
from hwsearch.profilers.cluster import check_device_name
from hwsearch.profilers.threads import MAX_THREADS

SCHEMA = "hwsearch.device-profile/v1"
MAX_BYTES = 256 << 20  # after decompression: a full profile of a device is a few MB
MAX_JSON_BYTES = 64 << 10  # a fingerprint or a measurement's environment, as JSON
ACCEPTED = "a file written by `hwsearch devices export`"
GZIP_MAGIC = b"\x1f\x8b"


def _json_sized(value: dict[str, Any]) -> dict[str, Any]:
    """A JSON object that serialises within `MAX_JSON_BYTES` (it is stored in a JSON column)."""
    try:
        size = len(json.dumps(value, allow_nan=False))
    except (ValueError, TypeError, RecursionError):
        raise ValueError("not plain JSON (NaN, infinity or nesting too deep)") from None
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{size} bytes of JSON; accepted: at most {MAX_JSON_BYTES}")
    return value


def _device_name(value: str) -> str:
    try:
        return check_device_name(value)
    except HwsearchError as err:
        raise ValueError(str(err)) from None


Timing = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Spread = Annotated[float, Field(ge=0, allow_inf_nan=False)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_sized)]
Label = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:+-]+$")]


class DeviceEntry(BaseModel):
    """The device: its name (the same rule as everywhere), kind and fingerprint."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Annotated[str, AfterValidator(_device_name)]
    kind: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z0-9_-]+$")]
    fingerprint: JsonObject


class MeasurementEntry(BaseModel):
    """One timed kernel; the columns of `measurements` with the database's limits."""

    model_config = ConfigDict(extra="forbid", strict=True)

    op: Annotated[str, Field(min_length=1, max_length=64)]
    params: JsonObject
    implementation: Label
    backend: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z0-9_]+$")]
    native: bool
    median_us: Timing
    p10_us: Timing
    p90_us: Timing
    mean_us: Timing
    repeats: Annotated[int, Field(ge=1, le=10**9)]
    cov: Spread
    threads: Annotated[int, Field(ge=1, le=MAX_THREADS)] | None
    environment: JsonObject
    rounds: Annotated[int, Field(ge=1, le=10**6)] | None = None  # absent in files written before rounds
    spread: Spread | None = None
    unstable: bool = False
    created_at: Annotated[str, Field(max_length=64)] | None = None  # kept in the file only

    @field_validator("median_us", "p10_us", "p90_us", "mean_us", "cov", "spread", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        """JSON numbers: an integer timing is a float (strict mode would refuse it)."""
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    def fields(self) -> dict[str, Any]:
        """The measurement's columns (what the profiler's store writes)."""
        return self.model_dump(exclude={"op", "params", "created_at"})


class DeviceFile(BaseModel):
    """A whole device profile."""

    model_config = ConfigDict(extra="forbid", strict=True)

    schema_: Literal["hwsearch.device-profile/v1"] = Field(alias="schema")
    device: DeviceEntry
    measurements: list[MeasurementEntry]


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when gzip, refused past `MAX_BYTES`."""
    shown = str(path)
    if path.is_dir():
        raise HwsearchError(f"{shown!r} is a folder; accepted: {ACCEPTED}")
    if not path.is_file():
        raise HwsearchError(f"no device profile at {shown!r}; accepted: {ACCEPTED}")
    try:
        with path.open("rb") as raw:
            gz = raw.read(2) == GZIP_MAGIC
        with (gzip.open(path, "rb") if gz else path.open("rb")) as fh:
            data = fh.read(MAX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise HwsearchError(f"cannot read {shown!r} ({type(err).__name__}: {err}); accepted: {ACCEPTED}") from None
    if len(data) > MAX_BYTES:
        raise HwsearchError(f"{shown!r} holds more than {MAX_BYTES >> 20} MiB{' once decompressed' if gz else ''}; "
                            f"accepted: {ACCEPTED} (a device profile is a few MB)")
    return data


def _where(loc: tuple[Any, ...]) -> str:
    if len(loc) >= 2 and loc[0] == "measurements":
        rest = ".".join(str(p) for p in loc[2:])
        return f"measurement {loc[1]}" + (f" field {rest}" if rest else "")
    return "field " + (".".join(str(p) for p in loc) or "document")


def _bad_rows(err: ValidationError) -> int:
    return len({e["loc"][1] for e in err.errors() if len(e["loc"]) >= 2 and e["loc"][0] == "measurements"})


def read_device_file(path: str | Path) -> tuple[DeviceFile, list[Any]]:
    """The validated file and each measurement's kernel spec (in file order); one line if anything is wrong."""
    from hwsearch.kernels.specs import spec_from_params

    path = Path(path)
    shown = str(path)
    data = _read_bytes(path)
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise HwsearchError(f"{shown!r} is not UTF-8 text (byte {err.start}); accepted: {ACCEPTED}") from None
    except json.JSONDecodeError as err:
        raise HwsearchError(f"{shown!r} is not JSON ({err.msg} at line {err.lineno}); accepted: {ACCEPTED}") from None
    except RecursionError:
        raise HwsearchError(f"{shown!r} nests too deep to be a device profile; accepted: {ACCEPTED}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise HwsearchError(f"{shown!r} has schema {str(found)[:80]!r}; accepted: {SCHEMA}, {ACCEPTED}")
    try:
        parsed = DeviceFile.model_validate(doc)
    except ValidationError as err:
        first = err.errors()[0]
        bad = _bad_rows(err)
        count = f" ({bad} bad measurements in all)" if bad > 1 else ""
        msg = first["msg"].removeprefix("Value error, ")
        raise HwsearchError(f"{shown!r}: {_where(first['loc'])}: {msg[:300]}{count}; nothing was stored; "
                            f"accepted: {ACCEPTED}") from None
    specs, bad_rows = [], []
    for i, row in enumerate(parsed.measurements):
        try:
            specs.append(spec_from_params(row.op, row.params))
        except (HwsearchError, TypeError, ValueError) as err:
            bad_rows.append((i, " ".join(str(err).split())))
    if bad_rows:
        i, why = bad_rows[0]
        more = f" ({len(bad_rows)} bad measurements in all)" if len(bad_rows) > 1 else ""
        raise HwsearchError(f"{shown!r}: measurement {i} kernel: {why[:300]}{more}; nothing was stored")
    return parsed, specs
