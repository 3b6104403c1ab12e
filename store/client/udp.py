"""The client's UDP socket, for trio.

``UdpSocket`` sends without a trip through the scheduler when the kernel takes the
datagram at once, and takes every datagram waiting per wakeup; ``tune_buffers`` raises the
kernel's buffers, whose defaults drop datagrams under load even on loopback. The transport
(``store.client.transport``) is written against ``DatagramSocket``, so its tests run it on
an in-memory network.
"""

from __future__ import annotations

import socket
from typing import Any, Protocol

import trio

Address = tuple[str, int]


class DatagramSocket(Protocol):
    async def sendto(self, data: bytes | bytearray, address: Address) -> Any: ...
    async def recv_many(self, size: int) -> list[bytes]:
        """The datagrams waiting (at least one), without their addresses."""
        ...

    def close(self) -> None: ...


RECEIVE_BURST = 128  # datagrams taken per wakeup before other tasks run


class UdpSocket:
    """A UDP socket for trio that sends without a trip through the scheduler when the
    kernel takes the datagram at once (it nearly always does), and takes every datagram
    waiting per wakeup: a 4 MiB transfer is some 70 datagrams each way, and trio's socket
    methods yield twice for each."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    async def sendto(self, data: bytes | bytearray, address: Address) -> int:
        while True:
            try:
                return self.sock.sendto(data, address)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)

    async def recv_many(self, size: int) -> list[bytes]:
        received: list[bytes] = []
        while True:
            try:
                while len(received) < RECEIVE_BURST:
                    received.append(self.sock.recv(size))
            except BlockingIOError:
                pass
            if received:
                return received
            await trio.lowlevel.wait_readable(self.sock)

    def receive_buffer(self) -> int:
        """Bytes of datagrams the kernel holds for us before it drops (it reports twice
        that, counting its own overhead)."""
        return int(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)) // 2

    def close(self) -> None:
        self.sock.close()


def open_udp_socket(buffer_bytes: int = 16 * 1024 * 1024) -> UdpSocket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tune_buffers(sock, buffer_bytes)
    return UdpSocket(sock)


def tune_buffers(sock: Any, size: int) -> None:
    # The default buffers drop datagrams under load even on loopback. The FORCE variants
    # pass the sysctl limit but need privileges; fall back to the plain ones.
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_*BUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
            except OSError:
                pass
