"""The timing protocol: block sizing, interleaved rounds, the floor, the stability gate, limits,
machine state, and measurements stored with their rounds (old databases included).

The protocol is tested with a fake clock and callables that advance it by chosen amounts, so
nothing here asserts a real timing.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text

from hwsearch.db.engine import current_revision, make_engine, open_db, session_scope, upgrade_schema
from hwsearch.db.models import Device, KernelConfig, Measurement
from hwsearch.errors import HwsearchError
from hwsearch.kernels.specs import LinearSpec
from hwsearch.profilers import machine
from hwsearch.profilers.limits import Limits, beyond, copies_for, limits_from_curve
from hwsearch.profilers.measure import measure_many
from hwsearch.profilers.noise import agreement, stored_noise
from hwsearch.profilers.timing import Harness, Item, Protocol, confirmation_gap, spread


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def costing(clock: FakeClock, seconds, log: list | None = None, name: str = ""):
    """A callable that takes `seconds` (a number, or a function of the call count) on the fake clock."""
    count = {"n": 0}

    def call() -> None:
        cost = seconds(count["n"]) if callable(seconds) else seconds
        count["n"] += 1
        clock.now += cost
        if log is not None:
            log.append(name)

    return call


def test_block_holds_enough_calls_for_a_millisecond():
    clock = FakeClock()
    h = Harness(Protocol(), clock=clock)
    fast = Item.of([costing(clock, 10e-6)])
    h.round(fast)
    assert fast.number >= 100  # 10 µs calls: at least 100 in a 1 ms block
    assert all(b >= 10e-6 * 0.99 for b in fast.rounds[0])
    slow = Item.of([costing(clock, 5e-3)])
    h.round(slow)
    assert slow.number == 1  # one 5 ms call is already a block


def test_copies_rotate_inside_a_block():
    clock = FakeClock()
    log: list[str] = []
    copies = [costing(clock, 1e-4, log, name) for name in "abc"]
    Harness(Protocol(rounds=1, min_blocks=2, max_blocks=2), clock=clock).run([Item.of(copies)])
    assert log[:6] == ["a", "b", "c", "a", "b", "c"]
    assert {log.count(n) for n in "abc"} <= {len(log) // 3, len(log) // 3 + 1}


def test_rounds_visit_every_item_in_a_new_order():
    clock = FakeClock()
    started: list[str] = []
    names = [f"k{i}" for i in range(8)]

    def item(name: str) -> Item:
        call = costing(clock, 2e-3)

        def make():
            started.append(name)  # a round of this item begins
            return [call]

        return Item(make)

    timings = Harness(Protocol(rounds=4, min_blocks=1, max_blocks=1, extra_rounds=0), clock=clock, seed=1).run(
        [item(n) for n in names])
    assert all(t.rounds == 4 for t in timings)
    rounds = [started[i * 8 : (i + 1) * 8] for i in range(4)]
    assert all(sorted(r) == names for r in rounds)  # every item once per round
    assert len({tuple(r) for r in rounds}) > 1  # in a shuffled order


def test_floor_ignores_slow_blocks():
    clock = FakeClock()
    noisy = costing(clock, lambda n: 3e-3 if n % 4 == 3 else 2e-3)  # every fourth call 50 % slower
    t = Harness(Protocol(min_blocks=8, max_blocks=8, extra_rounds=0), clock=clock).run([Item.of([noisy])])[0]
    assert t.median_us == pytest.approx(2000.0)
    assert t.p90_us > t.median_us and t.rounds == 3 and not t.unstable


def test_steady_item_is_not_remeasured_and_not_flagged():
    clock = FakeClock()
    t = Harness(Protocol(), clock=clock).run([Item.of([costing(clock, 1e-3)])])[0]
    assert t.rounds == 3 and t.spread == pytest.approx(0.0) and not t.unstable


def test_gate_remeasures_a_disturbed_round_and_keeps_the_confirmed_floor():
    clock = FakeClock()
    state = {"round": 0}

    def make():
        state["round"] += 1
        slow = state["round"] in (2, 3)  # rounds 2 and 3 disturbed: the floor of round 1 is unconfirmed
        return [costing(clock, 2e-3 if slow else 1e-3)]

    t = Harness(Protocol(min_blocks=3, max_blocks=3), clock=clock).run([Item(make)])[0]
    assert t.rounds == 5  # 3 rounds + 2 extra
    assert t.median_us == pytest.approx(1000.0) and not t.unstable
    assert t.spread == pytest.approx(1.0)


def test_item_that_never_agrees_is_flagged_unstable():
    clock = FakeClock()
    state = {"round": 0}

    def make():
        state["round"] += 1
        return [costing(clock, 1e-3 * (1 + 0.2 * state["round"]))]  # every round 20 % slower than the last

    t = Harness(Protocol(min_blocks=3, max_blocks=3), clock=clock).run([Item(make)])[0]
    assert t.rounds == 5 and t.unstable and t.spread == pytest.approx(2.0 / 1.2 - 1)


def test_gap_and_spread():
    assert confirmation_gap([1.0]) == 0.0
    assert confirmation_gap([1.3, 1.0, 1.04]) == pytest.approx(0.04)
    assert spread([1.0, 1.5, 1.2]) == pytest.approx(0.5)


def test_protocol_rejects_nonsense():
    with pytest.raises(ValueError, match="rounds >= 1"):
        Protocol(rounds=0)


def test_limits_from_the_read_curve():
    curve = [(4 << 20, 120.0), (16 << 20, 150.0), (64 << 20, 60.0), (128 << 20, 31.0), (512 << 20, 30.0)]
    lim = limits_from_curve(curve, {"bf16": 400.0})
    assert lim.memory_gbs == 30.0 and lim.cache_gbs == 150.0 and lim.cold_bytes == 128 << 20
    assert Limits.from_dict(lim.as_dict()) == lim
    assert Limits.from_dict(None) is None and Limits.from_dict({}) is None


def test_a_kernel_faster_than_memory_is_caught():
    lim = Limits(memory_gbs=30.0, cache_gbs=150.0, cold_bytes=128 << 20, peak_gflops={"bf16": 400.0})
    decode = LinearSpec(1, 4096, 4096, "int8")  # 16.8 MB of weights
    assert beyond(decode, 129.0, lim, span_bytes=256 << 20) == "bandwidth"  # 130 GB/s from "memory"
    assert beyond(decode, 700.0, lim, span_bytes=256 << 20) is None  # 24 GB/s: plausible
    assert beyond(decode, 129.0, lim, span_bytes=32 << 20) is None  # copies within cache: cache speed is fine
    big = LinearSpec(512, 2048, 2048, "bf16")
    assert beyond(big, 1000.0, lim, span_bytes=256 << 20) == "compute"  # 4.3 TFLOP/s on a 0.4 TFLOP/s machine


def test_copies_span_the_cold_size():
    assert copies_for(16 << 20, 128 << 20) == 8
    assert copies_for(256 << 20, 128 << 20) == 1
    assert copies_for(1 << 10, 128 << 20) == 64  # capped
    assert copies_for(0, 128 << 20) == 1


def test_measure_many_stores_rounds_and_floors():
    tasks = [("linear", LinearSpec(4, 64, 64, "bf16").params(), "cpu.linear.dense"),
             ("linear", LinearSpec(4, 64, 64, "fp32").params(), "cpu.linear.dense")]
    lim = Limits(memory_gbs=1e6, cache_gbs=1e6, cold_bytes=1 << 20)
    fields = measure_many(tasks, threads=1, limits=lim)
    for f in fields:
        assert f["rounds"] >= 3 and f["spread"] >= 0 and isinstance(f["unstable"], bool)
        env = f["environment"]
        assert len(env["round_floors_us"]) == f["rounds"] and env["copies"] >= 1 and env["block_calls"] >= 1
        assert f["median_us"] == pytest.approx(min(env["round_floors_us"]), rel=1e-3)
        assert f["p10_us"] <= f["p90_us"] and set(env["achieved"]) == {"gbs", "gflops"}


def test_kernel_worker_measures_in_a_child_and_says_what_went_wrong():
    from hwsearch.profilers.kernel_process import KernelWorker

    tasks = [("linear", LinearSpec(4, 64, 64, "fp32").params(), "cpu.linear.dense")]
    lim = Limits(memory_gbs=1e6, cache_gbs=1e6, cold_bytes=1 << 20)
    with KernelWorker() as worker:
        assert worker.pid != os.getpid()
        (field,) = worker.measure_many(tasks, threads=1, limits=lim)
        assert field["rounds"] >= 3 and field["median_us"] > 0 and field["environment"]["copies"] >= 1
        with pytest.raises(HwsearchError, match=r"failed in the kernel-measuring process: .*no\.such"):
            worker.measure_many([("linear", tasks[0][1], "no.such")], threads=1)
        (again,) = worker.measure_many(tasks, threads=1, limits=lim)  # an error leaves the worker serving
        assert again["median_us"] > 0
        worker.process.kill()
        worker.process.wait()
        with pytest.raises(HwsearchError, match=r"died \(exit code -9\) while measuring 1 kernel\(s\) of cpu.linear.dense"):
            worker.measure_many(tasks, threads=1, limits=lim)
    assert worker.process.poll() is not None


def test_machine_state_and_warning():
    mon = machine.LoadMonitor()
    share = mon.idle_share(0.05)
    assert share is None or 0.0 <= share <= 1.0
    snap = machine.snapshot()
    assert "loadavg" in snap and snap["cpu_count"]
    assert machine.busy_warning(0.01, "before") is None
    assert "busy before the profile (40%" in machine.busy_warning(0.4, "before the profile")


def test_agreement():
    doc = agreement([100.0, 100.0, 100.0, 100.0], [104.0, 96.0, 108.0, 120.0])
    assert doc["n"] == 4 and doc["within_5pct"] == 0.5 and doc["within_10pct"] == 0.75


def _old_row(device_id: int, kernel_id: int) -> dict:
    return {"device_id": device_id, "kernel_id": kernel_id, "implementation": "cpu.linear.dense", "backend": "cpu",
            "native": True, "median_us": 10.0, "p10_us": 9.0, "p90_us": 12.0, "mean_us": 10.5, "repeats": 20,
            "cov": 0.05, "environment": "{}", "created_at": datetime.now(UTC).replace(tzinfo=None)}


def test_database_from_before_rounds_upgrades_and_stays_readable(db_url):
    old = make_engine(db_url)
    upgrade_schema(old, "0002")
    with session_scope(old) as s:
        device = Device(name="legacy", kind="cpu", fingerprint={"backend": "cpu"})
        kernel = KernelConfig.build("linear", LinearSpec(1, 64, 64, "bf16").params())
        s.add_all([device, kernel])
        s.flush()
        row = _old_row(device.id, kernel.id)
        s.execute(text(f"INSERT INTO measurements ({', '.join(row)}) VALUES ({', '.join(':' + c for c in row)})"), row)
    old.dispose()
    eng = open_db(db_url)
    try:
        assert current_revision(eng) == "0004"
        with session_scope(eng) as s:
            m = s.scalars(select(Measurement)).one()
            assert m.rounds is None and m.spread is None and m.unstable is False and m.median_us == 10.0
        noise = stored_noise(eng, "legacy")
        assert noise["legacy"] == 1 and noise["with_rounds"] == 0 and noise["unstable"] == 0
    finally:
        eng.dispose()


def test_the_allocator_is_made_steady_once():
    """glibc's adaptive mmap threshold made timings depend on the process's history; the harness
    fixes it before timing (a no-op answering False where the C library is not glibc)."""
    import platform

    from hwsearch.profilers.timing import steady_allocator, time_calls

    first = steady_allocator()
    assert steady_allocator() is first
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert first is True
    assert time_calls([lambda: None]).median_us >= 0
