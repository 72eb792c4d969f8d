"""The Socket.IO v5 codec with str/bytes alone: no sockets, no event loop."""

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.protocol import socketio as sio
from fastgw.protocol.socketio import Decoder, Packet, PacketType, SocketIOError

B1234 = b"\x01\x02\x03\x04"


def decode_all(frames, decoder=None):
    """Feed frames to a decoder; return the complete packets it produced."""
    decoder = decoder or Decoder()
    out = [decoder.add(f) for f in frames]
    return [p for p in out if p is not None]


def test_constants():
    assert sio.PROTOCOL_VERSION == 5
    assert [(t.name, int(t)) for t in PacketType] == [
        ("CONNECT", 0), ("DISCONNECT", 1), ("EVENT", 2), ("ACK", 3),
        ("CONNECT_ERROR", 4), ("BINARY_EVENT", 5), ("BINARY_ACK", 6)]


# Every row of the tables in socket.io-protocol Readme.md, "Packet encoding" (packet → encoded).
SPEC_TABLE = [
    # - connection to a namespace
    (Packet(PacketType.CONNECT, "/"), ["0"]),
    (Packet(PacketType.CONNECT, "/", {"sid": "wZX3oN0bSVIhsaknAAAI"}), ['0{"sid":"wZX3oN0bSVIhsaknAAAI"}']),
    (Packet(PacketType.CONNECT, "/admin"), ["0/admin,"]),
    (Packet(PacketType.CONNECT, "/admin", {"sid": "oSO0OpakMV_3jnilAAAA"}), ['0/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}']),
    (Packet(PacketType.CONNECT_ERROR, "/", {"message": "Not authorized"}), ['4{"message":"Not authorized"}']),
    # - sending and receiving data
    (Packet(PacketType.EVENT, "/", ["foo"]), ['2["foo"]']),
    (Packet(PacketType.EVENT, "/admin", ["bar"]), ['2/admin,["bar"]']),
    (Packet(PacketType.BINARY_EVENT, "/", ["baz", B1234]), ['51-["baz",{"_placeholder":true,"num":0}]', B1234]),
    (Packet(PacketType.BINARY_EVENT, "/admin", ["baz", b"\x01\x02", b"\x03\x04"]),
     ['52-/admin,["baz",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]', b"\x01\x02", b"\x03\x04"]),
    # - acknowledgement
    (Packet(PacketType.EVENT, "/", ["foo"], 12), ['212["foo"]']),
    (Packet(PacketType.ACK, "/", [], 12), ["312[]"]),
    (Packet(PacketType.EVENT, "/admin", ["foo"], 13), ['2/admin,13["foo"]']),
    (Packet(PacketType.ACK, "/admin", ["bar"], 13), ['3/admin,13["bar"]']),
    (Packet(PacketType.BINARY_EVENT, "/", ["foo", B1234], 14), ['51-14["foo",{"_placeholder":true,"num":0}]', B1234]),
    (Packet(PacketType.ACK, "/", ["bar"], 14), ['314["bar"]']),
    (Packet(PacketType.EVENT, "/", ["foo"], 15), ['215["foo"]']),
    (Packet(PacketType.BINARY_ACK, "/", ["bar", B1234], 15), ['61-15["bar",{"_placeholder":true,"num":0}]', B1234]),
    # - disconnection from a namespace
    (Packet(PacketType.DISCONNECT, "/"), ["1"]),
    (Packet(PacketType.DISCONNECT, "/admin"), ["1/admin,"]),
]


@pytest.mark.parametrize("packet,encoded", SPEC_TABLE)
def test_spec_table_encode(packet, encoded):
    assert sio.encode(packet) == encoded


@pytest.mark.parametrize("packet,encoded", SPEC_TABLE)
def test_spec_table_decode(packet, encoded):
    (decoded,) = decode_all(encoded)
    # A complete binary packet comes back as EVENT/ACK with the bytes in place (reference decoder).
    plain = {PacketType.BINARY_EVENT: PacketType.EVENT, PacketType.BINARY_ACK: PacketType.ACK}
    assert decoded == Packet(plain.get(packet.type, packet.type), packet.namespace, packet.data, packet.id)


def test_binary_data_in_plain_event_or_ack_is_sent_as_binary():
    # socket.io-protocol Readme.md: "Example: { type: EVENT, namespace: "/", data: ["foo"] } will be sent as 42["foo"]",
    # and the reference encoder turns an EVENT/ACK holding binary into BINARY_EVENT/BINARY_ACK.
    assert sio.encode(Packet(PacketType.EVENT, "/", ["baz", B1234])) == ['51-["baz",{"_placeholder":true,"num":0}]', B1234]
    assert sio.encode(Packet(PacketType.ACK, "/", [bytearray(b"\x00")], 3)) == ['61-3[{"_placeholder":true,"num":0}]', b"\x00"]
    assert sio.frame(Packet(PacketType.EVENT, "/", ["foo"])) == ['42["foo"]']


def test_spec_sample_session_frames():
    # socket.io-protocol Readme.md, "Sample session":
    #   42["hey","Jude"]                              (Request n°4, server emit)
    #   40                                            (Request n°2, namespace connection request)
    #   40{"sid":"wZX3oN0bSVIhsaknAAAI"}              (Request n°3)
    #   > 40/admin,                                   => request access to the admin namespace
    #   < 40/admin,{"sid":"-G5j-67EZFp-q59rADQM"}     => grant access to the admin namespace
    #   > 42/admin,1["tellme"]                        => Socket.IO "EVENT" packet with acknowledgement
    #   < 461-/admin,1[{"_placeholder":true,"num":0}] => Socket.IO "BINARY_ACK" packet with a placeholder
    assert sio.frame(sio.event("/", "hey", "Jude")) == ['42["hey","Jude"]']
    assert decode_all(["0"]) == [Packet(PacketType.CONNECT, "/")]
    assert sio.frame(sio.connect_reply("/", "wZX3oN0bSVIhsaknAAAI")) == ['40{"sid":"wZX3oN0bSVIhsaknAAAI"}']
    assert decode_all(["0/admin,"]) == [Packet(PacketType.CONNECT, "/admin")]
    assert sio.frame(sio.connect_reply("/admin", "-G5j-67EZFp-q59rADQM")) == ['40/admin,{"sid":"-G5j-67EZFp-q59rADQM"}']
    assert decode_all(['2/admin,1["tellme"]']) == [Packet(PacketType.EVENT, "/admin", ["tellme"], 1)]
    assert sio.frame(sio.ack("/admin", 1, b"\x07")) == ['461-/admin,1[{"_placeholder":true,"num":0}]', b"\x07"]


def test_connect_with_auth_payload():
    # socket.io-protocol Readme.md: Client > { type: CONNECT, namespace: "/admin", data: { "token": "123" } }
    assert decode_all(['0/admin,{"token":"123"}']) == [Packet(PacketType.CONNECT, "/admin", {"token": "123"})]


def test_unknown_namespace_connect_error_exact_bytes():
    frames = sio.frame(sio.connect_error("/ns", "Invalid namespace"))
    assert [f.encode() for f in frames] == [b'44/ns,{"message":"Invalid namespace"}']


def test_helpers():
    assert sio.encode(sio.connect_reply("/", "s1", pid="p1")) == ['0{"sid":"s1","pid":"p1"}']
    assert sio.encode(sio.connect_error("/", "Not authorized", {"retry": False})) == [
        '4{"message":"Not authorized","data":{"retry":false}}']
    assert sio.encode(sio.event("/a", "x", 1, None, ack_id=7)) == ['2/a,7["x",1,null]']
    assert sio.encode(sio.ack("/", 0)) == ["30[]"]
    with pytest.raises(SocketIOError):
        sio.event("/", "disconnect")
    with pytest.raises(SocketIOError):
        sio.event("/", 5)  # type: ignore[arg-type]
    with pytest.raises(SocketIOError):
        sio.ack("/", None)  # type: ignore[arg-type]


def test_encode_event_once_equals_encode():
    payload = {"type": "location_update", "vehicle": "KA-01", "lat": 12.97, "name": "Majestic ✓", "n": None}
    payload_json = orjson.dumps(payload)
    for namespace in ("/", "/live"):
        once = sio.encode_event_once("channel_message", payload_json, namespace)
        assert once == sio.frame(sio.event(namespace, "channel_message", payload))[0].encode()
    assert sio.encode_event_once("channel_message", b'{"a":1}') == b'42["channel_message",{"a":1}]'
    assert sio.encode_event_once("m", b"[1,2]", "/ns") == b'42/ns,["m",[1,2]]'
    with pytest.raises(SocketIOError):
        sio.encode_event_once("connect", b"{}")
    with pytest.raises(SocketIOError):
        sio.encode_event_once("m", b"{}", "ns")


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-2**53, 2**53), st.text(max_size=8), st.booleans(), st.none()), max_size=5),
       st.sampled_from(["/", "/x", "/a/b"]), st.text(min_size=1, max_size=10).filter(lambda s: s not in sio.RESERVED_EVENTS))
def test_property_encode_event_once_equals_encode(payload, namespace, name):
    try:
        expected = sio.frame(sio.event(namespace, name, payload))[0].encode()
    except SocketIOError:  # lone surrogates cannot be written as UTF-8 JSON
        return
    assert sio.encode_event_once(name, orjson.dumps(payload), namespace) == expected


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "empty packet"),
        ("7", "unknown packet type"),
        ("a", "unknown packet type"),
        ("-", "unknown packet type"),
        # CONNECT payload must be an object (reference isPayloadValid)
        ("0[]", "invalid payload for CONNECT"),
        ('0"x"', "invalid payload for CONNECT"),
        ("0null", "invalid payload for CONNECT"),
        # DISCONNECT carries no payload
        ("1{}", "invalid payload for DISCONNECT"),
        ("1null", "invalid payload for DISCONNECT"),
        # CONNECT_ERROR: string or object
        ("4[]", "invalid payload for CONNECT_ERROR"),
        ("4true", "invalid payload for CONNECT_ERROR"),
        # EVENT: non-empty array whose first element is a non-reserved string
        ("2", "missing data"),
        ("2{}", "invalid payload for EVENT"),
        ("2[]", "invalid payload for EVENT"),
        ("2[1]", "invalid payload for EVENT"),
        ("2[null]", "invalid payload for EVENT"),
        ('2"foo"', "invalid payload for EVENT"),
        ('2["connect"]', "invalid payload for EVENT"),
        ('2["connect_error"]', "invalid payload for EVENT"),
        ('2["disconnect"]', "invalid payload for EVENT"),
        ('2["disconnecting"]', "invalid payload for EVENT"),
        ('2["newListener"]', "invalid payload for EVENT"),
        ('2["removeListener"]', "invalid payload for EVENT"),
        ('51-["disconnect",{"_placeholder":true,"num":0}]', "invalid payload for BINARY_EVENT"),
        # ACK: an array
        ("3", "missing data"),
        ("31", "missing data"),
        ("31{}", "invalid payload for ACK"),
        ('31"x"', "invalid payload for ACK"),
        ("61-1{}", "invalid payload for BINARY_ACK"),
        # not JSON
        ('2["foo"', "not JSON"),
        ('2["foo"]x', "not JSON"),
        ("2[1e400]", "not JSON"),
        # ack ids are digits only (and fit a JS safe integer)
        ('2x["foo"]', "not JSON"),
        ('2 1["foo"]', "not JSON"),
        ('2-1["foo"]', "not JSON"),
        ('29007199254740992["foo"]', "ack id out of range"),
        ('2123456789012345678901["foo"]', "ack id out of range"),
        # attachments: <digits>-
        ('5["foo"]', "illegal attachments"),
        ('5-["foo"]', "illegal attachments"),
        ('5x-["foo"]', "illegal attachments"),
        ('51["foo"]', "illegal attachments"),
        ("5", "illegal attachments"),
        ('59999999-["foo"]', "illegal attachments"),
        # namespaces start with "/" (otherwise the rest must be JSON)
        ('2admin,["foo"]', "not JSON"),
    ],
)
def test_decoder_rejections(text, message):
    with pytest.raises(SocketIOError, match=message):
        Decoder().add(text)


def test_decoder_accepts_reference_edge_cases():
    # namespace up to the end without a comma, as the reference decodeString reads it
    assert decode_all(["0/admin"]) == [Packet(PacketType.CONNECT, "/admin")]
    assert decode_all(['4"refused"']) == [Packet(PacketType.CONNECT_ERROR, "/", "refused")]
    assert decode_all(['2["foo",{"_placeholder":true,"num":0}]']) == [
        Packet(PacketType.EVENT, "/", ["foo", {"_placeholder": True, "num": 0}])]  # not binary: left as is
    assert decode_all(['29007199254740991["foo"]']) == [Packet(PacketType.EVENT, "/", ["foo"], 2**53 - 1)]
    assert decode_all(['2/a,0["é ✓",1.5]']) == [Packet(PacketType.EVENT, "/a", ["é ✓", 1.5], 0)]
    # packets without data are not checked further, as in the reference (only EVENT/ACK need data here)
    assert decode_all(["01"]) == [Packet(PacketType.CONNECT, "/", None, 1)]
    assert decode_all(["4"]) == [Packet(PacketType.CONNECT_ERROR, "/")]
    # BINARY_EVENT announcing no attachment is complete at once
    assert decode_all(['50-["foo"]']) == [Packet(PacketType.EVENT, "/", ["foo"])]


def test_decoder_binary_sequencing_rules():
    decoder = Decoder()
    assert decoder.add('52-/admin,["baz",{"_placeholder":true,"num":1},{"x":{"_placeholder":true,"num":0}}]') is None
    assert decoder.awaiting_attachments == 2
    with pytest.raises(SocketIOError, match="plaintext data when reconstructing"):
        decoder.add('2["foo"]')
    assert decoder.add(b"\x01") is None
    assert decoder.awaiting_attachments == 1
    assert decoder.add(memoryview(b"\x02")) == Packet(PacketType.EVENT, "/admin", ["baz", b"\x02", {"x": b"\x01"}])
    assert decoder.awaiting_attachments == 0
    with pytest.raises(SocketIOError, match="binary data when not reconstructing"):
        decoder.add(b"\x03")
    with pytest.raises(SocketIOError, match="unknown frame type"):
        decoder.add(5)  # type: ignore[arg-type]
    decoder.add('51-["a",{"_placeholder":true,"num":0}]')
    decoder.reset()
    assert decoder.add('2["after reset"]') == Packet(PacketType.EVENT, "/", ["after reset"])


@pytest.mark.parametrize(
    "placeholder",
    ['{"_placeholder":true,"num":1}', '{"_placeholder":true,"num":-1}', '{"_placeholder":true,"num":"0"}',
     '{"_placeholder":true,"num":true}', '{"_placeholder":true}'],
)
def test_decoder_rejects_bad_placeholders(placeholder):
    decoder = Decoder()
    decoder.add(f'51-["a",{placeholder}]')
    with pytest.raises(SocketIOError, match="illegal attachments"):
        decoder.add(b"x")


def test_decoder_attachment_limit():
    text = '53-["a",' + ",".join(f'{{"_placeholder":true,"num":{i}}}' for i in range(3)) + "]"
    with pytest.raises(SocketIOError, match="too many attachments"):
        Decoder(max_attachments=2).add(text)
    assert decode_all([text, b"0", b"1", b"2"], Decoder(max_attachments=3)) == [
        Packet(PacketType.EVENT, "/", ["a", b"0", b"1", b"2"])]


def test_encode_rejections():
    for namespace in ("admin", "", "/a,b", None):
        with pytest.raises(SocketIOError, match="invalid namespace"):
            sio.encode(Packet(PacketType.CONNECT, namespace))  # type: ignore[arg-type]
    for ack_id in (-1, 2**53, True, 1.0, "1"):
        with pytest.raises(SocketIOError, match="invalid ack id"):
            sio.encode(Packet(PacketType.EVENT, "/", ["x"], ack_id))  # type: ignore[arg-type]
    with pytest.raises(SocketIOError, match="cannot be encoded as JSON"):
        sio.encode(sio.event("/", "x", object()))
    with pytest.raises(SocketIOError, match="cannot be encoded as JSON"):
        sio.encode(sio.event("/", "x", "\ud800"))
    with pytest.raises(SocketIOError, match="cannot be encoded as JSON"):
        sio.encode(sio.event("/", "x", 2**64))


def test_json_matches_json_stringify_where_documented():
    # JSON.stringify: compact, insertion order, non-ASCII and U+2028 raw, NaN/Infinity -> null.
    text = sio.encode(sio.event("/", "m", {"b": 1, "a": "é\u2028😀", "n": float("nan"), "i": float("inf")}))[0]
    assert text == '2["m",{"b":1,"a":"é\u2028😀","n":null,"i":null}]'
    # Documented difference: a float keeps its ".0" (JSON.stringify(1.0) is "1"); same number once parsed.
    assert sio.encode(sio.event("/", "m", 1.0))[0] == '2["m",1.0]'


# --------------------------------------------------------------------------- properties

_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**53, 2**53), st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=10),
)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=5).filter(lambda k: k != "_placeholder"), inner, max_size=4)),
    max_leaves=12,
)
_json_with_bytes = st.recursive(
    st.one_of(_json_scalars, st.binary(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=5).filter(lambda k: k != "_placeholder"), inner, max_size=4)),
    max_leaves=12,
)
_namespaces = st.one_of(st.just("/"), st.from_regex(r"/[a-zA-Z0-9_/\-é]{0,10}", fullmatch=True))
_ack_ids = st.one_of(st.none(), st.integers(0, 2**53 - 1))
_event_names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=10).filter(
    lambda s: s not in sio.RESERVED_EVENTS)


def _packets():
    return st.one_of(
        st.builds(lambda ns, d: Packet(PacketType.CONNECT, ns, d), _namespaces,
                  st.one_of(st.none(), st.dictionaries(st.text(max_size=5), _json, max_size=4))),
        st.builds(lambda ns: Packet(PacketType.DISCONNECT, ns), _namespaces),
        st.builds(lambda ns, d: Packet(PacketType.CONNECT_ERROR, ns, d), _namespaces,
                  st.one_of(st.text(max_size=10), st.builds(lambda m: {"message": m}, st.text(max_size=10)))),
        st.builds(lambda ns, name, args, i: Packet(PacketType.EVENT, ns, [name, *args], i),
                  _namespaces, _event_names, st.lists(_json_with_bytes, max_size=4), _ack_ids),
        st.builds(lambda ns, args, i: Packet(PacketType.ACK, ns, args, i),
                  _namespaces, st.lists(_json_with_bytes, max_size=4), st.integers(0, 2**53 - 1)),
    )


@settings(max_examples=300, deadline=None)
@given(_packets())
def test_property_round_trip(packet):
    frames = sio.encode(packet)
    assert isinstance(frames[0], str) and all(isinstance(f, bytes) for f in frames[1:])
    assert decode_all(frames, Decoder(max_attachments=100)) == [packet]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_property_decoder_only_raises_socketio_error(text):
    try:
        packet = Decoder().add(text)
    except SocketIOError:
        return
    assert packet is None or isinstance(packet.type, PacketType)
