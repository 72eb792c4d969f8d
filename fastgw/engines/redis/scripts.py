"""Lua scripts: each runs atomically on the node that owns the channel's slot.

PUBLISH_HISTORY — a public channel's message: append to the history stream
(bounded by length and age), publish with the stream id as its position.

PUBLISH_OR_QUEUE — a user notification: publish; if no gateway is subscribed
(no live connection of that user anywhere), keep it in the user's offline
queue instead (newest ``max`` kept, for ``ttl``). Deciding and storing in one
atomic step means a notification is never both missed live and not queued.

QUEUE — store a notification in the offline queue without publishing: a node
that received one for a user whose connection had just closed (the race between
a disconnect and its UNSUBSCRIBE reaching Redis) puts it back.

ACK — drop queue entries up to a sequence number (and unreadable heads).

TAKE_SESSION — hand a session record to its own user, once; anyone else gets
nothing and the session stays for its owner.

Pub/sub payload (both publish scripts)::

    <message type>|<origin node>|<flag>|<position or empty>|<envelope JSON>

flag ``1`` marks a message its origin already delivered locally while Redis was
unreachable: the origin skips it, the other nodes deliver it.
"""

from __future__ import annotations

__all__ = ["PUBLISH_HISTORY", "PUBLISH_OR_QUEUE", "QUEUE", "ACK", "TAKE_SESSION"]

# KEYS[1] history stream
# ARGV: 1 pubsub channel, 2 PUBLISH|SPUBLISH, 3 "type|origin|flag|", 4 envelope, 5 type, 6 max length,
#       7 ttl ms (entries), 8 key ttl ms, 9 origin node, 10 flag
# Entries older than the ttl are trimmed on each publish; the key itself lives much
# longer, so that ``max-deleted-entry-id`` still answers "was anything dropped?" for
# a channel that went quiet.
PUBLISH_HISTORY = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[6], '*',
                      't', ARGV[5], 'e', ARGV[4], 'o', ARGV[9], 'f', ARGV[10])
local now = redis.call('TIME')
local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[7])
if oldest > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', oldest)
end
redis.call('PEXPIRE', KEYS[1], ARGV[8])
redis.call(ARGV[2], ARGV[1], ARGV[3] .. id .. '|' .. ARGV[4])
return id
"""

# Appends one entry to a user's offline queue (KEYS[1] list, KEYS[2] sequence), keeps the
# newest, refreshes both TTLs; leaves the sequence number in ``seq``.
_STORE = """
local seq = redis.call('INCR', KEYS[2])
local now = redis.call('TIME')
redis.call('RPUSH', KEYS[1], seq .. '|' .. now[1] .. '|' .. {envelope})
redis.call('LTRIM', KEYS[1], -tonumber({max_length}), -1)
redis.call('PEXPIRE', KEYS[1], {ttl})
redis.call('PEXPIRE', KEYS[2], {ttl})
"""

# KEYS[1] queue list, KEYS[2] queue sequence
# ARGV: 1 pubsub channel, 2 PUBLISH|SPUBLISH, 3 "type|origin|flag|", 4 envelope, 5 max length, 6 ttl ms
# returns the number of receiving gateways, or -seq when the message was queued
PUBLISH_OR_QUEUE = """
local receivers = redis.call(ARGV[2], ARGV[1], ARGV[3] .. '|' .. ARGV[4])
if receivers > 0 then
  return receivers
end
""" + _STORE.format(envelope="ARGV[4]", max_length="ARGV[5]", ttl="ARGV[6]") + "return -seq\n"

# KEYS[1] queue list, KEYS[2] queue sequence; ARGV: 1 envelope, 2 max length, 3 ttl ms
QUEUE = _STORE.format(envelope="ARGV[1]", max_length="ARGV[2]", ttl="ARGV[3]") + "return seq\n"

# KEYS[1] queue list; ARGV[1] acknowledged sequence; returns entries removed.
# An entry is readable exactly when the gateway's reader accepts it
# (``seq|unix seconds|JSON object``); unreadable heads are dropped too, or they
# would stop the trim forever.
ACK = """
local removed = 0
local up_to = tonumber(ARGV[1])
while true do
  local head = redis.call('LINDEX', KEYS[1], 0)
  if not head then break end
  local seq, stamp, body = string.match(head, '^(%d+)|(%d+%.?%d*)|(.*)$')
  local readable = seq and pcall(cjson.decode, body) and string.sub(body, 1, 1) == '{'
  if readable and tonumber(seq) > up_to then break end
  redis.call('LPOP', KEYS[1])
  removed = removed + 1
end
return removed
"""

# KEYS[1] session key; ARGV[1] the resuming user's id ("" for anonymous).
# Returns the record (removed), or false; an unreadable record is removed and returned.
TAKE_SESSION = """
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local ok, rec = pcall(cjson.decode, raw)
if not ok or type(rec) ~= 'table' then
  redis.call('DEL', KEYS[1])
  return raw
end
local user = rec['user']
if user == nil or user == cjson.null then user = '' end
if tostring(user) ~= ARGV[1] then return false end
redis.call('DEL', KEYS[1])
return raw
"""
