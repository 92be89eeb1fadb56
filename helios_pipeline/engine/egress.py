"""The chunk's egress gate: a loopback SOCKS5 proxy that every connection of the page goes through.

Chromium sends host names to a SOCKS5 proxy unresolved, so the gate resolves each name once,
asks the policy about the address it resolved to and connects to exactly that address: a
decision cannot be outrun by DNS (rebinding), and every TCP connection is covered (pages, iframes,
workers, redirects, WebSockets, media range requests). A page that opens no connection costs
nothing; a connection costs one decision and a relay through this process.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

SOCKS_VERSION = 5
NO_AUTH = 0
CONNECT = 1
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 3, 4
REPLY_OK, REPLY_FAILURE, REPLY_NOT_ALLOWED, REPLY_HOST_UNREACHABLE = 0, 1, 2, 4
REPLY_COMMAND_NOT_SUPPORTED = 7
CONNECT_TIMEOUT_S = 30.0
RELAY_BLOCK = 1 << 16


@dataclass(frozen=True)
class Refusal:
    """Why a connection was refused: the policy rule that matched."""

    rule: str


Resolver = Callable[[str, int], list[str]]
"""host, port -> the addresses it resolves to (strings), empty when it does not resolve."""
Decide = Callable[[str, int, str], Refusal | None]
"""host as the page named it, port, resolved address -> None to allow, or why not."""
OnRefused = Callable[[str, int, Refusal], None]


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to here, in the system resolver's order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        block = sock.recv(size - len(data))
        if not block:
            raise ConnectionError("the client closed the connection")
        data += block
    return data


def _reply(sock: socket.socket, code: int) -> None:
    sock.sendall(struct.pack("!BBBB4sH", SOCKS_VERSION, code, 0, ATYP_IPV4, b"\0\0\0\0", 0))


class EgressGate:
    """A SOCKS5 CONNECT proxy on 127.0.0.1 that connects only where ``decide`` allows."""

    def __init__(self, decide: Decide, on_refused: OnRefused, resolver: Resolver = system_resolver):
        self._decide, self._on_refused, self._resolver = decide, on_refused, resolver
        self._server = socket.create_server(("127.0.0.1", 0))
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="helios-egress", daemon=True)
        self._thread.start()

    @property
    def proxy_url(self) -> str:
        return f"socks5://127.0.0.1:{self._server.getsockname()[1]}"

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self._thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), name="helios-egress-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            try:
                upstream = self._handshake(client)
            except (OSError, ConnectionError, ValueError):
                return
            if upstream is not None:
                with upstream:
                    self._relay(client, upstream)

    def _handshake(self, client: socket.socket) -> socket.socket | None:
        """Read the SOCKS5 greeting and CONNECT request; the upstream socket, or None when refused."""
        version, methods = _read_exact(client, 2)
        _read_exact(client, methods)
        if version != SOCKS_VERSION:
            return None
        client.sendall(bytes((SOCKS_VERSION, NO_AUTH)))
        version, command, _, address_type = _read_exact(client, 4)
        if address_type == ATYP_IPV4:
            host = str(ipaddress.IPv4Address(_read_exact(client, 4)))
        elif address_type == ATYP_IPV6:
            host = str(ipaddress.IPv6Address(_read_exact(client, 16)))
        elif address_type == ATYP_DOMAIN:
            host = _read_exact(client, _read_exact(client, 1)[0]).decode("idna")
        else:
            raise ValueError(f"unknown SOCKS address type {address_type}")
        (port,) = struct.unpack("!H", _read_exact(client, 2))
        if command != CONNECT:
            _reply(client, REPLY_COMMAND_NOT_SUPPORTED)
            return None
        addresses = self._resolver(host, port)
        if not addresses:
            _reply(client, REPLY_HOST_UNREACHABLE)
            return None
        for address in addresses:  # every address must pass: the connection may go to any of them
            refusal = self._decide(host, port, address)
            if refusal is not None:
                self._on_refused(host, port, refusal)
                _reply(client, REPLY_NOT_ALLOWED)
                return None
        for address in addresses:
            try:
                upstream = socket.create_connection((address, port), timeout=CONNECT_TIMEOUT_S)
            except OSError:
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):  # relay small writes at once: Nagle + delayed ACK stall ~40 ms
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _reply(client, REPLY_OK)
            return upstream
        _reply(client, REPLY_HOST_UNREACHABLE)
        return None

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy bytes both ways until either side closes (or the gate closes)."""
        peers = {client: upstream, upstream: client}
        while not self._closed.is_set():
            readable, _, _ = select.select(list(peers), [], [], 1.0)
            for sock in readable:
                try:
                    data = sock.recv(RELAY_BLOCK)
                except OSError:
                    return
                if not data:
                    return
                try:
                    peers[sock].sendall(data)
                except OSError:
                    return


@contextlib.contextmanager
def egress_gate(decide: Decide, on_refused: OnRefused, resolver: Resolver = system_resolver) -> Iterator[EgressGate]:
    """An open gate for the duration of the block; closed (and its threads ended) after."""
    gate = EgressGate(decide, on_refused, resolver)
    try:
        yield gate
    finally:
        gate.close()
