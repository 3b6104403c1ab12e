"""The relay in front of nbdkit that ``store nbd serve`` runs, so nbdkit may serve each
connection's requests in parallel without dying of a client that drops.

``store nbd serve`` opens the listening socket clients use and a private Unix socket for
nbdkit, then forks: the parent becomes nbdkit (socket activation: the private socket is
its file descriptor 3), the child runs :func:`run_relay`. For each client the relay
opens a connection to nbdkit and copies bytes both ways, but the client's side only in
whole NBD messages (:class:`~.guard.RequestGuard`). When the client goes away — cleanly,
with a reset, in the middle of a message, or by breaking the protocol — the relay ends
nbdkit's input at the last whole message and reads (and drops) nbdkit's replies until
nbdkit closes the connection. nbdkit therefore only ever sees an orderly end of input,
which it handles in every thread model.

The relay lives as long as nbdkit: the kernel signals it when its parent (nbdkit, after
the exec) exits. It ignores SIGINT and SIGTERM, which are nbdkit's to act on.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from store.gateways.nbd.guard import RequestGuard
from store.logs import JsonFormatter

log = logging.getLogger("store.nbd.relay")

CHUNK = 256 * 1024
DEFAULT_PORT = 10809
ACTIVATION_FD = 3  # where systemd-style socket activation hands nbdkit its socket
_PR_SET_PDEATHSIG = 1
PARENT_GONE = signal.SIGUSR2


def copy_requests(client: socket.socket, backend: socket.socket, peer: str) -> None:
    """Client to nbdkit, whole messages only; then end nbdkit's input."""
    guard = RequestGuard()
    try:
        while True:
            try:
                n = client.recv_into(guard.receive_buffer())
            except OSError as exc:
                log.info("client %s: %s", peer, exc)
                break
            if n == 0:
                break
            out = guard.received(n)
            if out:
                backend.sendall(out)  # before the guard's buffer is received into again
            if guard.broken is not None:
                log.warning("client %s sent %s; ending its connection", peer, guard.broken)
                break
        if guard.held:
            log.info("client %s left in the middle of a message (%d bytes)", peer, guard.held)
    except OSError as exc:
        log.info("client %s: nbdkit's side closed: %s", peer, exc)
    finally:
        with contextlib.suppress(OSError):
            backend.shutdown(socket.SHUT_WR)


def copy_replies(backend: socket.socket, client: socket.socket) -> None:
    """nbdkit to client, as it comes; once the client is gone, read and drop."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    client_gone = False
    while True:
        try:
            n = backend.recv_into(buffer)
        except OSError:
            break
        if n == 0:
            break
        if not client_gone:
            try:
                client.sendall(view[:n])
            except OSError:
                client_gone = True


def relay_connection(client: socket.socket, backend_path: str, peer: str) -> None:
    with client, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as backend:
        try:
            backend.connect(backend_path)
        except OSError as exc:
            log.error("cannot reach nbdkit at %s: %s", backend_path, exc)
            return
        upstream = threading.Thread(target=copy_requests, args=(client, backend, peer), daemon=True)
        upstream.start()
        copy_replies(backend, client)
        # nbdkit closed: wake the request side if it still waits for the client.
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)
        upstream.join()


def die_with_parent(parent: int, on_exit: Callable[[], None]) -> None:
    """Have the kernel signal us when ``parent`` (the process that forked us) exits;
    run ``on_exit`` and go then."""

    def gone(signum: int, frame: types.FrameType | None) -> None:
        on_exit()
        os._exit(0)

    signal.signal(PARENT_GONE, gone)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(PARENT_GONE), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it went before the signal was armed
        gone(int(PARENT_GONE), None)


def run_relay(listener: socket.socket, backend_path: str, cleanup: list[Path], parent: int) -> None:
    """Serve until ``parent`` (nbdkit) exits; then remove ``cleanup`` (sockets, folders)."""

    def remove() -> None:
        for path in cleanup:
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()

    die_with_parent(parent, remove)
    while True:
        try:
            client, address = listener.accept()
        except OSError as exc:
            log.warning("accepting a client: %s", exc)
            time.sleep(0.1)  # out of file descriptors, say: do not spin
            continue
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else "(unix)"
        try:
            if client.family != socket.AF_UNIX:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(
                target=relay_connection, args=(client, backend_path, peer), daemon=True
            ).start()
        except Exception as exc:  # no thread to be had, say: this client only goes
            log.warning("cannot serve client %s: %s", peer, exc)
            client.close()


def listen(unix: Path | None, port: int | None, bind: str | None) -> socket.socket:
    """The socket clients connect to: a Unix socket, or TCP on ``bind`` (default: every
    address, IPv6 and IPv4) and ``port`` (default 10809), as nbdkit itself would."""
    if unix is not None:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(str(unix))
            server.listen(128)
        except OSError:
            server.close()
            raise
        return server
    port = DEFAULT_PORT if port is None else port
    if bind is None:
        if socket.has_dualstack_ipv6():
            return socket.create_server(
                ("", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=128
            )
        return socket.create_server(("", port), backlog=128)
    family = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return socket.create_server((bind, port), family=family[0][0], backlog=128)


def exec_behind_relay(
    nbdkit_args: list[str],
    public: socket.socket,
    unix: Path | None,
    *,
    verbose: bool = False,
    log_format: str = "human",
) -> NoReturn:
    """Fork the relay onto ``public``; become nbdkit, serving the relay's connections.
    The relay logs warnings, and with ``verbose`` (nbdkit's ``-v`` too) every client that
    leaves in the middle of a message; as JSON lines with ``log_format="json"``."""
    private_dir = Path(tempfile.mkdtemp(prefix="store-nbd-"))
    private_path = private_dir / "nbdkit.sock"
    backend = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    backend.bind(str(private_path))
    backend.listen(128)
    cleanup = [private_dir] + ([unix] if unix is not None else [])
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    # Until nbdkit runs, Ctrl-C and SIGTERM are its to act on, in the relay too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.fork() == 0:
        try:
            backend.close()
            handler = logging.StreamHandler()
            handler.setFormatter(
                JsonFormatter("nbd relay")
                if log_format == "json"
                else logging.Formatter("store nbd relay: %(levelname)s: %(message)s")
            )
            logging.basicConfig(
                level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True
            )
            run_relay(public, str(private_path), cleanup, parent)
        except BaseException:
            # Without the relay nobody reaches nbdkit: stop it too, so that whatever
            # supervises it sees the failure.
            log.exception("the relay failed; stopping nbdkit")
            with contextlib.suppress(OSError):
                os.kill(parent, signal.SIGTERM)
        finally:
            os._exit(1)
    # exec resets handled signals but keeps ignored ones: give nbdkit the defaults back.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    public.close()
    if backend.fileno() == ACTIVATION_FD:
        os.set_inheritable(ACTIVATION_FD, True)
    else:
        os.dup2(backend.fileno(), ACTIVATION_FD)
    os.environ["LISTEN_FDS"] = "1"
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.execv(nbdkit_args[0], nbdkit_args)
