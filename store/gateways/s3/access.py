"""Records of who may do what, kept with buckets and objects: the grants of an ACL that is
not a canned one, and a bucket's public access block."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Grant:
    """One grant of an ACL that is not a canned one: a user (by canonical id, with the
    display name it had when granted) or a group (by URI) and a permission."""

    grantee: str
    permission: str
    group: bool = False
    name: str = ""

    def to_wire(self) -> list[Any]:
        return [self.grantee, self.permission, self.group, self.name]

    @classmethod
    def from_wire(cls, raw: Any) -> Grant:
        grantee, permission, group, name = raw
        return cls(str(grantee), str(permission), bool(group), str(name))


def grants_of(raw: Any) -> tuple[Grant, ...]:
    return tuple(Grant.from_wire(g) for g in raw or ())


@dataclass(frozen=True)
class PublicAccessBlock:
    """What a bucket's owner forbids public ACLs and a public bucket policy to do."""

    block_public_acls: bool = False  # refuse requests that set a public ACL
    ignore_public_acls: bool = False  # grant nothing by a public ACL
    block_public_policy: bool = False  # refuse a public bucket policy
    restrict_public_buckets: bool = False  # a public policy grants only the owner

    def to_wire(self) -> list[bool]:
        return [
            self.block_public_acls,
            self.ignore_public_acls,
            self.block_public_policy,
            self.restrict_public_buckets,
        ]

    @classmethod
    def from_wire(cls, raw: Any) -> PublicAccessBlock:
        return cls(*(bool(flag) for flag in raw[:4]))
