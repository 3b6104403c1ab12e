"""Object lock rules without I/O: configuration documents, the lock a write asks for, who
may change a retention and who may delete a version."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from store.gateways.s3 import object_lock
from store.gateways.s3.errors import S3Error
from store.gateways.s3.layout import Entry
from store.gateways.s3.object_lock import Lock, Rule

NOW = 1_800_000_000.0
NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


def config(inner: str, enabled: str = "Enabled") -> bytes:
    return (
        f"<ObjectLockConfiguration {NS}><ObjectLockEnabled>{enabled}</ObjectLockEnabled>"
        f"{inner}</ObjectLockConfiguration>"
    ).encode()


def rule(inner: str) -> str:
    return f"<Rule><DefaultRetention>{inner}</DefaultRetention></Rule>"


def code_of(call: object) -> str:
    with pytest.raises(S3Error) as caught:
        assert callable(call)
        call()
    return caught.value.code


def test_configurations() -> None:
    assert object_lock.parse_configuration(config("")) is None
    parsed = object_lock.parse_configuration(config(rule("<Mode>GOVERNANCE</Mode><Days>3</Days>")))
    assert parsed == Rule("GOVERNANCE", days=3)
    again = object_lock.parse_configuration(object_lock.configuration_document(parsed))
    assert again == parsed
    assert object_lock.parse_configuration(
        config(rule("<Mode>COMPLIANCE</Mode><Years>2</Years>"))
    ) == Rule("COMPLIANCE", years=2)
    for bad, code in (
        (config(rule("<Mode>GOVERNANCE</Mode><Days>1</Days><Years>1</Years>")), "MalformedXML"),
        (config(rule("<Mode>governance</Mode><Days>1</Days>")), "MalformedXML"),
        (config(rule("<Mode>GOVERNANCE</Mode>")), "MalformedXML"),
        (config(rule("<Mode>GOVERNANCE</Mode><Days>0</Days>")), "InvalidRetentionPeriod"),
        (config(rule("<Mode>GOVERNANCE</Mode><Years>-1</Years>")), "InvalidRetentionPeriod"),
        (config(rule("<Mode>GOVERNANCE</Mode><Days>x</Days>")), "MalformedXML"),
        (config("", enabled="Disabled"), "MalformedXML"),
    ):
        assert code_of(lambda bad=bad: object_lock.parse_configuration(bad)) == code


def headers(**values: str) -> Callable[[str], str | None]:
    named = {f"x-amz-object-lock-{k.replace('_', '-')}": v for k, v in values.items()}
    return named.get


def test_lock_of_a_write() -> None:
    until = "2028-01-15T00:00:00Z"
    explicit = object_lock.from_headers(
        headers(mode="COMPLIANCE", retain_until_date=until, legal_hold="ON"),
        True,
        Rule("GOVERNANCE", days=1),
        NOW,
    )
    assert explicit == Lock("COMPLIANCE", object_lock.parse_date(until, "d"), True)
    default = object_lock.from_headers(headers(), True, Rule("GOVERNANCE", days=2), NOW)
    assert default == Lock("GOVERNANCE", NOW + 2 * 86_400, None)
    assert object_lock.from_headers(headers(), False, None, NOW) == Lock()
    for values, enabled, code in (
        ({"legal_hold": "ON"}, False, "InvalidRequest"),
        ({"mode": "GOVERNANCE"}, True, "InvalidArgument"),
        (
            {"mode": "GOVERNANCE", "retain_until_date": "2020-01-01T00:00:00Z"},
            True,
            "InvalidArgument",
        ),
        ({"mode": "SOMETIMES", "retain_until_date": until}, True, "InvalidArgument"),
        ({"mode": "GOVERNANCE", "retain_until_date": "tomorrow"}, True, "InvalidArgument"),
        ({"legal_hold": "maybe"}, True, "InvalidArgument"),
    ):
        call = lambda values=values, enabled=enabled: object_lock.from_headers(  # noqa: E731
            headers(**values),
            enabled,
            None,
            NOW,
        )
        assert code_of(call) == code, values


def locked(mode: str | None, until: float, hold: bool | None = None) -> Entry:
    return Entry(
        size=1,
        etag="e",
        mtime=NOW,
        owner="o",
        owner_id="oi",
        head="h",
        lock_mode=mode,
        lock_until=until,
        legal_hold=hold,
    )


def test_who_may_change_a_retention() -> None:
    later, sooner = NOW + 100, NOW + 10
    governed = locked("GOVERNANCE", NOW + 50)
    object_lock.check_retention_change(governed, "GOVERNANCE", later, False, NOW)  # longer
    object_lock.check_retention_change(governed, "GOVERNANCE", sooner, True, NOW)  # bypassed
    object_lock.check_retention_change(governed, "COMPLIANCE", later, True, NOW)
    for mode, until in (("GOVERNANCE", sooner), ("COMPLIANCE", later), (None, 0.0)):
        call = lambda mode=mode, until=until: object_lock.check_retention_change(  # noqa: E731
            governed, mode, until, False, NOW
        )
        assert code_of(call) == "AccessDenied"
    complied = locked("COMPLIANCE", NOW + 50)
    object_lock.check_retention_change(complied, "COMPLIANCE", later, False, NOW)
    for mode, until in (("COMPLIANCE", sooner), ("GOVERNANCE", later)):
        call = lambda mode=mode, until=until: object_lock.check_retention_change(  # noqa: E731
            complied, mode, until, True, NOW
        )
        assert code_of(call) == "AccessDenied"
    expired = locked("COMPLIANCE", NOW - 1)
    object_lock.check_retention_change(expired, "GOVERNANCE", sooner, False, NOW)


def test_who_may_delete_a_version() -> None:
    object_lock.check_removable(locked(None, 0.0), False, NOW)
    object_lock.check_removable(locked("COMPLIANCE", NOW - 1), False, NOW)
    object_lock.check_removable(locked("GOVERNANCE", NOW + 1), True, NOW)
    object_lock.check_removable(locked(None, 0.0, hold=False), False, NOW)
    for entry, bypass in (
        (locked("GOVERNANCE", NOW + 1), False),
        (locked("COMPLIANCE", NOW + 1), True),
        (locked(None, 0.0, hold=True), True),
    ):
        call = lambda entry=entry, bypass=bypass: object_lock.check_removable(  # noqa: E731
            entry, bypass, NOW
        )
        assert code_of(call) == "AccessDenied"


def test_retention_and_legal_hold_documents() -> None:
    retention = (
        f"<Retention {NS}><Mode>GOVERNANCE</Mode>"
        "<RetainUntilDate>2030-01-01T00:00:00.000Z</RetainUntilDate></Retention>"
    ).encode()
    mode, until = object_lock.parse_retention(retention, NOW)
    document = object_lock.retention_document(locked(mode, until))
    assert object_lock.parse_retention(document, NOW) == (mode, until)
    assert code_of(lambda: object_lock.retention_document(locked(None, 0.0))) == (
        "NoSuchObjectLockConfiguration"
    )
    hold = f"<LegalHold {NS}><Status>ON</Status></LegalHold>".encode()
    assert object_lock.parse_legal_hold(hold) is True
    assert (
        object_lock.parse_legal_hold(object_lock.legal_hold_document(locked(None, 0, False)))
        is False
    )
    bad = f"<LegalHold {NS}><Status>on</Status></LegalHold>".encode()
    assert code_of(lambda: object_lock.parse_legal_hold(bad)) == "MalformedXML"
