"""What a client gets back after a disconnect: its offline notifications, and its session.

- Offline queue replay: the user's queued notifications, oldest first, as
  ``queued_message``, then ``queue_sync_complete``. Nothing is removed until the
  client acknowledges (``ack``), so a connection lost mid-replay loses nothing.
  The replay is paced by the socket's write buffer, not by a timer.
- Session resume: a disconnected session's subscriptions are kept for the grace
  period; ``resume`` restores them and sends the channel messages missed since,
  from the engine's per-channel history, then ``resumed`` says whether the
  recovery is complete.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable

from fastgw.channels import InvalidChannel, can_subscribe, parse_channel
from fastgw.engines.base import SessionRecord, notification_owner
from fastgw.hub import with_offset
from fastgw.messages import iso_now
from fastgw.prepare import PreparedMessage
from fastgw.protocol import native

if TYPE_CHECKING:
    from fastgw.connection import Connection
    from fastgw.engines.base import Engine
    from fastgw.hub import Hub

__all__ = ["Recovery"]

log = logging.getLogger("fastgw.recovery")

#: Seconds the replay waits at most for a client to drain its buffer before giving up.
DRAIN_TIMEOUT = 30.0


class Recovery:
    def __init__(self, hub: "Hub", engine: "Engine", *, max_subscriptions: int) -> None:
        self.hub = hub
        self.engine = engine
        self.max_subscriptions = max_subscriptions
        self.replayed = 0
        self.resumes: dict[str, int] = {"recovered": 0, "partial": 0, "unknown": 0}

    # --- offline queue --------------------------------------------------------

    async def replay_offline(self, conn: "Connection") -> None:
        """Send what was queued while the user was away (nothing at all if nothing was)."""
        user_id = conn.principal.user_id
        if user_id is None:
            return
        try:
            pending = await self.engine.offline.pending(user_id)
        except Exception as exc:  # Redis down: kept there, replayed on a later subscribe
            log.warning("offline queue of %s unavailable: %s", user_id, exc)
            return
        if not pending:
            return
        for seq, envelope in pending:
            if not await _paced(conn):
                return  # gone or stuck: the queue is intact for next time
            conn.send(native.queued_message(seq, envelope))
        conn.send(native.queue_sync_complete(len(pending), iso_now(), pending[-1][0]))
        self.replayed += len(pending)

    async def ack(self, conn: "Connection", up_to: int) -> None:
        if conn.principal.user_id is None:
            return
        try:
            await self.engine.offline.ack(conn.principal.user_id, up_to)
        except Exception as exc:  # the messages come again next time: at least once
            log.warning("ack of %s lost: %s", conn.principal.user_id, exc)

    # --- sessions ------------------------------------------------------------

    def snapshot(self, conn: "Connection") -> SessionRecord | None:
        """What to keep of a closing connection (taken before it is unsubscribed)."""
        if not conn.subscriptions:
            return None
        positions = {}
        for channel in conn.subscriptions:
            position = self.hub.position(channel)
            if position is not None:
                positions[channel] = position
        return SessionRecord(conn.principal.user_id, dict(conn.subscriptions), positions)

    async def save(self, session_id: str, record: SessionRecord) -> None:
        try:
            await self.engine.sessions.save(session_id, record)
        except Exception as exc:  # Redis down: the session cannot be resumed, said at resume time
            log.warning("session %s not saved: %s", session_id, exc)

    async def resume(self, conn: "Connection", cmd: native.Resume,
                     reply: "Callable[[bytes], Any] | None" = None) -> None:
        """Restore ``cmd.session_id``'s subscriptions and send what it missed, in order."""
        record = await self.take(cmd.session_id, conn.principal.user_id)
        await self.restore(conn, record, cmd.offsets, cmd.id, reply)

    async def take(self, session_id: str, user_id: str | None) -> SessionRecord | None:
        """The saved session ``session_id`` if it belongs to ``user_id`` (then it is
        gone from the store: a session resumes once), else None."""
        try:
            record = await self.engine.sessions.take(session_id, user_id)
        except Exception as exc:
            log.warning("session %s unavailable: %s", session_id, exc)
            return None
        if record is None or record.user_id != user_id:
            return None
        return record

    async def restore(self, conn: "Connection", record: SessionRecord | None, offsets: dict[str, str],
                      request_id: str | None = None, reply: "Callable[[bytes], Any] | None" = None) -> None:
        """Subscribe ``conn`` to ``record``'s channels and send ``resumed`` (through
        ``reply``, default ``conn.send``), then the messages missed since ``offsets``
        (channel → last offset received; else the positions saved at disconnect)."""
        reply = reply or conn.send
        if record is None:
            self.resumes["unknown"] += 1
            reply(native.resumed(request_id, conn.session_id, False, []))
            return
        room = self.max_subscriptions - len(conn.subscriptions)
        channels = []
        for name, types in record.subscriptions.items():
            if not _allowed(name, conn):
                continue
            if name not in conn.subscriptions:
                if room <= 0:
                    continue  # over --max-subscriptions: left out, so not recovered
                room -= 1
            channels.append((name, types))
        # Join first (live messages are held), then read the history: no gap, no reordering.
        for name, types in channels:
            self.hub.subscribe_recovering(conn, name, types)
        for name, _ in channels:
            await self.engine.broker.ready(name)
        results = []
        for name, types in channels:
            start = offsets.get(name) or record.positions.get(name)
            if notification_owner(name) is not None:
                results.append((name, types, [], True))  # covered by the offline queue
            elif start is None:
                results.append((name, types, [], False))
            else:
                try:
                    found = await self.engine.history.since(name, start)
                except Exception as exc:
                    log.warning("history of %s unavailable: %s", name, exc)
                    results.append((name, types, [], False))
                    continue
                missed = [e for e in found.entries if types is None or e[1] in types]
                results.append((name, types, missed, found.recovered))
        if conn.transport is None or conn.transport.is_closing():
            return
        summary = [{"channel": n, "recovered": ok, "missed": len(m)} for n, _, m, ok in results]
        recovered = all(ok for _, _, _, ok in results) and len(channels) == len(record.subscriptions)
        self.resumes["recovered" if recovered else "partial"] += 1
        reply(native.resumed(request_id, conn.session_id, recovered, summary))
        for name, _, missed, _ in results:
            self.go_live(conn, name, missed)
            self.engine.presence.count_changed(name, self.hub.subscriber_count(name))
        has_notifications = any(notification_owner(n) is not None for n, _ in channels)
        if has_notifications:
            await self.replay_offline(conn)

    def go_live(self, conn: "Connection", channel: str, missed: list[tuple[str, str, bytes]] | None = None) -> None:
        """End a recovering subscription (``Hub.subscribe_recovering``): send ``missed``
        history entries, then what the hub held meanwhile (newer ones only), and let
        live messages through. Synchronous, so nothing can slip in between."""
        missed = missed or []
        last = missed[-1][0] if missed else None
        frames = [(pos, mtype, with_offset(env, pos)) for pos, mtype, env in missed]
        for pos, mtype, env in self.hub.join_recovering(conn, channel):
            if pos is None or last is None or _after(pos, last):
                frames.append((pos, mtype, env))
        if conn.window > 0:  # batching profiles: only the newest of each conflatable item
            frames = _conflate(frames, channel, self.hub)
        core, codecs = self.hub.core, self.hub.codecs
        for pos, mtype, env in frames:
            frame = PreparedMessage(channel, env, mtype, core, codecs, pos).frame(conn.encoding)
            conn.send_frame(frame)


def _allowed(name: str, conn: "Connection") -> bool:
    try:
        return can_subscribe(parse_channel(name), conn.principal)
    except InvalidChannel:
        return False


def _after(position: str, other: str) -> bool:
    """Order of two history positions (``ms-seq`` of Redis streams, or counters)."""
    return _key(position) > _key(other)


def _key(position: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in position.split("-"))
    except ValueError:
        return (0,)


def _conflate(frames: list[tuple[Any, str, bytes]], channel: str, hub: "Hub") -> list[tuple[Any, str, bytes]]:
    newest: dict[Any, int] = {}
    for index, (_, mtype, env) in enumerate(frames):
        key = PreparedMessage(channel, env, mtype, hub.core, hub.codecs).conflation_key()
        newest[key if key is not None else ("#", index)] = index
    return [frames[i] for i in sorted(newest.values())]


async def _paced(conn: "Connection") -> bool:
    """Wait while the socket holds more than half the outbound limit; False if it closed."""
    transport = conn.transport
    if transport is None or transport.is_closing():
        return False
    high = conn.outbound_limit // 2
    waited = 0.0
    while transport.get_write_buffer_size() > high:
        if transport.is_closing() or waited > DRAIN_TIMEOUT:
            return False
        await asyncio.sleep(0.01)
        waited += 0.01
    return True
