"""A slow-loris client for the report port's tests: many connections, each sending one byte every
few seconds, and each one the server closes opened again at its next turn. Half of them send
their TLS ClientHello that way; the other half finish the handshake and then send an endless
request header one byte at a time. One thread and one selector: 500 connections cost a few
hundred small sends a second."""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass

REQUEST = b"POST /v1/reports HTTP/1.1\r\nHost: operator\r\nX-Slow: " + b"a" * 8000


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def client_hello() -> bytes:
    """The first flight of a TLS client, made in memory (to send it one byte at a time)."""
    outgoing = ssl.MemoryBIO()
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the server's answer
        _insecure().wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="x").do_handshake()
    return outgoing.read()


@dataclass
class _Conn:
    due: float
    slow_tls: bool  # drips its ClientHello; else drips a request after the handshake
    sock: socket.socket | None = None
    tls: tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO] | None = None
    secure: bool = False
    pending: bytes = b""
    opened: float = 0.0
    sent: int = 0


class SlowClients:
    """``count`` connections from ``source`` to ``127.0.0.1:port``; each sends one byte every
    ``every`` seconds (± 30 %). :attr:`opened` counts connections made; :meth:`held`, those
    open now; :meth:`closed_after`, those the server closed; :meth:`longest`, how long any was
    open."""

    def __init__(self, port: int, count: int = 500, source: str = "127.0.0.2",
                 every: float = 2.0) -> None:
        self.port, self.source, self.every = port, source, every
        self.hello = client_hello()
        self.ctx = _insecure()
        now = time.monotonic()
        self._conns = [_Conn(due=now + random.uniform(0, every), slow_tls=i % 2 == 0)
                       for i in range(count)]
        self.opened = 0
        self.lifetimes: list[float] = []  # of the connections the server closed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for c in self._conns:
            if c.sock is not None:
                c.sock.close()

    def held(self, seconds: float) -> int:
        """Connections open now that have been open at least this long."""
        now = time.monotonic()
        with self._lock:
            return sum(1 for c in self._conns if c.sock is not None and now - c.opened >= seconds)

    def closed_after(self, seconds: float) -> int:
        """Connections the server closed after they had been open at least this long."""
        with self._lock:
            return sum(1 for t in self.lifetimes if t >= seconds)

    def longest(self) -> float:
        """The longest any connection has been open, closed or still open now."""
        now = time.monotonic()
        with self._lock:
            open_for = [now - c.opened for c in self._conns if c.sock is not None]
            return max([*self.lifetimes, *open_for], default=0.0)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        while not self._stop.is_set():
            now = time.monotonic()
            for c in self._conns:
                if now >= c.due:
                    c.due = now + self.every * random.uniform(0.7, 1.3)
                    self._tick(c, sel, now)
            for key, _ in sel.select(timeout=0.1):
                self._readable(key.data, sel)
        sel.close()

    def _tick(self, c: _Conn, sel: selectors.BaseSelector, now: float) -> None:
        if c.sock is None:
            s = socket.socket()
            s.setblocking(False)
            s.bind((self.source, 0))
            s.connect_ex(("127.0.0.1", self.port))
            sel.register(s, selectors.EVENT_READ, c)
            tls = None
            if not c.slow_tls:
                incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
                tls = (self.ctx.wrap_bio(incoming, outgoing, server_hostname="x"), incoming,
                       outgoing)
            with self._lock:
                c.sock, c.tls, c.secure, c.pending, c.opened, c.sent = s, tls, False, b"", now, 0
                self.opened += 1
        assert c.sock is not None
        try:
            if c.tls is None:
                c.sent += c.sock.send(self.hello[c.sent % len(self.hello):][:1])
            elif c.secure:
                c.sent += c.tls[0].write(REQUEST[c.sent % len(REQUEST):][:1])
            else:
                self._handshake(c)
            self._flush(c)
        except BlockingIOError:
            pass  # still connecting
        except OSError:
            self._closed(c, sel)

    def _handshake(self, c: _Conn) -> None:
        assert c.tls is not None
        with contextlib.suppress(ssl.SSLWantReadError):
            c.tls[0].do_handshake()
            c.secure = True

    def _flush(self, c: _Conn) -> None:
        assert c.sock is not None
        if c.tls is not None:
            c.pending += c.tls[2].read()
        if c.pending:
            c.pending = c.pending[c.sock.send(c.pending):]

    def _readable(self, c: _Conn, sel: selectors.BaseSelector) -> None:
        assert c.sock is not None
        try:
            data = c.sock.recv(65536)
            if data and c.tls is not None:
                c.tls[1].write(data)
                if not c.secure:
                    self._handshake(c)
                    self._flush(c)
                else:
                    with contextlib.suppress(ssl.SSLWantReadError):
                        c.tls[0].read(65536)  # session tickets
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._closed(c, sel)

    def _closed(self, c: _Conn, sel: selectors.BaseSelector) -> None:
        assert c.sock is not None
        sel.unregister(c.sock)
        c.sock.close()
        with self._lock:
            self.lifetimes.append(time.monotonic() - c.opened)
            c.sock = None
