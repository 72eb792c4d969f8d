"""Property tests: the compiled ``fastgw._core`` and the pure ``fastgw._core_py`` agree.

Hypothesis draws random inputs; each function is run on both modules and the
outcomes compared: same bytes / same dict (by ``repr``, so ``1`` vs ``1.0``
and key order count), or the same exception type.
"""

from __future__ import annotations

from typing import Any, Callable

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw import _core, _core_py

settings.register_profile("core-twins", max_examples=200, deadline=None)
PROPERTY = settings.get_profile("core-twins")


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """``("ok", repr(result))`` or ``("raised", exception type)``: comparable across modules."""
    try:
        return "ok", repr(fn(*args))
    except Exception as exc:  # noqa: BLE001 - the type is what is compared
        return "raised", type(exc)


def same(name: str, *args: Any) -> None:
    compiled = outcome(getattr(_core, name), *args)
    pure = outcome(getattr(_core_py, name), *args)
    assert compiled == pure, f"{name}{args!r}"


# --------------------------------------------------------------------------- frames

BOUNDARIES = [0, 1, 125, 126, 127, 65535, 65536, 65537]
sizes = st.one_of(st.sampled_from(BOUNDARIES), st.integers(0, 70_000))
opcodes = st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA])


@PROPERTY
@given(size=sizes, fill=st.binary(min_size=1, max_size=16), opcode=opcodes, rsv1=st.booleans())
def test_build_frame(size, fill, opcode, rsv1):
    payload = (fill * (size // len(fill) + 1))[:size]
    same("build_frame", payload, opcode, rsv1)
    same("frame_header", size, opcode, rsv1)


@PROPERTY
@given(length=st.one_of(st.sampled_from(BOUNDARIES), st.integers(0, 2**62)), opcode=opcodes, rsv1=st.booleans())
def test_frame_header(length, opcode, rsv1):
    same("frame_header", length, opcode, rsv1)


# --------------------------------------------------------------------------- wire profiles

finite = st.floats(allow_nan=False, allow_infinity=False)
# ties (x.5, and x.5 after the heading's / 5), and where the C paths change representation
edges = st.sampled_from([0.5, 1.5, 2.5, -2.5, 12.5, 22.5, 357.5, 2.4999999999999996, 4.5e15, 5e15, -5e15,
                         9.3e18, 1e300, 2.0**53 + 2, 2**53 + 1, -(2**63), 2**64])
numbers = st.one_of(edges, finite, st.integers(-(10**6), 10**6), st.integers(-(2**63), 2**64))
values = st.one_of(numbers, st.none(), st.text(max_size=4), st.booleans())
LOCATION_KEYS: dict[str, st.SearchStrategy[Any]] = {
    "type": st.just("location_update"),
    "vehicle_id": st.text(max_size=8),
    "latitude": values,
    "longitude": values,
    "speed": values,
    "heading": values,
    "accuracy": values,
    "confidence": values,
    "contributor_count": values,
    "data_freshness": st.sampled_from(["fresh", "recent", "stale"]),
    "metadata": st.one_of(
        st.none(),
        st.text(max_size=4),
        st.fixed_dictionaries({}, optional={"source": st.text(max_size=6), "quality_score": values,
                                            "extra": st.integers()}),
    ),
}


@st.composite
def location_updates(draw: st.DrawFn) -> dict[str, Any]:
    """A location_update with each key present or not, in a random order."""
    keys = draw(st.lists(st.sampled_from(sorted(LOCATION_KEYS)), unique=True))
    return {key: draw(LOCATION_KEYS[key]) for key in keys}


@PROPERTY
@given(message=location_updates(), decimals=st.integers(0, 7), drop_confidence=st.booleans())
def test_reduce_location(message, decimals, drop_confidence):
    before = repr(message)
    same("reduce_location", message, decimals, drop_confidence)
    assert repr(message) == before  # neither mutated it


@PROPERTY
@given(
    message=st.dictionaries(st.text(max_size=4), st.integers(), max_size=12),
    fields=st.lists(st.text(max_size=4), max_size=6).map(tuple),
)
def test_strip_fields(message, fields):
    same("strip_fields", message, fields)


# --------------------------------------------------------------------------- batching

json_objects = st.dictionaries(
    st.text(max_size=6),
    st.one_of(st.integers(-(2**53), 2**53), finite, st.text(max_size=8), st.none(), st.booleans()),
    max_size=5,
)
encoded_items = st.lists(json_objects.map(orjson.dumps), max_size=20)
# any text, including quotes, control characters, non-ASCII and lone surrogates (orjson rejects those)
stamps = st.one_of(st.sampled_from(["2026-11-29T09:20:00.123Z", "\ud800"]), st.text(max_size=30))


@PROPERTY
@given(items=encoded_items, batched_at=stamps)
def test_build_batch(items, batched_at):
    same("build_batch", items, batched_at)
    same("build_batch", tuple(items), batched_at)  # the generic path


keys = st.sampled_from([None, "a", "b", ("route:1", "KA-01"), 7])
operations = st.lists(
    st.one_of(st.tuples(st.just("add"), json_objects.map(orjson.dumps), keys),
              st.tuples(st.just("take"), stamps)),
    max_size=40,
)


def run_batcher(core: Any, envelope: bool, ops: list[tuple]) -> list[Any]:
    batcher = core.Batcher(None, 1 << 20, envelope)
    results = []
    for op in ops:
        if op[0] == "add":
            results.append(batcher.add(op[1], op[2]))
        else:
            results.append(outcome(batcher.take, op[1]))
        results.append(batcher.pending)
    return results


@PROPERTY
@given(envelope=st.booleans(), ops=operations)
def test_batcher_sequences(envelope, ops):
    assert run_batcher(_core, envelope, ops) == run_batcher(_core_py, envelope, ops)


class FakeTransport:
    """Records writes; a fixed buffered size; raises RuntimeError when closed (as uvloop)."""

    def __init__(self, buffered: int, closed: bool) -> None:
        self.buffered, self.closed, self.writes = buffered, closed, []

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes) -> None:
        if self.closed:
            raise RuntimeError("closed")
        self.writes.append(data)


connections = st.lists(
    st.tuples(st.integers(0, 300), st.booleans(), st.integers(0, 600), st.booleans()),  # buffered, closed, limit, env
    max_size=8,
)
deliveries = st.lists(st.tuples(json_objects.map(orjson.dumps), keys, st.lists(st.integers(0, 7))), max_size=12)


def run_hub_round(core: Any, conns: list[tuple], sends: list[tuple]) -> tuple[Any, ...]:
    """enqueue each message to a subset of the connections, then flush them all."""
    transports = [FakeTransport(buffered, closed) for buffered, closed, _, _ in conns]
    batchers = [core.Batcher(t, limit, env) for t, (_, _, limit, env) in zip(transports, conns)]
    woken = []
    for item, key, targets in sends:
        chosen = [batchers[i] for i in sorted(set(targets)) if i < len(batchers)]
        woken.append([batchers.index(b) for b in core.enqueue(item, chosen, key)])
    result = core.flush(batchers, "2026-11-29T09:20:00.123Z")
    return woken, result, [t.writes for t in transports]


@PROPERTY
@given(conns=connections, sends=deliveries)
def test_enqueue_and_flush(conns, sends):
    assert run_hub_round(_core, conns, sends) == run_hub_round(_core_py, conns, sends)
