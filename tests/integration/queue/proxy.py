"""A TCP proxy on 127.0.0.1 whose ``cut()`` drops every connection through it at once.

That is what a client sees when the broker restarts or the network fails, without touching
the shared Redis or RabbitMQ that other suites use.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def url(self, url: str) -> str:
        """``url`` with its port replaced by the proxy's."""
        return url.replace(f":{self.target_port}", f":{self.port}", 1)

    def cut(self) -> None:
        with self._lock:
            doomed, self._open = self._open, []
        for sock in doomed:
            _shutdown(sock)

    def close(self) -> None:
        _shutdown(self._server)
        self._server.close()
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._open += [client, upstream]
            threading.Thread(target=_relay, args=(client, upstream), daemon=True,
                             name="proxy-relay").start()


def _relay(client: socket.socket, upstream: socket.socket) -> None:
    back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
    back.start()
    _pipe(client, upstream)
    back.join()
    # Closed only once neither direction can be inside recv() on them: a descriptor closed
    # under a blocked recv() may be reused by the next connection and read from by mistake.
    client.close()
    upstream.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    _shutdown(source)
    _shutdown(sink)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
