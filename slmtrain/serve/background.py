"""A server in a background thread, for tests, benchmarks and the routing demo: the real application on a real
socket (uvicorn), so that clients talk HTTP to it exactly as they would to ``slmtrain serve``."""

from __future__ import annotations

import socket
import threading
import time

from fastapi import FastAPI


class BackgroundServer:
    """uvicorn serving ``app`` from a daemon thread on a free 127.0.0.1 port: for tests, benchmarks and the routing
    demo. Used as a context manager, it stops (bounded waits) when the block ends."""

    def __init__(self, app: FastAPI, start_timeout_s: float = 60.0):
        import uvicorn

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.start_timeout_s = start_timeout_s

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()

