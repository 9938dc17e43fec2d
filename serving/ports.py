"""Ports that several server processes share (SO_REUSEPORT): `earworm serve --processes N`."""

from __future__ import annotations

import socket


def shared_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT, not yet listening: other sockets with the
    option set, from this user's processes, may bind the same address, and the kernel then spreads
    incoming connections over those that listen. Port 0 picks a free port (`getsockname()` tells
    which). OSError when the address cannot be bound (a port held without SO_REUSEPORT, by another
    program) or the system has no SO_REUSEPORT."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("this system cannot share a port between processes (no SO_REUSEPORT): serve one process")
    host = host.strip("[]")  # "[::]", as gRPC writes IPv6 hosts
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
            raise OSError("SO_REUSEPORT could not be set on this system: serve one process")
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock
