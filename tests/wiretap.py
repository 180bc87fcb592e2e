"""Test tools: a loopback TCP relay that records what SuperNodes send, and a genome-leak scanner.

The relay sits between the SuperNodes and the SuperLink and keeps every byte that flows from a
node to the server. With TLS it terminates the nodes' connections with the SuperLink's own
certificate (which the nodes trust) and opens its own TLS connection upstream, so what it keeps is
the plaintext gRPC/HTTP2 stream inside TLS, with SuperNode authentication on as in production.
The scanner looks in such bytes for any run of 24 nucleotides, in the three forms a genome could
take: ASCII letters, the tokenizer's uint8 ids and the same ids as int64.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
from types import TracebackType

from fedgenome.shared import tokenizer
from fedgenome.shared.hosts import LOOPBACK
from fedgenome.shared.tls import TlsFiles

KMER = 24
_ASCII = re.compile(rb"[ACGTNacgtn]{%d,}" % KMER)
_IDS = bytes(range(tokenizer.A, tokenizer.N + 1))
_UINT8 = re.compile(b"[" + re.escape(_IDS) + b"]{%d,}" % KMER)
_INT64 = re.compile(b"(?:[" + re.escape(_IDS) + b"]\x00{7}){%d,}" % KMER)


def nucleotide_runs(data: bytes) -> list[bytes]:
    """Every run of at least 24 bases in ``data`` (ASCII, uint8 token ids or int64 token ids)."""
    return [m.group() for pattern in (_ASCII, _UINT8, _INT64) for m in pattern.finditer(data)]


class WireTap:
    """Relay 127.0.0.1:<port> -> 127.0.0.1:<target>, keeping the client-to-server bytes."""

    def __init__(self) -> None:
        self._server = socket.create_server((LOOPBACK, 0))
        self.port = int(self._server.getsockname()[1])
        self.target = 0
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = [self._server]
        self._closed = False
        self._tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None

    def start(self, target: int, tls: TlsFiles | None) -> int:
        """Start relaying to ``target`` (over TLS when ``tls``); the port to connect to instead."""
        self.target = target
        if tls is not None:
            inbound = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            inbound.load_cert_chain(tls.server_cert, tls.server_key)
            outbound = ssl.create_default_context(cafile=str(tls.ca_cert))
            for context in (inbound, outbound):
                context.set_alpn_protocols(["h2"])
            self._tls = inbound, outbound
        threading.Thread(target=self._accept, daemon=True).start()
        return self.port

    def sent(self) -> bytes:
        """Everything the clients sent so far, concatenated."""
        with self._lock:
            return b"".join(self._chunks)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection((LOOPBACK, self.target))
        except OSError:  # the SuperLink is gone (shutting down)
            client.close()
            return
        try:
            if self._tls is not None:
                client = self._tls[0].wrap_socket(client, server_side=True)
                upstream = self._tls[1].wrap_socket(upstream, server_hostname=LOOPBACK)
        except (OSError, ssl.SSLError):
            client.close()
            upstream.close()
            return
        with self._lock:
            self._sockets += [client, upstream]
        threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    with self._lock:
                        self._chunks.append(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop relaying and close every socket."""
        self._closed = True
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def __enter__(self) -> WireTap:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
