"""Socket.IO v5 over Engine.IO v4, served on the gateway's hub (``/socket.io/``).

- ``engine``: Engine.IO sessions, long-polling and WebSocket transports, upgrade, heartbeat.
- ``server``: Socket.IO namespaces, CONNECT/auth, events, acks, binary attachments.
- ``gateway``: the gateway's namespace: JWT auth, subscribe/unsubscribe, fan-out, recovery.
- ``conformance``: the reference server of the official protocol test suites.

The packet codecs are ``fastgw.protocol.engineio`` and ``fastgw.protocol.socketio``.
"""
