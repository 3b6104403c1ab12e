"""Object lock (WORM): a bucket's default retention, and each version's retention and
legal hold, as S3 defines them; the documents and headers that carry them, and the rules
that say who may shorten a retention or delete a version. No I/O here.

A version under a legal hold, or retained until a later date, cannot be deleted: in
COMPLIANCE mode by nobody, in GOVERNANCE mode only with
``x-amz-bypass-governance-retention: true``. Retention may always be extended; shortening
it or changing its mode needs that bypass in GOVERNANCE mode and is never allowed in
COMPLIANCE mode. Deleting without a version id only adds a delete marker, which is always
allowed. A bucket with object lock stays versioned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from store.gateways.s3 import errors, xmldoc

if TYPE_CHECKING:  # layout keeps a bucket's Rule: it imports this module
    from store.gateways.s3.layout import Entry

MODES = ("GOVERNANCE", "COMPLIANCE")
DAY = 86_400
YEAR = 365 * DAY
MAX_DAYS = 36_500


@dataclass(frozen=True)
class Rule:
    """A bucket's default retention: ``mode`` for ``days`` or ``years`` after a write."""

    mode: str
    days: int = 0
    years: int = 0

    def to_wire(self) -> list[object]:
        return [self.mode, self.days, self.years]

    @classmethod
    def from_wire(cls, raw: Sequence[object]) -> Rule:
        mode, days, years = raw
        return cls(str(mode), int(str(days)), int(str(years)))

    def until(self, now: float) -> float:
        return now + self.days * DAY + self.years * YEAR


def missing_configuration() -> errors.S3Error:
    return errors.invalid_request("Bucket is missing Object Lock Configuration")


def no_lock_on_object() -> errors.S3Error:
    return errors.S3Error(
        "NoSuchObjectLockConfiguration",
        404,
        "The specified object does not have a ObjectLock configuration",
    )


def parse_date(text: str, name: str) -> float:
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise errors.invalid_argument(
            "The retain until date is not a valid ISO 8601 date", name, text
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _in_future(until: float, now: float, name: str) -> float:
    if until <= now:
        raise errors.invalid_argument(
            "The retain until date must be in the future!", name, xmldoc.iso_time(until)
        )
    return until


def _period(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise errors.malformed_xml() from None
    if not 0 < value <= MAX_DAYS:
        raise errors.S3Error(
            "InvalidRetentionPeriod",
            400,
            "Default retention period must be a positive integer value.",
        )
    return value


def parse_configuration(body: bytes) -> Rule | None:
    """An ObjectLockConfiguration document: its default retention rule, if it has one."""
    root = xmldoc.parse(body, "ObjectLockConfiguration")
    if xmldoc.child_text(root, "ObjectLockEnabled") != "Enabled":
        raise errors.malformed_xml()
    rules = list(xmldoc.children(root, "Rule"))
    if not rules:
        return None
    retentions = list(xmldoc.children(rules[0], "DefaultRetention"))
    if len(rules) > 1 or len(retentions) != 1:
        raise errors.malformed_xml()
    retention = retentions[0]
    mode = xmldoc.child_text(retention, "Mode")
    days = _period(xmldoc.child_text(retention, "Days"))
    years = _period(xmldoc.child_text(retention, "Years"))
    if mode not in MODES or (days is None) == (years is None):
        raise errors.malformed_xml()
    return Rule(mode, days or 0, years or 0)


def configuration_document(rule: Rule | None) -> bytes:
    doc = xmldoc.Doc("ObjectLockConfiguration").leaf("ObjectLockEnabled", "Enabled")
    if rule is not None:
        doc.open("Rule").open("DefaultRetention").leaf("Mode", rule.mode)
        if rule.days:
            doc.leaf("Days", rule.days)
        if rule.years:
            doc.leaf("Years", rule.years)
        doc.close().close()
    return doc.to_bytes()


def parse_retention(body: bytes, now: float) -> tuple[str | None, float]:
    """A Retention document: (mode, retain until); an empty one removes the retention."""
    root = xmldoc.parse(body, "Retention")
    mode = xmldoc.child_text(root, "Mode")
    date = xmldoc.child_text(root, "RetainUntilDate")
    if mode is None and date is None:
        return None, 0.0
    if mode not in MODES or date is None:
        raise errors.malformed_xml()
    return mode, _in_future(parse_date(date, "RetainUntilDate"), now, "RetainUntilDate")


def retention_document(entry: Entry) -> bytes:
    if entry.lock_mode is None:
        raise no_lock_on_object()
    doc = xmldoc.Doc("Retention").leaf("Mode", entry.lock_mode)
    return doc.leaf("RetainUntilDate", xmldoc.iso_time(entry.lock_until)).to_bytes()


def parse_legal_hold(body: bytes) -> bool:
    status = xmldoc.child_text(xmldoc.parse(body, "LegalHold"), "Status")
    if status not in ("ON", "OFF"):
        raise errors.malformed_xml()
    return status == "ON"


def legal_hold_document(entry: Entry) -> bytes:
    if entry.legal_hold is None:
        raise no_lock_on_object()
    status = "ON" if entry.legal_hold else "OFF"
    return xmldoc.Doc("LegalHold").leaf("Status", status).to_bytes()


@dataclass(frozen=True)
class Lock:
    """What a new version is written with."""

    mode: str | None = None
    until: float = 0.0
    legal_hold: bool | None = None


def from_headers(
    header: Callable[[str], str | None], enabled: bool, rule: Rule | None, now: float
) -> Lock:
    """The lock a write asks for with x-amz-object-lock-* headers, or else the bucket's
    default retention."""
    mode = header("x-amz-object-lock-mode")
    date = header("x-amz-object-lock-retain-until-date")
    hold = header("x-amz-object-lock-legal-hold")
    if (mode is not None or date is not None or hold is not None) and not enabled:
        raise missing_configuration()
    if (mode is None) != (date is None):
        raise errors.invalid_argument(
            "x-amz-object-lock-retain-until-date and x-amz-object-lock-mode must both be supplied"
        )
    if mode is not None and mode not in MODES:
        raise errors.invalid_argument("Unknown wormMode directive.", "x-amz-object-lock-mode", mode)
    if hold is not None and hold not in ("ON", "OFF"):
        raise errors.invalid_argument(
            "Legal Hold must be either of 'ON' or 'OFF'", "x-amz-object-lock-legal-hold", hold
        )
    legal_hold = None if hold is None else hold == "ON"
    if mode is not None and date is not None:
        name = "x-amz-object-lock-retain-until-date"
        return Lock(mode, _in_future(parse_date(date, name), now, name), legal_hold)
    if rule is not None:
        return Lock(rule.mode, rule.until(now), legal_hold)
    return Lock(legal_hold=legal_hold)


def response_headers(entry: Entry) -> list[tuple[str, str]]:
    headers = []
    if entry.lock_mode is not None:
        headers.append(("x-amz-object-lock-mode", entry.lock_mode))
        headers.append(("x-amz-object-lock-retain-until-date", xmldoc.iso_time(entry.lock_until)))
    if entry.legal_hold is not None:
        headers.append(("x-amz-object-lock-legal-hold", "ON" if entry.legal_hold else "OFF"))
    return headers


def _retained(entry: Entry, now: float) -> bool:
    return entry.lock_mode is not None and entry.lock_until > now


def check_retention_change(
    entry: Entry, mode: str | None, until: float, bypass: bool, now: float
) -> None:
    """May ``entry``'s retention become (mode, until)? Raises AccessDenied if not."""
    if not _retained(entry, now):
        return
    weaker = mode != entry.lock_mode or until < entry.lock_until
    if not weaker:
        return
    if entry.lock_mode == "COMPLIANCE" or not bypass:
        raise errors.access_denied("forbidden by object lock")


def check_removable(entry: Entry, bypass: bool, now: float) -> None:
    """May this version be deleted for good? Raises AccessDenied if not."""
    if entry.legal_hold:
        raise errors.access_denied("forbidden by object lock")
    if _retained(entry, now) and (entry.lock_mode == "COMPLIANCE" or not bypass):
        raise errors.access_denied("forbidden by object lock")


def bypass_requested(header: Callable[[str], str | None]) -> bool:
    return (header("x-amz-bypass-governance-retention") or "").strip().lower() == "true"
