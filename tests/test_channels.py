import pytest

from fastgw.channels import ANONYMOUS, Access, InvalidChannel, Principal, can_subscribe, parse_channel

RIDER = Principal("rider1")
ADMIN = Principal("ops", admin=True)


@pytest.mark.parametrize(
    "name,kind,access",
    [
        ("route:500-D:UP", "route", Access.PUBLIC),
        ("route:V-500D:DOWN", "route", Access.PUBLIC),
        ("route:KIA-9:all", "route", Access.PUBLIC),
        ("stop:20823:arrivals", "stop", Access.PUBLIC),
        ("alerts:335-E", "alerts", Access.PUBLIC),
        ("alerts:all", "alerts", Access.PUBLIC),
        ("leaderboard:daily", "leaderboard", Access.PUBLIC),
        ("leaderboard:monthly", "leaderboard", Access.PUBLIC),
        ("leaderboard:route:201", "leaderboard", Access.PUBLIC),
        ("user:rider1:notifications", "user", Access.OWNER),
        ("system:all_updates", "system", Access.ADMIN),
    ],
)
def test_valid_channels(name, kind, access):
    ch = parse_channel(name)
    assert (ch.name, ch.kind, ch.access) == (name, kind, access)


@pytest.mark.parametrize(
    "name",
    ["", "route:500-D", "route:500-D:up", "route:500 D:UP", "stop:1:departures", "leaderboard:yearly",
     "user::notifications", "system:all", "chat:lobby", "route:" + "9" * 65 + ":UP", "x" * 129,
     "route:-5:UP", "route:५००:UP", None, 42],
)
def test_invalid_channels(name):
    with pytest.raises(InvalidChannel):
        parse_channel(name)


def test_permission_rules():
    user_ch = parse_channel("user:rider1:notifications")
    assert can_subscribe(user_ch, RIDER)
    assert not can_subscribe(user_ch, Principal("rider2"))
    assert not can_subscribe(user_ch, ANONYMOUS)
    assert not can_subscribe(user_ch, ADMIN)  # only the owner, as the protocol says
    system = parse_channel("system:all_updates")
    assert can_subscribe(system, ADMIN) and not can_subscribe(system, RIDER)
    assert can_subscribe(parse_channel("route:500-D:UP"), ANONYMOUS)
