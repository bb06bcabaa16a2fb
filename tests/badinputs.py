"""Bad inputs a careful operator would try, by category, with what `hwsearch` answers.

Each case is a command line (and the files it names, made here); each must end with one line
`error: ...` on stderr, exit status 2, no traceback, and a refused import must write no row.
`tests/test_badinputs.py` runs every case in-process (fast); run this file to run them as real
commands and write the table for a person to read:

    .venv/bin/python tests/badinputs.py --out /tmp/notes/issue14-badinputs.md
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

HUGE = "99999999999999999999"
TABLES = ("devices", "kernel_configs", "measurements", "predictors", "jobs", "verifications")


@dataclass
class Case:
    category: str
    what: str  # the bad input, in words
    argv: list[str]
    counts_db: str | None = None  # a database whose rows must not change (a refused import)


@dataclass
class Outcome:
    case: Case
    code: int
    stderr: str
    stdout: str
    rows_written: int | None = None
    seconds: float = 0.0

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.stderr or "Traceback" in self.stdout

    @property
    def ok(self) -> bool:
        """Exit 2, one `error:` line, no traceback, nothing written."""
        return (self.code == 2 and not self.traceback and len(self.lines) == 1 and self.lines[0].startswith("error: ")
                and not self.rows_written)


@dataclass
class World:
    root: Path
    url: str  # a database with the synthetic device `syn` (measurements, an XGBoost predictor)
    corrupt_url: str  # the same, its predictor's artefact overwritten with garbage
    newer_url: str  # migrated by a "newer hwsearch" (revision 0099)
    older_url: str  # at revision 0002 (what the dashboard must not migrate)
    files: dict[str, Path] = field(default_factory=dict)


# --- the world -------------------------------------------------------------------------------


def _measurement(**over: object) -> dict:
    row = {"op": "linear", "params": {"M": 8, "K": 64, "N": 64, "format": "bf16", "sparsity": "dense", "rank": None,
                                      "group_size": None},
           "implementation": "cpu.linear.dense", "backend": "cpu", "native": True, "median_us": 10.0, "p10_us": 9.0,
           "p90_us": 11.0, "mean_us": 10.0, "repeats": 20, "cov": 0.02, "threads": 1, "environment": {},
           "rounds": 3, "spread": 0.01, "unstable": False}
    row.update(over)
    return row


def _device_doc(measurements: list[dict] | None = None, **device: object) -> dict:
    dev = {"name": "imported", "kind": "cpu", "fingerprint": {"backend": "cpu", "cpu_model": "Test CPU", "cpu_count": 2}}
    dev.update(device)
    return {"schema": "hwsearch.device-profile/v1", "device": dev,
            "measurements": [_measurement()] if measurements is None else measurements}


def build_world(root: Path, bomb_bytes: int) -> World:
    """Databases and files the cases name (`bomb_bytes`: a gzip that decompresses to that many bytes)."""
    from searchworld import make_world
    from sqlalchemy import text

    from hwsearch.db.engine import make_engine, open_db, upgrade_schema

    root.mkdir(parents=True, exist_ok=True)
    main = root / "main.db"
    make_world(f"sqlite:///{main}")
    corrupt = root / "corrupt.db"
    shutil.copy(main, corrupt)
    eng = open_db(f"sqlite:///{corrupt}")
    with eng.begin() as conn:
        conn.execute(text("UPDATE predictors SET artefact = :junk"), {"junk": b"\x00not a model\xff" * 8})
    eng.dispose()
    newer = root / "newer.db"
    eng = open_db(f"sqlite:///{newer}")
    with eng.begin() as conn:
        conn.execute(text("UPDATE hwsearch_alembic_version SET version_num = '0099'"))
    eng.dispose()
    older = root / "older.db"
    eng = make_engine(f"sqlite:///{older}")
    upgrade_schema(eng, "0002")
    eng.dispose()
    files: dict[str, Path] = {}

    def put(name: str, data: bytes | str | dict) -> None:
        path = root / "files" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, dict):
            data = json.dumps(data)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        files[name] = path

    (root / "files" / "a-folder").mkdir(parents=True, exist_ok=True)
    files["a-folder"] = root / "files" / "a-folder"
    good_plan = {"schema": "hwsearch.plan/v1", "model": "vit_tiny", "layers": {}}
    put("plan-good.json", good_plan)
    put("plan-latin1.json", '{"model": "vit_tiny", "device": "caf\u00e9"}'.encode("latin-1"))
    put("plan-empty.json", "")
    put("plan-notjson.json", "{model: vit_tiny")
    put("plan-array.json", "[1, 2, 3]")
    put("plan-schema.json", {"schema": "hwsearch.plan/v9", "model": "vit_tiny"})
    put("plan-model.json", {"model": "gpt5"})
    put("plan-layer.json", {"model": "vit_tiny", "layers": {"blocks.99.mlp.fc1": {"format": "int8"}}})
    put("plan-format.json", {"model": "vit_tiny", "layers": {"blocks.0.mlp.fc1": {"format": "int3"}}})
    put("plan-rank.json", {"model": "vit_tiny", "layers": {"blocks.0.mlp.fc1": {"format": "bf16", "rank": -4}}})
    put("plan-deep.json", "[" * 100_000)
    put("plan-huge.json", '{"model": "vit_tiny", "device": "' + "x" * (17 << 20) + '"}')
    put("dev-notjson.json", "not json at all")
    put("dev-latin1.json", json.dumps(_device_doc()).replace("Test CPU", "Caf\u00e9").encode("latin-1"))
    put("dev-schema.json", {"schema": "hwsearch.device-profile/v0"})
    put("dev-nodevice.json", {"schema": "hwsearch.device-profile/v1", "measurements": []})
    put("dev-markup.json", _device_doc(name="<b>orin</b>" + "x" * 255))
    put("dev-negative.json", _device_doc([_measurement(median_us=-5.0)]))
    put("dev-infinite.json", json.dumps(_device_doc([_measurement(p90_us=float("inf"))])))
    put("dev-nan.json", json.dumps(_device_doc([_measurement(mean_us=float("nan"))])))
    put("dev-repeats.json", _device_doc([_measurement(repeats=-1)]))
    put("dev-implname.json", _device_doc([_measurement(implementation="x" * 500)]))
    put("dev-type.json", _device_doc([_measurement(median_us="fast")]))
    put("dev-op.json", _device_doc([_measurement(op="conv2d")]))
    put("dev-params.json", _device_doc([_measurement(params={"M": -1, "K": 64, "N": 64, "format": "bf16"})]))
    put("dev-extra.json", _device_doc([_measurement(owner="me")]))
    put("dev-threads.json", _device_doc([_measurement(threads=0)]))
    put("dev-fingerprint.json", _device_doc(fingerprint={"backend": "cpu", "blob": "x" * (70 << 10)}))
    put("dev-lastbad.json", _device_doc([_measurement(params={**_measurement()["params"], "N": 64 + 8 * i})
                                         for i in range(50)] + [_measurement(cov=-1.0)]))
    put("dev-nokeys.json", _device_doc(name="syn", fingerprint={"backend": "cpu"}))
    put("dev-otherhw.json", _device_doc(name="syn", fingerprint={"backend": "cpu", "cpu_model": "Other CPU"}))
    put("dev-good.json", _device_doc())
    full = gzip.compress(json.dumps(_device_doc()).encode())
    put("dev-truncated.json.gz", full[: len(full) // 2])
    bomb = io.BytesIO()
    with gzip.GzipFile(fileobj=bomb, mode="wb", compresslevel=9) as gz:
        chunk = b" " * (1 << 20)
        for _ in range(bomb_bytes // len(chunk) + 1):
            gz.write(chunk)
    put("dev-bomb.json.gz", bomb.getvalue())
    return World(root, f"sqlite:///{main}", f"sqlite:///{corrupt}", f"sqlite:///{newer}", f"sqlite:///{older}", files)


# --- the cases -------------------------------------------------------------------------------


def cases(w: World) -> list[Case]:
    f, db = w.files, ["--db", w.url]
    out = str(w.root / "out")
    imports = [
        ("a file that does not exist", str(w.root / "missing.json")),
        ("a folder", str(f["a-folder"])),
        ("a .gz cut in half", str(f["dev-truncated.json.gz"])),
        ("a gzip that inflates past the size limit", str(f["dev-bomb.json.gz"])),
        ("not JSON", str(f["dev-notjson.json"])),
        ("Latin-1 bytes, not UTF-8", str(f["dev-latin1.json"])),
        ("another schema", str(f["dev-schema.json"])),
        ("no `device` key", str(f["dev-nodevice.json"])),
        ("a 262-character device name with markup", str(f["dev-markup.json"])),
        ("a negative timing", str(f["dev-negative.json"])),
        ("an infinite timing", str(f["dev-infinite.json"])),
        ("a NaN timing", str(f["dev-nan.json"])),
        ("repeats: -1", str(f["dev-repeats.json"])),
        ("a 500-character implementation name", str(f["dev-implname.json"])),
        ("a timing that is a string", str(f["dev-type.json"])),
        ("an unknown op", str(f["dev-op.json"])),
        ("kernel parameters out of range (M=-1)", str(f["dev-params.json"])),
        ("an unknown field in a measurement", str(f["dev-extra.json"])),
        ("threads: 0", str(f["dev-threads.json"])),
        ("a 70 KB fingerprint", str(f["dev-fingerprint.json"])),
        ("50 good rows, then a bad one (cov -1)", str(f["dev-lastbad.json"])),
        ("into an existing device, without hardware keys", str(f["dev-nokeys.json"])),
        ("into an existing device, other hardware", str(f["dev-otherhw.json"])),
    ]
    out_cases = [Case("device import", what, ["devices", "import", path, *db], counts_db=w.url) for what, path in imports]
    out_cases.append(Case("device import", "--name breaking the device-name rule",
                          ["devices", "import", str(f["dev-good.json"]), "--name", "my orin!", *db], counts_db=w.url))
    out_cases += [
        Case("device export", "export into a folder", ["devices", "export", "syn", str(f["a-folder"]), *db]),
        Case("device export", "export an unknown device", ["devices", "export", "nope", out + ".json", *db]),
        Case("device export", "export where nothing can be written",
             ["devices", "export", "syn", "/proc/hwsearch-test/x.json", *db]),
    ]
    plans = [
        ("a file that does not exist", str(w.root / "missing-plan.json")),
        ("a folder", str(f["a-folder"])),
        ("Latin-1 bytes, not UTF-8", str(f["plan-latin1.json"])),
        ("an empty file", str(f["plan-empty.json"])),
        ("not JSON", str(f["plan-notjson.json"])),
        ("a JSON array", str(f["plan-array.json"])),
        ("another schema", str(f["plan-schema.json"])),
        ("an unknown model", str(f["plan-model.json"])),
        ("a layer the model does not have", str(f["plan-layer.json"])),
        ("an unknown format", str(f["plan-format.json"])),
        ("a negative rank", str(f["plan-rank.json"])),
        ("100,000 nested brackets", str(f["plan-deep.json"])),
        ("a 17 MB file", str(f["plan-huge.json"])),
    ]
    out_cases += [Case("plan file", f"plan validate: {what}", ["plan", "validate", path]) for what, path in plans]
    out_cases += [
        Case("plan file", "export --plan: Latin-1 bytes",
             ["export", "--plan", str(f["plan-latin1.json"]), "--format", "plan", "--out", out + ".plan.json"]),
        Case("plan file", "export --plan: a folder",
             ["export", "--plan", str(f["a-folder"]), "--format", "plan", "--out", out + ".plan.json"]),
        Case("plan file", "export: an unknown format",
             ["export", "--plan", str(f["plan-good.json"]), "--format", "onnx", "--out", out + ".x"]),
        Case("plan file", "predict --plan: Latin-1 bytes",
             ["predict", "--device", "syn", "--model", "vit_tiny", "--plan", str(f["plan-latin1.json"]), *db]),
    ]
    search = ["search", "--model", "vit_tiny", "--device", "syn", *db]
    out_cases += [
        Case("search spec", "--trials 0", [*search, "--trials", "0"]),
        Case("search spec", "--trials 10^15", [*search, "--trials", str(10**15)]),
        Case("search spec", "--workers 10^6", [*search, "--workers", str(10**6)]),
        Case("search spec", "--verify-top-k 10^9", [*search, "--verify-top-k", str(10**9)]),
        Case("search spec", "--seed -1", [*search, "--seed", "-1"]),
        Case("search spec", "an unknown objective", [*search, "--objectives", "latency,bogus"]),
        Case("search spec", "no objective", [*search, "--objectives", ","]),
        Case("search spec", "an unknown sampler", [*search, "--sampler", "annealing"]),
        Case("search spec", "a negative latency budget", [*search, "--max-latency-ms", "-1"]),
        Case("search spec", "a NaN latency budget", [*search, "--max-latency-ms", "nan"]),
        Case("search spec", "quality on a model without weights", [*search, "--objectives", "latency,quality"]),
        Case("search spec", "an unknown device", ["search", "--model", "vit_tiny", "--device", "nope", *db]),
        Case("search spec", "--trials abc", [*search, "--trials", "abc"]),
    ]
    out_cases += [
        Case("CLI argument", "jobs show 99999999999999999999", ["jobs", "show", HUGE, *db]),
        Case("CLI argument", "jobs show -1", ["jobs", "show", "-1", *db]),
        Case("CLI argument", "jobs show 0", ["jobs", "show", "0", *db]),
        Case("CLI argument", "jobs show 12345 (no such job)", ["jobs", "show", "12345", *db]),
        Case("CLI argument", "jobs cancel 99999999999999999999", ["jobs", "cancel", HUGE, *db]),
        Case("CLI argument", "jobs resume 99999999999999999999", ["jobs", "resume", HUGE, *db]),
        Case("CLI argument", "export 99999999999999999999", ["export", HUGE, "--format", "plan", "--out", out, *db]),
        Case("CLI argument", "export with neither a job nor --plan", ["export", "--format", "plan", "--out", out]),
        Case("CLI argument", "profile --threads 100000", ["profile", "--local", "--threads", "100000", *db]),
        Case("CLI argument", "profile --budget 10^12", ["profile", "--local", "--budget", str(10**12), *db]),
        Case("CLI argument", "profile --budget -3", ["profile", "--local", "--budget", "-3", *db]),
        Case("CLI argument", "profile with neither --local nor --device", ["profile", *db]),
        Case("CLI argument", "bench kernels --threads 99999", ["bench", "kernels", "--device", "syn", "--threads", "99999", *db]),
        Case("CLI argument", "dashboard --port 0", ["dashboard", "--port", "0", *db]),
        Case("CLI argument", "cluster start --port 70000", ["cluster", "start", "--port", "70000"]),
        Case("CLI argument", "worker --device 'my orin!'", ["worker", "--device", "my orin!", "--address", "127.0.0.2:1"]),
        Case("CLI argument", "worker --threads 0", ["worker", "--device", "orin", "--address", "127.0.0.2:1", "--threads", "0"]),
        Case("CLI argument", "an unknown command", ["frobnicate"]),
    ]
    out_cases += [
        Case("database", "an unsupported URL (mysql)", ["devices", "--db", "mysql://nobody@localhost/x"]),
        Case("database", "not a URL", ["devices", "--db", "not a url"]),
        Case("database", "PostgreSQL that does not answer", ["devices", "--db", "postgresql://postgres@127.0.0.1:1/x"]),
        Case("database", "SQLite under a folder that cannot be made", ["devices", "--db", "sqlite:////proc/hwsearch-test/x.db"]),
        Case("database", "SQLite file that is not a database", ["devices", "--db", f"sqlite:///{f['plan-good.json']}"]),
        Case("database", "a database migrated by a newer hwsearch", ["devices", "--db", w.newer_url]),
        Case("database", "jobs list on that newer database", ["jobs", "list", "--db", w.newer_url]),
        Case("database", "dashboard on an older database (it does not migrate)", ["dashboard", "--port", "1", "--db", w.older_url]),
        Case("database", "dashboard on a database file that does not exist",
             ["dashboard", "--port", "1", "--db", f"sqlite:///{w.root / 'typo.db'}"]),
        Case("database", "a corrupt predictor artefact", ["predict", "--device", "syn", "--model", "vit_tiny", "--db", w.corrupt_url]),
    ]
    predict = ["predict", "--device", "syn", *db, "--model"]
    out_cases += [
        Case("model reference", "llama3_8b:context=-5000", [*predict, "llama3_8b:context=-5000"]),
        Case("model reference", "llama3_8b:context=10^9", [*predict, "llama3_8b:context=1000000000"]),
        Case("model reference", "llama3_8b:blocks=0", [*predict, "llama3_8b:blocks=0"]),
        Case("model reference", "llama3_8b:blocks=10^9", [*predict, "llama3_8b:blocks=1000000000"]),
        Case("model reference", "llama3_8b:context=abc", [*predict, "llama3_8b:context=abc"]),
        Case("model reference", "vit_base:tokens=5 (no such option)", [*predict, "vit_base:tokens=5"]),
        Case("model reference", "minilm:tokens=100000", [*predict, "minilm:tokens=100000"]),
        Case("model reference", "an unknown model", [*predict, "gpt5"]),
        Case("model reference", "search --model llama3_8b:context=-5000",
             ["search", "--model", "llama3_8b:context=-5000", "--device", "syn", *db]),
        Case("model reference", "profile --for gpt5", ["profile", "--local", "--for", "gpt5", *db]),
    ]
    # the dashboard cases must not find the port taken: the port check comes before the database's
    for case in out_cases:
        if case.argv[0] == "dashboard" and "--port" in case.argv and case.argv[case.argv.index("--port") + 1] == "1":
            case.argv[case.argv.index("--port") + 1] = str(_free_port())
    return out_cases


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- running them ----------------------------------------------------------------------------


def row_counts(url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, text

    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            return {t: int(conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one()) for t in TABLES}
    finally:
        eng.dispose()


@contextlib.contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    before = sys.argv
    sys.argv = ["hwsearch", *argv]
    try:
        yield
    finally:
        sys.argv = before


def run_in_process(argv: list[str]) -> tuple[int, str, str]:
    """`hwsearch ARGV` in this process (what the test suite does: fast); an exception that escapes
    `main` is reported as the traceback a user would have seen."""
    import traceback

    from hwsearch.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with _argv(argv), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        except BaseException:  # noqa: BLE001 - exactly what the test looks for
            err.write(traceback.format_exc())
            code = 1
    return code, out.getvalue(), err.getvalue()


def run_subprocess(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "hwsearch.cli", *argv], capture_output=True, text=True, env=env,
                          timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def run_case(case: Case, runner: Callable[[list[str]], tuple[int, str, str]]) -> Outcome:
    before = row_counts(case.counts_db) if case.counts_db else None
    started = time.perf_counter()
    code, out, err = runner(case.argv)
    took = time.perf_counter() - started
    written = None
    if before is not None:
        after = row_counts(case.counts_db)
        written = sum(after[t] - before[t] for t in TABLES)
    return Outcome(case, code, err, out, written, took)


def table(outcomes: list[Outcome]) -> str:
    """The markdown table of the note: category, input, message, exit status, rows written."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")[:400]

    lines = ["| # | category | bad input | message (stderr) | exit | rows written |", "|---|---|---|---|---|---|"]
    for i, o in enumerate(outcomes, 1):
        msg = " / ".join(o.lines) if o.lines else "(nothing)"
        written = "-" if o.rows_written is None else str(o.rows_written)
        lines.append(f"| {i} | {o.case.category} | {cell(o.case.what)} | {cell(msg)} | {o.code} | {written} |")
    return "\n".join(lines)


def summary(outcomes: list[Outcome]) -> str:
    by_cat: dict[str, int] = {}
    for o in outcomes:
        by_cat[o.case.category] = by_cat.get(o.case.category, 0) + 1
    bad = [o for o in outcomes if not o.ok]
    tracebacks = sum(o.traceback for o in outcomes)
    imports = [o for o in outcomes if o.rows_written is not None]
    return (f"{len(outcomes)} bad inputs ({', '.join(f'{k}: {v}' for k, v in by_cat.items())}); "
            f"exit 2 with one `error:` line: {len(outcomes) - len(bad)} of {len(outcomes)}; tracebacks: {tracebacks}; "
            f"rows written by the {len(imports)} refused imports: {sum(o.rows_written or 0 for o in imports)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    parser.add_argument("--root", type=Path, default=Path("/tmp/hwsearch-badinputs"))
    parser.add_argument("--in-process", action="store_true", help="run in this process (as the tests do)")
    args = parser.parse_args()
    shutil.rmtree(args.root, ignore_errors=True)
    env = {**os.environ, "HWSEARCH_HOME": str(args.root / "home")}
    env.pop("HWSEARCH_DB", None)
    os.environ.update(HWSEARCH_HOME=env["HWSEARCH_HOME"])
    world = build_world(args.root, bomb_bytes=(256 << 20) + (1 << 20))
    runner = run_in_process if args.in_process else (lambda argv: run_subprocess(argv, env))
    outcomes = [run_case(c, runner) for c in cases(world)]
    text = (f"# Bad inputs to `hwsearch` ({'in-process' if args.in_process else 'one process per command'})\n\n"
            f"Generated by `tests/badinputs.py`; {summary(outcomes)}.\n\n{table(outcomes)}\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    sys.exit(0 if all(o.ok for o in outcomes) else 1)


if __name__ == "__main__":
    main()
