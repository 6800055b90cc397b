"""Running the app under uvicorn on a socket that is already bound, with graceful shutdown.

SIGTERM (or Ctrl-C) makes uvicorn stop accepting connections and wait for those in flight;
the scheduler drains at once (a new request on a kept-alive connection gets a 503), the
requests already queued or generating finish, and after ``shutdown_timeout`` seconds the
handlers still waiting are cancelled, which cancels their generations. Then the app's
lifespan stops the scheduler thread.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
import time

import uvicorn


class Server(uvicorn.Server):
    """uvicorn's server that says when it is ready and drains the scheduler on a signal."""

    def __init__(self, config: uvicorn.Config, banner: str, drain) -> None:
        super().__init__(config)
        self._banner, self._drain = banner, drain

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._banner:
            print(self._banner, file=sys.stderr, flush=True)

    def handle_exit(self, sig, frame) -> None:
        self._drain()  # a flag only: safe in a signal handler
        super().handle_exit(sig, frame)


def serve(
    app, sock: socket.socket, *, banner: str, log_level: str = "info", shutdown_timeout: float = 30.0
) -> None:
    """Serve ``app`` (from :func:`specdecode.server.create_app`) on ``sock`` until a signal."""
    config = uvicorn.Config(
        app, log_level=log_level, timeout_graceful_shutdown=shutdown_timeout, lifespan="on"
    )
    Server(config, banner, app.state.server.scheduler.drain).run(sockets=[sock])


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"):
    """Serve ``app`` from a background thread (for tests and embedding); yields the base URL
    (``http://127.0.0.1:PORT``; port 0 picks a free one) and stops the server on exit, as a
    SIGTERM would: requests in flight finish first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=10)
    server = Server(config, "", app.state.server.scheduler.drain)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        bound = sock.getsockname()
        yield f"http://{f'[{bound[0]}]' if family == socket.AF_INET6 else bound[0]}:{bound[1]}"
    finally:
        server.handle_exit(signal.SIGTERM, None)
        thread.join(30)
        sock.close()
