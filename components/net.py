"""Loopback ports: the one place that asks the kernel for a free one (servers, the XGBoost tracker, tests)."""

from __future__ import annotations

import socket


class PortInUse(RuntimeError):
    """The port asked for is taken on loopback; the message names it."""


def free_port(port: int | None = None) -> int:
    """``port`` when it is free on loopback, else PortInUse naming it; 0/None: one the kernel picks."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port or 0))
        except OSError:
            raise PortInUse(f"port {port} is already in use") from None
        return s.getsockname()[1]
