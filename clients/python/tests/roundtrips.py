"""A TCP proxy in front of the scratch server's unix socket that counts round trips.

It reads the client's side of the PostgreSQL protocol and counts the messages after which the
client waits for the server: each Sync and each simple Query (the server answers with
ReadyForQuery), and each Flush that has queued work before it (a Flush right after a Sync asks
for nothing new). Counting messages rather than TCP bursts makes the count exact whatever the
timing: a test asserts it.
"""

from __future__ import annotations

import socket
import struct
import threading

_SSL_OR_GSS = (80877103, 80877104)


class RoundTripProxy:
    def __init__(self, unix_path: str) -> None:
        self.unix_path = unix_path
        self._lock = threading.Lock()
        self._count = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def reset(self) -> None:
        with self._lock:
            self._count = 0

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.unix_path)
            threading.Thread(target=self._upstream, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _upstream(self, src: socket.socket, dst: socket.socket) -> None:
        buf = b""
        startup = True
        last = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                buf += data
                while True:
                    if startup:
                        if len(buf) < 8:
                            break
                        (length, code) = struct.unpack("!ii", buf[:8])
                        if len(buf) < length:
                            break
                        buf = buf[length:]
                        startup = code in _SSL_OR_GSS
                        continue
                    if len(buf) < 5:
                        break
                    kind = buf[:1]
                    (length,) = struct.unpack("!i", buf[1:5])
                    if len(buf) < 1 + length:
                        break
                    buf = buf[1 + length :]
                    if kind in (b"S", b"Q") or (kind == b"H" and last not in (b"S", b"H")):
                        with self._lock:
                            self._count += 1
                    last = kind
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src, dst)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src, dst)


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
