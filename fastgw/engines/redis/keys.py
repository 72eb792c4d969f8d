"""Every Redis key and pub/sub channel name the gateway uses, in one place.

Per-channel keys put the gateway channel name in a hash tag (``{...}``), so the
pub/sub channel, its history stream, its offline queue and its subscriber
counts all live in the same cluster slot: one script touches them all, and
sharded pub/sub (``SPUBLISH``) goes to the node that owns them. Gateway channel
names never contain braces (``fastgw.channels``), so the tag is exact.
"""

from __future__ import annotations

__all__ = ["Keys"]


class Keys:
    def __init__(self, prefix: str = "fastgw") -> None:
        self.prefix = prefix
        self._channel_prefix = f"{prefix}:ch:{{".encode()

    # --- per gateway channel (one slot each) ---------------------------------------
    def pubsub(self, channel: str) -> str:
        """Pub/sub channel of a gateway channel."""
        return f"{self.prefix}:ch:{{{channel}}}"

    def channel_of(self, pubsub_name: bytes) -> str | None:
        """The gateway channel of a pub/sub channel name, or None if it is not ours."""
        if pubsub_name.startswith(self._channel_prefix) and pubsub_name.endswith(b"}"):
            return pubsub_name[len(self._channel_prefix):-1].decode("utf-8", "replace")
        return None

    def history(self, channel: str) -> str:
        """Stream of the channel's recent messages (session resume)."""
        return f"{self.prefix}:hist:{{{channel}}}"

    def queue(self, channel: str) -> str:
        """List of a user notification channel's offline messages."""
        return f"{self.prefix}:queue:{{{channel}}}"

    def queue_seq(self, channel: str) -> str:
        """Sequence counter of that offline queue."""
        return f"{self.prefix}:qseq:{{{channel}}}"

    def subscribers(self, channel: str) -> str:
        """Hash: node id → that node's subscriber count of the channel."""
        return f"{self.prefix}:subs:{{{channel}}}"

    # --- per connection, user, node --------------------------------------------------
    def session(self, session_id: str) -> str:
        return f"{self.prefix}:session:{session_id}"

    def connection(self, session_id: str) -> str:
        return f"{self.prefix}:conn:{session_id}"

    def presence(self, user_id: str) -> str:
        """Sorted set: session id → expiry (ms) of each of the user's connections."""
        return f"{self.prefix}:presence:{user_id}"

    def instance(self, node_id: str) -> str:
        return f"{self.prefix}:instance:{node_id}"

    @property
    def instances(self) -> str:
        """Sorted set: node id → last registration (ms); entries whose hash expired are dead."""
        return f"{self.prefix}:instances"
