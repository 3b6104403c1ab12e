"""Bucket policies: a JSON document parsed once, then decided per request, without I/O.

A policy is a list of statements. A statement *applies* to a request when its principal
names the caller, its action pattern the request's action (``s3:GetObject`` ...), its
resource pattern the bucket or object (``arn:aws:s3:::bucket/key``), and every one of its
conditions holds for the request's context keys. :meth:`Policy.decide` answers ``DENY``
when a Deny statement applies (an explicit deny wins over everything), ``ALLOW`` when only
Allow statements do, and None when none applies; the caller then falls back to the ACLs.

Patterns take ``*`` and ``?``; actions match without regard to case, resources and
string conditions with it. Conditions follow IAM's rules: several values of one key
match if any does; several keys, and several operators, must all hold; a key missing from
the request makes a condition false, or true for a negated operator (``StringNotEquals``
...), and true for an ``...IfExists`` one; ``Null`` tests presence. ``ForAnyValue:`` and
``ForAllValues:`` compare keys of several values (``s3:RequestObjectTagKeys``).
``${aws:username}`` and ``${aws:userid}`` in resources and values stand for the caller.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

ALLOW, DENY = "Allow", "Deny"
MAX_POLICY_BYTES = 20 * 1024
VERSIONS = ("2012-10-17", "2008-10-17")
# Condition keys that pin a statement to known callers: with one of them (and no
# wildcard in its values) an Allow to everyone is not public.
PINNING_KEYS = frozenset(
    {
        "aws:sourceip",
        "aws:sourcearn",
        "aws:sourcevpc",
        "aws:sourcevpce",
        "aws:sourceowner",
        "aws:sourceaccount",
        "aws:userid",
        "aws:principalarn",
        "aws:principalaccount",
        "aws:principalorgid",
        "s3:dataaccesspointarn",
        "s3:dataaccesspointaccount",
    }
)


class PolicyError(ValueError):
    """The document is not a policy this gateway can enforce (MalformedPolicy)."""


@dataclass(frozen=True)
class Caller:
    """Who asks: the canonical id (``ANONYMOUS_ID`` for unsigned requests) and name."""

    user_id: str
    name: str
    anonymous: bool


@dataclass(frozen=True)
class Principal:
    everyone: bool
    names: frozenset[str]  # canonical ids, account ids, user names, as the ARNs give them

    def matches(self, caller: Caller) -> bool:
        if self.everyone:
            return True
        if caller.anonymous:
            return False
        return caller.user_id in self.names or caller.name in self.names


@dataclass(frozen=True)
class Condition:
    operator: str  # the base operator: StringEquals, NumericLessThan ...
    key: str  # lower-cased
    values: tuple[str, ...]
    if_exists: bool = False
    qualifier: str = ""  # "", "ForAnyValue" or "ForAllValues"

    def holds(self, keys: Mapping[str, Sequence[str]], caller: Caller) -> bool:
        present = keys.get(self.key)
        if self.operator == "Null":
            wanted_absent = self.values[0].lower() == "true"
            return (not present) == wanted_absent
        negated, test = _OPERATORS[self.operator]
        if not present:
            if self.qualifier == "ForAllValues":
                return True  # every one of no values matches
            if self.qualifier == "ForAnyValue":
                return self.if_exists  # none of no values does
            return self.if_exists or negated
        values = [_substitute(v, caller) for v in self.values]

        def one(actual: str) -> bool:
            """A request value against the policy's: equal to (like ...) any of them,
            or for a negated operator, to none."""
            return any(test(actual, wanted) for wanted in values) != negated

        if self.qualifier == "ForAllValues" or (negated and not self.qualifier):
            return all(one(actual) for actual in present)
        return any(one(actual) for actual in present)


@dataclass(frozen=True)
class Statement:
    effect: str
    principal: Principal | None
    not_principal: Principal | None
    actions: tuple[str, ...]
    not_action: bool
    resources: tuple[str, ...]
    not_resource: bool
    conditions: tuple[Condition, ...]

    def applies(
        self, caller: Caller, action: str, resource: str, keys: Mapping[str, Sequence[str]]
    ) -> bool:
        if self.principal is not None and not self.principal.matches(caller):
            return False
        if self.not_principal is not None and self.not_principal.matches(caller):
            return False
        named = any(_glob(a, ignore_case=True).fullmatch(action) for a in self.actions)
        if named == self.not_action:
            return False
        covered = any(_glob(_substitute(r, caller)).fullmatch(resource) for r in self.resources)
        if covered == self.not_resource:
            return False
        return all(c.holds(keys, caller) for c in self.conditions)

    @property
    def public(self) -> bool:
        """An Allow to everyone that no condition pins to known callers."""
        if self.effect != ALLOW or self.principal is None or not self.principal.everyone:
            return False
        return not any(
            c.key in PINNING_KEYS and not any("*" in v for v in c.values) for c in self.conditions
        )


@dataclass(frozen=True)
class Policy:
    text: str
    statements: tuple[Statement, ...]

    def decide(
        self, caller: Caller, action: str, resource: str, keys: Mapping[str, Sequence[str]]
    ) -> str | None:
        decision = None
        for statement in self.statements:
            if statement.applies(caller, action, resource, keys):
                if statement.effect == DENY:
                    return DENY
                decision = ALLOW
        return decision

    @property
    def public(self) -> bool:
        return any(s.public for s in self.statements)


def parse(text: str, bucket: str) -> Policy:
    """A policy for ``bucket``, checked as PutBucketPolicy checks one; raises PolicyError."""
    if len(text.encode("utf-8")) > MAX_POLICY_BYTES:
        raise PolicyError("Policies must be no more than 20480 bytes")
    policy = _parse(text)
    for statement in policy.statements:
        if not statement.not_resource and not any(
            _names_bucket(r, bucket) for r in statement.resources
        ):
            raise PolicyError("Policy has invalid resource")
    return policy


@functools.lru_cache(maxsize=512)
def parsed(text: str) -> Policy:
    """The policy of a stored document (checked when it was put), parsed once."""
    return _parse(text)


def _parse(text: str) -> Policy:
    try:
        document = json.loads(text)
    except ValueError:
        raise PolicyError("This policy contains invalid Json") from None
    if not isinstance(document, dict):
        raise PolicyError("This policy contains invalid Json")
    version = document.get("Version", VERSIONS[0])
    if version not in VERSIONS:
        raise PolicyError("The policy must contain a valid version string")
    raw = document.get("Statement")
    if raw is None:
        raise PolicyError("Missing required field Statement")
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise PolicyError("Missing required field Statement")
    return Policy(text, tuple(_statement(item) for item in items))


def _statement(raw: object) -> Statement:
    if not isinstance(raw, dict):
        raise PolicyError("Statement is not an object")
    effect = raw.get("Effect")
    if effect not in (ALLOW, DENY):
        raise PolicyError(f"Invalid effect: {effect}")
    principal, not_principal = raw.get("Principal"), raw.get("NotPrincipal")
    if (principal is None) == (not_principal is None):
        raise PolicyError("Missing required field Principal")
    if not_principal is not None and effect == ALLOW:
        raise PolicyError("NotPrincipal is only supported with Deny")
    actions, not_action = _either(raw, "Action", "NotAction")
    for action in actions:
        if action != "*" and not action.lower().startswith("s3:"):
            raise PolicyError("Policy has invalid action")
    resources, not_resource = _either(raw, "Resource", "NotResource")
    for resource in resources:
        if resource != "*" and _arn_path(resource) is None:
            raise PolicyError("Policy has invalid resource")
    return Statement(
        effect=str(effect),
        principal=_principal(principal) if principal is not None else None,
        not_principal=_principal(not_principal) if not_principal is not None else None,
        actions=actions,
        not_action=not_action,
        resources=tuple("arn:aws:s3:::*" if r == "*" else _normal_arn(r) for r in resources),
        not_resource=not_resource,
        conditions=_conditions(raw.get("Condition")),
    )


def _strings(raw: object, what: str) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if not items or not all(isinstance(i, str) for i in items):
        raise PolicyError(f"Invalid {what}")
    return tuple(items)


def _either(raw: dict[str, object], name: str, negated: str) -> tuple[tuple[str, ...], bool]:
    if (raw.get(name) is None) == (raw.get(negated) is None):
        raise PolicyError(f"Missing required field {name}")
    if raw.get(name) is not None:
        return _strings(raw[name], name), False
    return _strings(raw[negated], name), True


def _principal(raw: object) -> Principal:
    if raw == "*":
        return Principal(True, frozenset())
    if not isinstance(raw, dict) or not raw:
        raise PolicyError("Invalid principal in policy")
    names: set[str] = set()
    everyone = False
    for kind, value in raw.items():
        values = _strings(value, "principal in policy")
        if kind == "AWS":
            for item in values:
                if item == "*":
                    everyone = True
                else:
                    names.add(_principal_name(item))
        elif kind == "CanonicalUser":
            names.update(values)
        elif kind not in ("Service", "Federated"):  # real kinds, never one of our users
            raise PolicyError("Invalid principal in policy")
    return Principal(everyone, frozenset(names))


def _principal_name(value: str) -> str:
    """``arn:aws:iam::ACCOUNT:root`` names the account, ``...:user/NAME`` a user by name
    (or id); anything else is taken as an account or canonical id."""
    if not value.startswith("arn:"):
        return value
    parts = value.split(":", 5)
    if len(parts) != 6 or parts[2] != "iam":
        raise PolicyError("Invalid principal in policy")
    account, resource = parts[4], parts[5]
    if resource == "root":
        return account
    if resource.startswith("user/"):
        return resource.rpartition("/")[2]
    raise PolicyError("Invalid principal in policy")


def _arn_path(arn: str) -> str | None:
    """The ``bucket[/key]`` part of an S3 ARN, or None if it is not one."""
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "s3" or not parts[5]:
        return None
    return parts[5]


def _normal_arn(arn: str) -> str:
    """Region and account do not count for buckets: compare paths only."""
    path = _arn_path(arn)
    assert path is not None
    return "arn:aws:s3:::" + path


def _names_bucket(resource: str, bucket: str) -> bool:
    path = _arn_path(resource)
    if path is None:
        return False
    return bool(_glob(path.partition("/")[0]).fullmatch(bucket))


_OPERATOR = re.compile(r"^(?:(ForAnyValue|ForAllValues):)?(\w+?)(IfExists)?$")


def _conditions(raw: object) -> tuple[Condition, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise PolicyError("Invalid Condition block")
    found: list[Condition] = []
    for name, block in raw.items():
        match = _OPERATOR.match(str(name))
        if match is None or match.group(2) not in (*_OPERATORS, "Null"):
            raise PolicyError(f"Invalid Condition type : {name}")
        qualifier, operator, if_exists = match.groups()
        if not isinstance(block, dict) or not block:
            raise PolicyError(f"Invalid Condition block for {name}")
        for key, value in block.items():
            values = tuple(
                _condition_value(v) for v in (value if isinstance(value, list) else [value])
            )
            if not values:
                raise PolicyError(f"Invalid Condition value for {key}")
            condition = Condition(
                operator, str(key).lower(), values, bool(if_exists), qualifier or ""
            )
            _check_values(condition)
            found.append(condition)
    return tuple(found)


def _condition_value(raw: object) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, (str, int, float)):
        return str(raw)
    raise PolicyError("Invalid Condition value")


def _check_values(condition: Condition) -> None:
    try:
        for value in condition.values:
            if condition.operator.startswith("Numeric"):
                float(value)
            elif condition.operator.startswith("Date"):
                _date(value)
            elif condition.operator in ("IpAddress", "NotIpAddress"):
                ipaddress.ip_network(value, strict=False)
            elif condition.operator in ("Bool", "Null") and value.lower() not in ("true", "false"):
                raise ValueError(value)
    except ValueError:
        raise PolicyError(f"Invalid value for {condition.operator}: {condition.key}") from None


def _substitute(text: str, caller: Caller) -> str:
    if "${" not in text:
        return text
    names = {
        "aws:username": caller.name,
        "aws:userid": caller.user_id,
        "*": "*",
        "?": "?",
        "$": "$",
    }
    return re.sub(r"\$\{([^}]*)\}", lambda m: names.get(m.group(1).lower(), m.group(0)), text)


@functools.lru_cache(maxsize=4096)
def _glob(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    body = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile(body, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _date(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    stamp = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return stamp.timestamp()


def _compared(
    parse: Callable[[str], float], test: Callable[[float, float], bool]
) -> Callable[[str, str], bool]:
    """A test of numbers (or dates) as the request and the policy write them; a request
    value that does not parse matches nothing."""

    def compare(actual: str, wanted: str) -> bool:
        try:
            return test(parse(actual), parse(wanted))
        except ValueError:
            return False

    return compare


def _in_network(actual: str, wanted: str) -> bool:
    try:
        return ipaddress.ip_address(actual) in ipaddress.ip_network(wanted, strict=False)
    except ValueError:
        return False


def _like(actual: str, wanted: str) -> bool:
    return bool(_glob(wanted).fullmatch(actual))


# base operator -> (negated, test of one request value against one policy value)
_OPERATORS: dict[str, tuple[bool, Callable[[str, str], bool]]] = {
    "StringEquals": (False, lambda a, w: a == w),
    "StringNotEquals": (True, lambda a, w: a == w),
    "StringEqualsIgnoreCase": (False, lambda a, w: a.lower() == w.lower()),
    "StringNotEqualsIgnoreCase": (True, lambda a, w: a.lower() == w.lower()),
    "StringLike": (False, _like),
    "StringNotLike": (True, _like),
    "NumericEquals": (False, _compared(float, lambda a, w: a == w)),
    "NumericNotEquals": (True, _compared(float, lambda a, w: a == w)),
    "NumericLessThan": (False, _compared(float, lambda a, w: a < w)),
    "NumericLessThanEquals": (False, _compared(float, lambda a, w: a <= w)),
    "NumericGreaterThan": (False, _compared(float, lambda a, w: a > w)),
    "NumericGreaterThanEquals": (False, _compared(float, lambda a, w: a >= w)),
    "DateEquals": (False, _compared(_date, lambda a, w: a == w)),
    "DateNotEquals": (True, _compared(_date, lambda a, w: a == w)),
    "DateLessThan": (False, _compared(_date, lambda a, w: a < w)),
    "DateLessThanEquals": (False, _compared(_date, lambda a, w: a <= w)),
    "DateGreaterThan": (False, _compared(_date, lambda a, w: a > w)),
    "DateGreaterThanEquals": (False, _compared(_date, lambda a, w: a >= w)),
    "Bool": (False, lambda a, w: a.lower() == w.lower()),
    "BinaryEquals": (False, lambda a, w: a == w),
    "IpAddress": (False, _in_network),
    "NotIpAddress": (True, _in_network),
    "ArnEquals": (False, _like),
    "ArnLike": (False, _like),
    "ArnNotEquals": (True, _like),
    "ArnNotLike": (True, _like),
}
