"""An OpenAI-compatible HTTP server for one model: ``specdecode serve`` (see the README's
"Server" section). :func:`create_app` makes the ASGI app; :mod:`specdecode.server.serving`
runs it under uvicorn."""

from specdecode.server.app import ServerConfig, create_app
from specdecode.server.protocol import Limits

__all__ = ["Limits", "ServerConfig", "create_app"]
