"""A small threaded TCP proxy on loopback, for outage tests.

:class:`TCPProxy` listens on ``127.0.0.1`` (a free port) and forwards every
connection to a target ``host:port``. A test points a store at the proxy
instead of the server, then breaks the path in the ways real outages do:

- :meth:`~TCPProxy.pause`: nothing is forwarded any more, in either
  direction; connections stay open and new ones are accepted but get no
  reply, as with a server that is ``SIGSTOP``-ped or a network that drops
  everything after the handshake. Bytes sent meanwhile wait in the kernel's
  buffers and are delivered by :meth:`~TCPProxy.resume`, as a stopped server
  would read them once it runs again.
- :meth:`~TCPProxy.kill`: every connection is closed and new ones are
  refused (the listening socket is closed), as when the server crashes.
- :meth:`~TCPProxy.restart`: after a kill (or at any time), listen again on
  the same port and forward normally.

Everything stays on loopback; every wait is bounded; :meth:`~TCPProxy.close`
(or leaving the ``with`` block) closes every socket and joins every thread.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
import typing as t

#: How long a blocked thread sleeps before it looks at the proxy's state
#: again; also the granularity of :meth:`TCPProxy.pause`.
_POLL = 0.02
#: Bounds for connecting to the target and for sending one chunk on.
_CONNECT_TIMEOUT = 2.0
_SEND_TIMEOUT = 5.0
#: How long :meth:`TCPProxy.close` waits for each thread.
_JOIN_TIMEOUT = 5.0


class _Pair:
    """A client connection and its connection to the target."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = False
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.upstream):
            # shutdown() first: it wakes a thread blocked in select() or
            # recv() on the socket, which close() alone does not.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class TCPProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port``.

    .. code-block:: python

        with TCPProxy("127.0.0.1", 5432) as proxy:
            url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
            ...
            proxy.pause()    # the database hangs
            proxy.resume()   # and comes back
            proxy.kill()     # the database crashes: resets, refusals
            proxy.restart()  # and is back on the same port
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        if target_host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the proxy only forwards to loopback")
        self.target = (target_host, target_port)
        self.port = 0
        # Guards the state below; _cond is signalled when it changes.
        self._cond = threading.Condition()
        self._paused = False
        self._closed = False
        # Pumps between reading a chunk and having sent it on: pause()
        # waits for them, so nothing is forwarded once pause() returns.
        self._in_flight = 0
        self._pairs: set[_Pair] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        #: How many connections were accepted, over the proxy's life.
        self.accepted = 0
        self._listen()

    # -- the public controls -------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def pause(self, timeout: float = _SEND_TIMEOUT) -> None:
        """Stop forwarding; return once no chunk is being forwarded."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._paused = True
            while self._in_flight and time.monotonic() < deadline:
                self._cond.wait(_POLL)

    def resume(self) -> None:
        """Forward again, starting with what was sent meanwhile."""
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def kill(self) -> None:
        """Close every connection and refuse new ones."""
        self._stop_listening()
        with self._cond:
            pairs = list(self._pairs)
            self._pairs.clear()
        for pair in pairs:
            pair.close()

    def restart(self) -> None:
        """Kill, then listen again on the same port, forwarding normally."""
        self.kill()
        with self._cond:
            self._paused = False
            self._cond.notify_all()
        self._listen()

    def close(self) -> None:
        """Kill, and wait for every thread of the proxy to end."""
        with self._cond:
            self._closed = True
            self._paused = False
            self._cond.notify_all()
        self.kill()
        for thread in self._threads:
            thread.join(_JOIN_TIMEOUT)
        self._threads = [thread for thread in self._threads if thread.is_alive()]

    def __enter__(self) -> TCPProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "paused" if self._paused else "forwarding"
        if not self.listening:
            state = "killed"
        host, port = self.target
        return f"<TCPProxy 127.0.0.1:{self.port} -> {host}:{port} {state}>"

    # -- the machinery ---------------------------------------------------------

    def _start(self, target: t.Callable[..., None], *args: t.Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads = [th for th in self._threads if th.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _listen(self) -> None:
        if self._closed:
            raise RuntimeError("the proxy is closed")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Rebinding the port of a killed listener must not wait for
            # TIME_WAIT connections to expire.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(64)
        except BaseException:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._start(self._accept_loop, sock)

    def _stop_listening(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            # Closed here, not by the accept loop, so the port is free for
            # restart() at once; the loop notices within _POLL and ends.
            sock.close()

    def _accept_loop(self, sock: socket.socket) -> None:
        try:
            while self._listener is sock and not self._closed:
                try:
                    ready, _, _ = select.select([sock], [], [], _POLL)
                except (OSError, ValueError):
                    return
                if not ready or self._listener is not sock:
                    continue
                try:
                    client, _ = sock.accept()
                except OSError:
                    continue
                self.accepted += 1
                try:
                    upstream = socket.create_connection(
                        self.target, timeout=_CONNECT_TIMEOUT
                    )
                except OSError:
                    client.close()
                    continue
                for end in (client, upstream):
                    end.settimeout(_SEND_TIMEOUT)
                pair = _Pair(client, upstream)
                with self._cond:
                    if self._listener is not sock or self._closed:
                        pair.close()
                        continue
                    self._pairs.add(pair)
                self._start(self._pump, pair, client, upstream)
                self._start(self._pump, pair, upstream, client)
        finally:
            sock.close()

    def _pump(self, pair: _Pair, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not pair.closed:
                with self._cond:
                    if self._paused and not self._closed:
                        self._cond.wait(_POLL)
                        continue
                try:
                    ready, _, _ = select.select([source], [], [], _POLL)
                except (OSError, ValueError):
                    return
                if not ready:
                    continue
                with self._cond:
                    if self._paused or pair.closed:
                        continue
                    self._in_flight += 1
                try:
                    data = source.recv(65536)
                    if not data:
                        return
                    sink.sendall(data)
                except OSError:
                    return
                finally:
                    with self._cond:
                        self._in_flight -= 1
                        self._cond.notify_all()
        finally:
            pair.close()
            with self._cond:
                self._pairs.discard(pair)
