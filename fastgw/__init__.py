"""fastgw: the real-time WebSocket gateway of the BMTC transit app.

Public API: :class:`Config`, :class:`Gateway` (aiohttp server), :class:`Hub`.
"""

from fastgw.config import Config

__version__ = "0.1.0"
__all__ = ["Config", "Gateway", "Hub", "__version__"]


def __getattr__(name: str):  # lazy: importing fastgw should not pull in aiohttp
    if name == "Gateway":
        from fastgw.server import Gateway

        return Gateway
    if name == "Hub":
        from fastgw.hub import Hub

        return Hub
    raise AttributeError(name)
