"""The Engine.IO v4 codec with str/bytes alone: no sockets, no event loop."""

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.protocol import engineio as eio
from fastgw.protocol.engineio import EngineIOError, Packet, PacketType


def test_constants():
    assert eio.PROTOCOL_VERSION == 4
    assert eio.SEPARATOR == "\x1e"
    assert [int(t) for t in PacketType] == list(range(7))
    assert [t.name for t in PacketType] == ["OPEN", "CLOSE", "PING", "PONG", "MESSAGE", "UPGRADE", "NOOP"]


def test_spec_open_packet():
    # socket.io-protocol Readme.md, "Sample session", Request n°1 (open packet):
    #   0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":5000,"maxPayload":1000000}
    expected = ('0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],'
                '"pingInterval":25000,"pingTimeout":5000,"maxPayload":1000000}')
    assert eio.open_packet("lv_VI97HAXpY6yYWAAAC", ["websocket"], 25000, 5000, 1_000_000) == expected
    packet = eio.decode_packet(expected)
    assert packet.type is PacketType.OPEN
    assert list(orjson.loads(packet.data)) == ["sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"]


def test_open_packet_without_upgrades():
    assert eio.open_packet("s", (), 25000, 20000, 100) == (
        '0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":100}')


def test_spec_websocket_probe_frames():
    # socket.io-protocol Readme.md, "Sample session", Request n°6 (WebSocket upgrade):
    #   < 2probe   => Engine.IO probe request
    #   > 3probe   => Engine.IO probe response
    #   > 5        => Engine.IO "upgrade" packet type
    #   > 2        => Engine.IO "ping" packet type / < 3 "pong" / > 1 "close"
    assert eio.decode_packet("2probe") == Packet(PacketType.PING, "probe")
    assert eio.encode_packet(Packet(PacketType.PONG, "probe")) == "3probe"
    assert eio.decode_packet("5") == Packet(PacketType.UPGRADE)
    assert eio.decode_packet("2") == Packet(PacketType.PING)
    assert eio.encode_packet(Packet(PacketType.PONG)) == "3"
    assert eio.decode_packet("1") == Packet(PacketType.CLOSE)
    assert eio.decode_packet("6") == Packet(PacketType.NOOP)


def test_spec_polling_payload_of_two_messages():
    # socket.io-protocol Readme.md, "Sample session", Request n°5 (message out):
    #   42["hello"]\x1e42["world"]
    body = '42["hello"]\x1e42["world"]'
    packets = eio.decode_payload(body, 1_000_000)
    assert packets == [Packet(PacketType.MESSAGE, '2["hello"]'), Packet(PacketType.MESSAGE, '2["world"]')]
    assert eio.encode_payload(packets) == body


def test_spec_polling_payload_mixed_text_and_binary():
    # engine.io-protocol README (v4), "HTTP long-polling" payload example: a "hello"
    # message, a ping and a binary message <01 02 03 04>:
    #   4hello\x1e2\x1ebAQIDBA==
    packets = [Packet(PacketType.MESSAGE, "hello"), Packet(PacketType.PING), Packet(PacketType.MESSAGE, b"\x01\x02\x03\x04")]
    assert eio.encode_payload(packets) == "4hello\x1e2\x1ebAQIDBA=="
    assert eio.decode_payload("4hello\x1e2\x1ebAQIDBA==", 100) == packets
    assert eio.decode_payload(b"4hello\x1e2\x1ebAQIDBA==", 100) == packets


def test_websocket_binary_message_is_raw_bytes():
    # engine.io-protocol README (v4), WebSocket: a binary message is sent as is, e.g. <Buffer 01 02 03 04>
    assert eio.encode_packet(Packet(PacketType.MESSAGE, b"\x01\x02\x03\x04")) == b"\x01\x02\x03\x04"
    assert eio.decode_packet(b"\x01\x02\x03\x04") == Packet(PacketType.MESSAGE, b"\x01\x02\x03\x04")
    assert eio.decode_packet(bytearray(b"")) == Packet(PacketType.MESSAGE, b"")


def test_binary_as_base64_for_clients_without_binary_support():
    assert eio.encode_packet(Packet(PacketType.MESSAGE, b"\x01\x02\x03\x04"), supports_binary=False) == "bAQIDBA=="
    assert eio.decode_packet("bAQIDBA==") == Packet(PacketType.MESSAGE, b"\x01\x02\x03\x04")
    assert eio.decode_packet("b") == Packet(PacketType.MESSAGE, b"")


def test_text_message_round_trip_and_empty_data():
    assert eio.encode_packet(Packet(PacketType.MESSAGE, "héllo ✓")) == "4héllo ✓"
    assert eio.decode_packet("4héllo ✓") == Packet(PacketType.MESSAGE, "héllo ✓")
    # Empty data is sent like no data and comes back as None (reference decodePacket).
    assert eio.encode_packet(Packet(PacketType.MESSAGE, "")) == "4"
    assert eio.decode_packet("4") == Packet(PacketType.MESSAGE, None)
    assert eio.encode_packet(Packet(4, "x")) == "4x"  # plain ints accepted


@pytest.mark.parametrize(
    "frame,message",
    [
        ("", "empty packet"),
        ("7", "unknown packet type '7'"),
        ("x", "unknown packet type 'x'"),
        ("-1", "unknown packet type '-'"),
        (" 4", "unknown packet type ' '"),
        ("b!!!!", "invalid base64"),
        ("bAQIDBA", "invalid base64"),  # missing padding
        ("bAQID BA==", "invalid base64"),
        ("bé", "invalid base64"),
    ],
)
def test_decode_packet_rejections(frame, message):
    with pytest.raises(EngineIOError, match=message):
        eio.decode_packet(frame)


def test_decode_packet_rejects_other_objects():
    with pytest.raises(EngineIOError):
        eio.decode_packet(4)  # type: ignore[arg-type]


def test_encode_packet_rejections():
    with pytest.raises(EngineIOError, match="only allowed in a message"):
        eio.encode_packet(Packet(PacketType.PING, b"x"))
    with pytest.raises(EngineIOError, match="must be str, bytes or None"):
        eio.encode_packet(Packet(PacketType.MESSAGE, 5))  # type: ignore[arg-type]
    with pytest.raises(EngineIOError, match="unknown packet type 9"):
        eio.encode_packet(Packet(9, "x"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "body,message",
    [
        ("", "empty packet"),
        ("4a\x1e\x1e2", "empty packet"),
        ("4a\x1e", "empty packet"),
        ("\x1e4a", "empty packet"),
        ("4a\x1e9", "unknown packet type"),
        ("4a\x1eb!", "invalid base64"),
        (b"4\xff", "not valid UTF-8"),
    ],
)
def test_decode_payload_rejections(body, message):
    with pytest.raises(EngineIOError, match=message):
        eio.decode_payload(body, 1000)


def test_max_payload_enforced_in_utf8_bytes():
    assert eio.decode_payload("4" + "x" * 9, 10) == [Packet(PacketType.MESSAGE, "x" * 9)]
    with pytest.raises(EngineIOError, match="maxPayload"):
        eio.decode_payload("4" + "x" * 10, 10)
    # "é" is two bytes in UTF-8: 1 + 2 * 5 = 11 bytes > 10, though only 6 characters.
    with pytest.raises(EngineIOError, match="maxPayload"):
        eio.decode_payload("4" + "é" * 5, 10)
    assert eio.decode_payload("4" + "é" * 4, 10) == [Packet(PacketType.MESSAGE, "é" * 4)]
    with pytest.raises(EngineIOError, match="maxPayload"):
        eio.decode_payload(b"4" + b"x" * 10, 10)
    assert eio.decode_payload(b"4" + b"x" * 9, 10) == [Packet(PacketType.MESSAGE, "x" * 9)]


def test_encode_payload_rejections():
    with pytest.raises(EngineIOError, match="at least one"):
        eio.encode_payload([])
    with pytest.raises(EngineIOError, match="record separator"):
        eio.encode_payload([Packet(PacketType.MESSAGE, "a\x1eb")])


# No lone surrogates: they cannot reach us inside UTF-8 bodies or WebSocket text frames.
_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x1e")
_text_data = st.one_of(st.none(), st.text(_chars, min_size=1, max_size=50))
_packets = st.one_of(
    st.builds(Packet, st.sampled_from(list(PacketType)), _text_data),
    st.builds(Packet, st.just(PacketType.MESSAGE), st.binary(max_size=50)),
)


@settings(max_examples=200, deadline=None)
@given(_packets)
def test_property_websocket_round_trip(packet):
    assert eio.decode_packet(eio.encode_packet(packet)) == packet
    assert eio.decode_packet(eio.encode_packet(packet, supports_binary=False)) == packet


@settings(max_examples=200, deadline=None)
@given(st.lists(_packets, min_size=1, max_size=8))
def test_property_polling_round_trip(packets):
    body = eio.encode_payload(packets)
    assert isinstance(body, str)
    size = len(body.encode("utf-8"))
    assert eio.decode_payload(body, size) == packets
    assert eio.decode_payload(body.encode("utf-8"), size) == packets
    with pytest.raises(EngineIOError, match="maxPayload"):
        eio.decode_payload(body, size - 1)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_property_decode_packet_never_fails_otherwise(text):
    try:
        packet = eio.decode_packet(text)
    except EngineIOError:
        return
    assert isinstance(packet.type, PacketType)
