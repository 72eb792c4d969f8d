"""The native codec with bytes alone: no sockets, no event loop."""

import orjson
import pytest

from fastgw.protocol import native


def test_parse_subscribe_with_filters_and_numeric_id():
    cmd = native.parse_command('{"type":"subscribe","id":7,"channel":"route:500-D:UP","filters":{"types":["location_update"]}}')
    assert cmd == native.Subscribe("7", "route:500-D:UP", frozenset({"location_update"}))


def test_parse_unsubscribe_and_ping():
    assert native.parse_command('{"type":"unsubscribe","id":"a","channel":"alerts:all"}') == native.Unsubscribe("a", "alerts:all")
    assert native.parse_command('{"type":"ping"}') == native.Ping(None)


@pytest.mark.parametrize(
    "text,message",
    [
        ("{", "invalid JSON"),
        ("[]", "expected a JSON object"),
        ('{"type":"subscribe"}', "channel must be a non-empty string"),
        ('{"type":"subscribe","channel":"alerts:all","filters":{"vehicle":"x"}}', "unsupported filter(s): vehicle"),
        ('{"type":"subscribe","channel":"alerts:all","filters":{"types":[]}}', "filters.types must be"),
        ('{"type":"subscribe","id":["x"],"channel":"alerts:all"}', "id must be a string"),
        ('{"type":"launch"}', "unknown message type 'launch'"),
    ],
)
def test_bad_requests(text, message):
    with pytest.raises(native.ProtocolError) as err:
        native.parse_command(text)
    assert err.value.code == "bad_request" and err.value.message.startswith(message)


def test_server_messages_are_compact_json_with_fixed_key_order():
    assert native.welcome("s1", "2026-01-01T00:00:00.000Z", 30.0) == (
        b'{"type":"welcome","sessionId":"s1","serverTime":"2026-01-01T00:00:00.000Z","heartbeat":30,'
        b'"profile":"full","window":0}')
    assert native.subscribed("c1", "alerts:all", 3) == (
        b'{"type":"subscribed","id":"c1","channel":"alerts:all","subscriberCount":3}')
    assert native.error(None, "limit", "m") == b'{"type":"error","id":null,"code":"limit","message":"m"}'
    env = native.channel_message("alerts:all", {"type": "service_alert"}, "T", "n-1")
    assert list(orjson.loads(env)) == ["type", "channel", "message", "timestamp", "messageId"]
