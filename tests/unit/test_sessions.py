"""The daemon's session table: hello handling."""

from __future__ import annotations

import os
import time

import pytest

from store import auth
from store.errors import AuthError
from store.osd.sessions import SessionTable
from store.wire import body as wire_body
from store.wire.datagram import DatagramType, encode_unsealed

OSD = 3


def keys() -> auth.ServiceKeys:
    service = auth.ServiceKeys()
    service.rotate(time.time(), 3600, 3600)
    return service


def hello(service: auth.ServiceKeys, client: str, session_id: int, instance: int = 1) -> bytes:
    ticket = auth.issue_ticket(client, auth.Caps(admin=True), time.time(), 3600)
    nonce, ts = os.urandom(16), time.time()
    mac = auth.hello_mac(ticket.session_key, session_id, nonce, ts, OSD, instance)
    body = {
        "ticket": auth.seal_ticket(service, ticket),
        "cn": nonce,
        "ts": ts,
        "inst": instance,
        "mac": mac,
    }
    return encode_unsealed(DatagramType.HELLO, session_id, 0, 1, wire_body.pack(body))


def test_a_repeated_hello_gets_the_same_answer() -> None:
    service = keys()
    table = SessionTable(OSD, lambda: service, time.time)
    datagram = hello(service, "alice", 77)
    assert table.handle_hello_untrusted(datagram, 1) == table.handle_hello_untrusted(datagram, 1)
    assert table.sessions[77].client == "alice"


def test_one_client_cannot_take_over_anothers_session_id() -> None:
    service = keys()
    table = SessionTable(OSD, lambda: service, time.time)
    table.handle_hello_untrusted(hello(service, "alice", 77), 1)
    with pytest.raises(AuthError, match="session id"):
        table.handle_hello_untrusted(hello(service, "mallory", 77), 1)
    assert table.sessions[77].client == "alice"


def test_the_client_instance_is_bound_by_the_mac() -> None:
    service = keys()
    table = SessionTable(OSD, lambda: service, time.time)
    datagram = hello(service, "alice", 78, instance=5)
    header_len = 36
    body = wire_body.unpack_untrusted(datagram[header_len:])
    body["inst"] = 6  # changed on the path
    forged = datagram[:header_len] + wire_body.pack(body)
    with pytest.raises(AuthError, match="does not verify"):
        table.handle_hello_untrusted(forged, 1)
