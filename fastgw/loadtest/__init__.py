"""``fastgw loadtest``: many WebSocket clients against a gateway, and what it held.

One module per job:

``plan``       who subscribes to what (BMTC routes and stops with Zipf-like popularity,
               own notifications; one channel for ``fanout``), seeded and reproducible
``client``     the client-process engine (``python -m fastgw.loadtest.client``): raw
               asyncio Protocols on uvloop, native protocol or Socket.IO over WebSocket,
               heartbeats answered, deliveries parsed with bytes searches
``controller`` orchestration: client processes, the publisher, the scenarios
               ``idle`` and ``fanout``, stopping everything it started
``child``      JSON-lines child processes (client processes, the producer): both sides
``storm``      the ``storm`` scenario: every client dropped at once, back with backoff and
               jitter; resubscription times and the offline queues' replay
``reconnect``  the storm's clients coming back (in each client process)
``bmtc``       the ``bmtc`` scenario: Kafka, simulated location reports, the BMTC mix
``producer``   the ``bmtc`` producer process: simulated reports to Kafka at a fixed rate
``procstats``  the gateway's processes (from the port or given pids): RSS and CPU from /proc
``histogram``  log-linear latency histograms: filled by the client processes, merged by ``report``
``report``     percentiles, the JSON report, the PNG chart, the rich table
``progress``   the rich progress bar (stderr)

The Python API is :func:`fastgw.loadtest.controller.run_loadtest`; the command line is
``fastgw loadtest`` (``fastgw/cli.py``). Scenarios: ``idle``, ``fanout``, ``bmtc``, ``storm``
(``controller.scenario_class``).
"""

from __future__ import annotations
