"""Micro-benchmarks of ``fastgw._core`` (Cython) against its twin ``fastgw._core_py``.

One benchmark group per function, the two implementations side by side:

* ``build_frame``: one text frame around a 468-byte payload;
* ``reduce_location``: the ``slow`` profile (4 decimals, no confidence) of a full
  ``location_update`` (every optional field) built by ``fastgw.messages.location_update``;
* ``build_batch``: ``batched_messages`` around 10 encoded envelopes of 464 B;
* ``Batcher add x10 + take``: 10 keyed adds then one take, frames and envelope mode;
* ``enqueue x1000``: one item to 1,000 empty batchers (the first message of a window);
* ``flush x1000``: 1,000 batchers of 3 items each over a no-op transport (the loop alone).

The pure/compiled median ratio is stored in each benchmark's ``extra_info``
(``ratio_pure_over_compiled``) and printed as a table after the module.
Benchmarks measure; the only assertions check that both modules produce the
same result.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

import pytest

from fastgw import _core_py
from fastgw.messages import location_update
from fastgw.protocol import native

from _harness import CHANNEL, bench_payload  # benchmarks/ is on sys.path (conftest.py)

try:
    from fastgw import _core
except ImportError:  # extension not built: the cython cases are skipped
    _core = None

IMPLEMENTATIONS = {"cython": _core, "python": _core_py}
STAMP = "2026-11-29T09:20:00.123Z"
FAN = 1000  # batchers in the enqueue/flush benchmarks

LOCATION = location_update(
    vehicle_id="KA-57-F-1234", route_id="500-D", direction="UP", latitude=12.917612, longitude=77.622791,
    speed=23.4, heading=87.5, timestamp=1767000000.123, trip_id="500D-UP-0712", accuracy=8.5,
    next_stop_id="BMTC-1234", next_stop_name="Silk Board Junction", distance_to_next_stop=412.7,
    confidence=0.92, contributor_count=3, source="crowdsourced", quality_score=0.87,
)


def envelope(vehicle: int) -> bytes:
    """An encoded ``channel_message`` (464 B: the fan-out benchmark's) for vehicle ``vehicle``."""
    message = dict(bench_payload(), vehicle_id=f"KA-57-F-{1000 + vehicle}")
    return native.channel_message(CHANNEL, message, STAMP, f"5f3a9c1e-{vehicle:03d}")


PAYLOAD_468 = envelope(0).ljust(468)  # JSON allows trailing whitespace
ITEMS = [envelope(i) for i in range(10)]
KEYS = [f"{CHANNEL}\x00KA-57-F-{1000 + i}" for i in range(10)]
assert len(PAYLOAD_468) == 468


class NullTransport:
    """Nothing buffered, writes dropped: what is left to measure is the loop itself."""

    __slots__ = ()

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        pass


# --------------------------------------------------------------------------- cases
#
# Each case: core module -> (function to time, optional per-round setup). A setup
# runs before every round, untimed (benchmark.pedantic), for loops that consume state.

Case = Callable[[ModuleType], tuple[Callable[..., Any], Callable[[], Any] | None]]


def case_build_frame(core: ModuleType):
    return (lambda: core.build_frame(PAYLOAD_468)), None


def case_reduce_location(core: ModuleType):
    return (lambda: core.reduce_location(LOCATION, 4, True)), None


def case_build_batch(core: ModuleType):
    return (lambda: core.build_batch(ITEMS, STAMP)), None


def batcher_case(envelope_mode: bool) -> Case:
    def case(core: ModuleType):
        items = ITEMS if envelope_mode else [core.build_frame(item) for item in ITEMS]
        pairs = list(zip(items, KEYS))
        batcher = core.Batcher(NullTransport(), 1 << 20, envelope_mode)

        def add_and_take() -> bytes:
            add = batcher.add
            for item, key in pairs:
                add(item, key)
            return batcher.take(STAMP)

        return add_and_take, None

    return case


def case_enqueue(core: ModuleType):
    batchers = [core.Batcher(NullTransport(), 1 << 20, False) for _ in range(FAN)]
    frame = core.build_frame(ITEMS[0])

    def empty_them() -> None:
        for batcher in batchers:
            batcher.take(STAMP)

    return (lambda: core.enqueue(frame, batchers, KEYS[0])), empty_them


def flush_case(envelope_mode: bool) -> Case:
    def case(core: ModuleType):
        batchers = [core.Batcher(NullTransport(), 1 << 20, envelope_mode) for _ in range(FAN)]
        items = ITEMS[:3] if envelope_mode else [core.build_frame(item) for item in ITEMS[:3]]

        def fill_them() -> None:
            for item, key in zip(items, KEYS):
                core.enqueue(item, batchers, key)

        return (lambda: core.flush(batchers, STAMP)), fill_them

    return case


CASES: dict[str, Case] = {
    "build_frame 468 B": case_build_frame,
    "reduce_location slow": case_reduce_location,
    "build_batch 10 x 464 B": case_build_batch,
    "Batcher add x10 + take (frames)": batcher_case(False),
    "Batcher add x10 + take (envelope)": batcher_case(True),
    f"enqueue 1 item to {FAN:,} batchers": case_enqueue,
    f"flush {FAN:,} batchers x 3 frames": flush_case(False),
    f"flush {FAN:,} batchers x 3 (envelope)": flush_case(True),
}

# case -> impl -> (median seconds, the benchmark's extra_info), for the ratios
_MEDIANS: dict[str, dict[str, tuple[float, dict[str, Any]]]] = {}


def _record(case: str, impl: str, benchmark: Any) -> None:
    """Keep this run's median; once both implementations ran, store the ratio in both."""
    if benchmark.stats is None:  # --benchmark-disable
        return
    _MEDIANS.setdefault(case, {})[impl] = (benchmark.stats.stats.median, benchmark.extra_info)
    both = _MEDIANS[case]
    if len(both) == 2:
        ratio = both["python"][0] / both["cython"][0]
        for _median, extra_info in both.values():
            extra_info["ratio_pure_over_compiled"] = round(ratio, 2)


@pytest.fixture(scope="module", autouse=True)
def ratio_table(request):
    """After the module: a table of medians and pure/compiled ratios on the terminal."""
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.getplugin("terminalreporter"), plugins.getplugin("capturemanager")
    if reporter is None or not _MEDIANS:
        return
    with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
        reporter.write_sep("=", "fastgw._core: compiled vs pure Python (median)")
        reporter.write_line(f"{'function':<42}{'cython ns':>12}{'python ns':>12}{'ratio':>8}")
        for case, both in _MEDIANS.items():
            if len(both) == 2:
                c, p = both["cython"][0] * 1e9, both["python"][0] * 1e9
                reporter.write_line(f"{case:<42}{c:>12,.0f}{p:>12,.0f}{p / c:>7.1f}x")


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("case", list(CASES))
def test_core(benchmark, case, impl):
    core = IMPLEMENTATIONS[impl]
    if core is None:
        pytest.skip("fastgw._core is not built (pip install -e . --no-build-isolation)")
    benchmark.group = f"core: {case}"
    fn, setup = CASES[case](core)
    if setup is None:
        result = benchmark(fn)
    else:
        result = benchmark.pedantic(fn, setup=setup, rounds=300, warmup_rounds=20)
    _record(case, impl, benchmark)
    reference_fn, reference_setup = CASES[case](_core_py)
    if reference_setup is not None:
        reference_setup()
    assert comparable(result) == comparable(reference_fn())


def comparable(result: Any) -> Any:
    """A result in a form both modules can match: enqueue returns batchers, compared by count."""
    return len(result) if isinstance(result, list) else repr(result)
