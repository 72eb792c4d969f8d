"""Benchmark 1 of the issue: bytes on the wire per ``location_update``, and what compressing costs.

A stream of real simulator output (``scripts/train_zstd_dictionary.py``'s
``location_stream`` with the *benchmark* seed, dates in 2030 and times of day
that neither the dictionary's training nor its held-out sample used) is
enveloped exactly as subscribers get it (``channel_message`` on
``route:{id}:{dir}`` / ``route:{id}:all``) and encoded per variant:

* ``json``: the envelope as a text frame, in the ``full``, ``cellular`` and
  ``slow`` profiles (the reduction is ``fastgw.core.reduce_location`` when the
  core has it, else the script's reference copy);
* ``zstd``: the envelope compressed by :func:`fastgw.compression.load_codec`
  (packaged dictionary, one frame per message), a binary frame;
* ``deflate``: permessage-deflate without context takeover
  (:func:`fastgw.compression.deflate_message`), a text frame with RSV1.

Bytes per message = payload + the WebSocket frame header (server frames are
unmasked: 2 bytes up to 125 payload bytes, 4 up to 65535). Every encoded
message is decoded again (zstd with plain ``zstandard`` + the dictionary bytes,
deflate with ``inflate_message``) and must give the envelope back.

``benchmark`` times the per-message work of each variant over the whole
stream (JSON: reduce + envelope encode; zstd/deflate: compressing the encoded
envelope); µs/message = time per stream / messages. The byte figures are in
``benchmark.extra_info``; a summary table with the two ratios of the issue
(targets: ``cellular+zstd / full`` <= 0.25, ``cellular+zstd / deflate(full)``
<= 0.6) is printed at the end of the session (also with
``--benchmark-disable``, then without timings) and written to
``benchmarks/results/wire-size-latest.json``. Benchmarks measure: the only
assertions check round trips.
"""

from __future__ import annotations

import importlib.util
import os
import random
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from fastgw.compression import decompress_message, deflate_message, inflate_message, load_codec
from fastgw.core import OP_BINARY, OP_TEXT, frame_header

REPO = Path(__file__).resolve().parents[1]
RESULTS_PATH = Path(os.environ.get("FASTGW_WIRE_RESULTS", REPO / "benchmarks" / "results" / "wire-size-latest.json"))
#: Messages measured (a seeded sample of the benchmark stream, in stream order).
MESSAGES = 3_000

PROFILES = ("full", "cellular", "slow")
ENCODINGS = ("json", "zstd", "deflate")
VARIANTS = [(p, e) for e in ENCODINGS for p in PROFILES]
TARGETS = {
    ("cellular+zstd", "full+json"): 0.25,
    ("cellular+zstd", "full+deflate"): 0.6,
}


def _load_training_script():
    """``scripts/train_zstd_dictionary.py`` as a module: one definition of the stream and the envelopes."""
    path = REPO / "scripts" / "train_zstd_dictionary.py"
    spec = importlib.util.spec_from_file_location("train_zstd_dictionary", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


@dataclass
class Variant:
    name: str
    bodies: list[bytes]  # frame payloads, one per message
    wire: list[int]  # payload + frame header bytes, one per message
    us_per_message: float | None = None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.wire)


@dataclass
class WireData:
    reducer: str
    dict_id: int
    dict_size: int
    publishes: list
    envelopes: dict[str, list[bytes]]  # profile -> envelope bytes
    build: dict[str, Callable[[], object]]  # "profile+encoding" -> per-stream work to time
    variants: dict[str, Variant] = field(default_factory=dict)


_DATA: list[WireData] = []  # filled by the fixture, read by the summary


def _wire_sizes(bodies: list[bytes], opcode: int) -> list[int]:
    return [len(frame_header(len(b), opcode)) + len(b) for b in bodies]


@pytest.fixture(scope="module")
def wire(request) -> WireData:
    train = _load_training_script()
    stream = train.location_stream(train.BENCH_SEED, times=train.BENCH_TIMES, years=train.BENCH_YEARS)
    rng = random.Random(f"bench:{train.BENCH_SEED}")
    publishes = [stream[i] for i in sorted(rng.sample(range(len(stream)), min(MESSAGES, len(stream))))]
    assert len(publishes) >= 2_000
    reduce, reducer_name = train.location_reducer()
    envelope = train.envelope
    codec = load_codec()

    # The measured sample must not be the training sample.
    training = train.build_samples(train.TRAIN_SEED, times=train.TRAIN_TIMES, years=train.TRAIN_YEARS,
                                   per_profile=train.TRAIN_PER_PROFILE, others=0, reduce=reduce)
    envelopes = {p: [envelope(pub, p, reduce) for pub in publishes] for p in PROFILES}
    assert not set(training.all()) & {e for p in PROFILES for e in envelopes[p]}

    data = WireData(reducer_name, codec.dict_id, len(codec.dictionary), publishes, envelopes, {})
    for profile in PROFILES:
        envs = envelopes[profile]
        json_bodies = envs
        zstd_bodies = [codec.compress(e) for e in envs]
        deflate_bodies = [deflate_message(e) for e in envs]
        for env, z, d in zip(envs, zstd_bodies, deflate_bodies):  # round trips, independent decoders
            assert decompress_message(z, codec.dictionary) == env
            assert inflate_message(d, 1 << 20) == env
        data.variants[f"{profile}+json"] = Variant(f"{profile}+json", json_bodies, _wire_sizes(json_bodies, OP_TEXT))
        data.variants[f"{profile}+zstd"] = Variant(f"{profile}+zstd", zstd_bodies, _wire_sizes(zstd_bodies, OP_BINARY))
        # RSV1 changes a bit of the first header byte, not the header's length.
        data.variants[f"{profile}+deflate"] = Variant(
            f"{profile}+deflate", deflate_bodies, _wire_sizes(deflate_bodies, OP_TEXT)
        )
        data.build[f"{profile}+json"] = (
            lambda pubs=publishes, p=profile: [envelope(pub, p, reduce) for pub in pubs]
        )
        data.build[f"{profile}+zstd"] = lambda envs=envs, c=codec.compress: [c(e) for e in envs]
        data.build[f"{profile}+deflate"] = lambda envs=envs: [deflate_message(e) for e in envs]
    _DATA[:] = [data]
    plugin_name = "fastgw-wire-size-summary"
    if not request.config.pluginmanager.has_plugin(plugin_name):
        request.config.pluginmanager.register(_Summary(), plugin_name)
    return data


@pytest.mark.parametrize("profile,encoding", VARIANTS, ids=[f"{p}+{e}" for p, e in VARIANTS])
def test_wire_size(benchmark, wire, profile, encoding):
    name = f"{profile}+{encoding}"
    variant = wire.variants[name]
    n = len(variant.wire)
    benchmark.group = "wire size: encode work per stream of %d location_update" % n
    benchmark.extra_info.update(
        {
            "messages": n,
            "mean_wire_bytes": round(variant.mean, 2),
            "median_wire_bytes": statistics.median(variant.wire),
            "min_wire_bytes": min(variant.wire),
            "max_wire_bytes": max(variant.wire),
            "mean_payload_bytes": round(statistics.fmean(map(len, variant.bodies)), 2),
            "ratio_to_full_json": round(variant.mean / wire.variants["full+json"].mean, 4),
            "reducer": wire.reducer,
            "dict_id": wire.dict_id,
        }
    )
    out = benchmark(wire.build[name])
    assert out == variant.bodies  # the timed work produces exactly the measured bytes
    stats = getattr(benchmark, "stats", None)
    if stats is not None and not getattr(benchmark, "disabled", False):
        variant.us_per_message = stats.stats.median / n * 1e6
        benchmark.extra_info["us_per_message_median"] = round(variant.us_per_message, 3)


# --------------------------------------------------------------------------- summary


def summary(data: WireData) -> tuple[list[str], dict]:
    v = data.variants
    full = v["full+json"].mean
    lines = [
        f"{len(v['full+json'].wire)} location_update messages from the simulator (benchmark seed); "
        f"bytes = payload + WebSocket frame header; reduction: {data.reducer}; "
        f"zstd dictionary id {data.dict_id} ({data.dict_size} B)",
        f"{'variant':<18} {'mean B':>8} {'median':>7} {'min':>5} {'max':>5} {'/ full':>7} {'µs/msg':>8}",
    ]
    doc: dict = {"messages": len(v["full+json"].wire), "reducer": data.reducer, "dict_id": data.dict_id,
                 "dict_size": data.dict_size, "variants": {}, "ratios": {}}
    for name in (f"{p}+{e}" for p, e in VARIANTS):
        var = v[name]
        us = "-" if var.us_per_message is None else f"{var.us_per_message:.2f}"
        lines.append(
            f"{name:<18} {var.mean:>8.1f} {statistics.median(var.wire):>7.0f} {min(var.wire):>5} "
            f"{max(var.wire):>5} {var.mean / full:>7.3f} {us:>8}"
        )
        doc["variants"][name] = {
            "mean_wire_bytes": round(var.mean, 2),
            "median_wire_bytes": statistics.median(var.wire),
            "min_wire_bytes": min(var.wire),
            "max_wire_bytes": max(var.wire),
            "us_per_message": None if var.us_per_message is None else round(var.us_per_message, 3),
        }
    for (a, b), target in TARGETS.items():
        ratio = v[a].mean / v[b].mean
        verdict = "met" if ratio <= target else "MISSED"
        lines.append(f"ratio {a} / {b} = {ratio:.3f} (target <= {target}: {verdict})")
        doc["ratios"][f"{a} / {b}"] = {"ratio": round(ratio, 4), "target": target, "met": ratio <= target}
    return lines, doc


class _Summary:
    """Prints the table after the run (registered by the ``wire`` fixture)."""

    def pytest_terminal_summary(self, terminalreporter, exitstatus, config):
        if not _DATA:
            return
        lines, doc = summary(_DATA[0])
        terminalreporter.write_sep("=", "wire size per location_update")
        for line in lines:
            terminalreporter.write_line(line)
        from _harness import write_results  # benchmarks/ is on sys.path (conftest.py)

        write_results(terminalreporter, RESULTS_PATH, doc)
