"""Bucket policies without I/O: what PutBucketPolicy refuses, and what a policy decides
for a caller, an action, a resource and the request's context keys."""

from __future__ import annotations

import json
from typing import Any

import pytest

from store.gateways.s3 import policy, policy_requests
from store.gateways.s3.policy import ALLOW, DENY, Caller, PolicyError

ALICE = Caller("a" * 64, "alice", anonymous=False)
BOB = Caller("b" * 64, "bob", anonymous=False)
NOBODY = Caller("65a011a29cdf8ec533ec3d1ccaae921c", "anonymous", anonymous=True)
BUCKET = "arn:aws:s3:::photos"


def document(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def statement(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": "*",
        "Action": "s3:GetObject",
        "Resource": f"{BUCKET}/*",
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def decide(
    text: str,
    caller: Caller = BOB,
    action: str = "s3:GetObject",
    resource: str = f"{BUCKET}/cat.jpg",
    **keys: list[str],
) -> str | None:
    found = {k.replace("_", ":", 1).replace("_", "-").lower(): v for k, v in keys.items()}
    return policy.parse(text, "photos").decide(caller, action, resource, found)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "invalid Json"),
        ("[]", "invalid Json"),
        (json.dumps({"Version": "2012-10-17"}), "Missing required field Statement"),
        (json.dumps({"Version": "1999", "Statement": [statement()]}), "valid version"),
        (document(statement(Effect="Maybe")), "Invalid effect"),
        (document(statement(Principal=None)), "Missing required field Principal"),
        (document(statement(Action=None)), "Missing required field Action"),
        (document(statement(Resource=None)), "Missing required field Resource"),
        (document(statement(Action="ec2:RunInstances")), "invalid action"),
        (document(statement(Resource="arn:aws:sqs:::queue")), "invalid resource"),
        (document(statement(Resource="arn:aws:s3:::other-bucket/*")), "invalid resource"),
        (document(statement(Principal={"AWS": "arn:aws:sts::1:role/x"})), "Invalid principal"),
        (
            document(statement(Principal=None, NotPrincipal={"AWS": "arn:aws:iam::t:root"})),
            "NotPrincipal",
        ),
        (document(statement(Condition={"StringSorta": {"s3:prefix": "a"}})), "Condition type"),
        (document(statement(Condition={"IpAddress": {"aws:SourceIp": "not-an-ip"}})), "value"),
        (document(statement(Condition={"NumericLessThan": {"s3:max-keys": "x"}})), "value"),
        ("x" * (policy.MAX_POLICY_BYTES + 1), "20480"),
    ],
)
def test_malformed_policies_are_refused(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        policy.parse(text, "photos")


def test_resources_may_name_the_bucket_by_pattern() -> None:
    text = document(statement(Resource=["arn:aws:s3:::*", "arn:aws:s3:::*/*"]))
    assert decide(text) == ALLOW
    assert decide(document(statement(Resource="arn:aws:s3:::pho?os/*"))) == ALLOW
    # Region and account are empty for S3, or a wildcard.
    assert decide(document(statement(Resource="arn:aws:s3::*:photos/*"))) == ALLOW


def test_allow_deny_and_nothing() -> None:
    text = document(
        statement(Action="s3:Get*"),
        statement(Effect="Deny", Resource=f"{BUCKET}/private/*"),
    )
    assert decide(text) == ALLOW
    assert decide(text, action="s3:getobjecttagging") == ALLOW  # actions ignore case
    assert decide(text, resource=f"{BUCKET}/private/x") == DENY  # an explicit deny wins
    assert decide(text, action="s3:PutObject") is None  # the ACLs decide
    assert decide(text, resource=BUCKET) is None  # the bucket is not bucket/*
    assert decide(text, resource=f"{BUCKET}/CAT.jpg") == ALLOW
    narrow = document(statement(Resource=f"{BUCKET}/cat.jpg"))
    assert decide(narrow, resource=f"{BUCKET}/CAT.jpg") is None  # resources keep case


def test_principals() -> None:
    everyone = document(statement(Principal={"AWS": "*"}))
    assert decide(everyone, caller=NOBODY) == ALLOW
    by_name = document(statement(Principal={"AWS": ["arn:aws:iam:::user/bob"]}))
    assert decide(by_name) == ALLOW
    assert decide(by_name, caller=ALICE) is None
    assert decide(by_name, caller=NOBODY) is None
    by_id = document(statement(Principal={"CanonicalUser": "b" * 64}))
    assert decide(by_id) == ALLOW and decide(by_id, caller=ALICE) is None
    by_account = document(statement(Principal={"AWS": f"arn:aws:iam::{'b' * 64}:root"}))
    assert decide(by_account) == ALLOW
    deny_all_but_alice = document(
        statement(Effect="Deny", Principal=None, NotPrincipal={"AWS": "arn:aws:iam:::user/alice"})
    )
    assert decide(deny_all_but_alice) == DENY
    assert decide(deny_all_but_alice, caller=ALICE) is None


def test_not_action_and_not_resource() -> None:
    text = document(statement(Effect="Deny", Action=None, NotAction="s3:GetObject"))
    assert decide(text, action="s3:DeleteObject") == DENY
    assert decide(text) is None
    text = document(statement(Resource=None, NotResource=f"{BUCKET}/secret/*"))
    assert decide(text) == ALLOW
    assert decide(text, resource=f"{BUCKET}/secret/x") is None


def test_string_conditions() -> None:
    text = document(statement(Condition={"StringLike": {"s3:x-amz-copy-source": "photos/pub/*"}}))
    assert decide(text, s3_x_amz_copy_source=["photos/pub/a"]) == ALLOW
    assert decide(text, s3_x_amz_copy_source=["photos/priv/a"]) is None
    assert decide(text) is None  # a missing key fails a positive operator
    text = document(statement(Condition={"StringNotEquals": {"s3:x-amz-acl": ["public-read"]}}))
    assert decide(text) == ALLOW  # ... and passes a negated one
    assert decide(text, s3_x_amz_acl=["private"]) == ALLOW
    assert decide(text, s3_x_amz_acl=["public-read"]) is None
    text = document(statement(Condition={"StringEqualsIgnoreCase": {"s3:prefix": "Docs/"}}))
    assert decide(text, s3_prefix=["docs/"]) == ALLOW
    text = document(statement(Condition={"StringEquals": {"s3:prefix": ["a/", "b/"]}}))
    assert decide(text, s3_prefix=["b/"]) == ALLOW  # any of the values


def test_if_exists_null_and_several_keys() -> None:
    text = document(
        statement(Condition={"StringLikeIfExists": {"aws:Referer": "http://www.example.com/*"}})
    )
    assert decide(text) == ALLOW
    assert decide(text, aws_referer=["http://www.example.com/x"]) == ALLOW
    assert decide(text, aws_referer=["http://example.com"]) is None
    text = document(statement(Condition={"Null": {"s3:x-amz-acl": "true"}}))
    assert decide(text) == ALLOW and decide(text, s3_x_amz_acl=["private"]) is None
    both = document(
        statement(
            Condition={
                "StringEquals": {"s3:prefix": "a/", "s3:delimiter": "/"},
                "NumericLessThanEquals": {"s3:max-keys": "100"},
            }
        )
    )
    assert decide(both, s3_prefix=["a/"], s3_delimiter=["/"], s3_max_keys=["10"]) == ALLOW
    assert decide(both, s3_prefix=["a/"], s3_delimiter=["/"], s3_max_keys=["1000"]) is None
    assert decide(both, s3_prefix=["a/"], s3_max_keys=["10"]) is None


def test_set_qualifiers() -> None:
    any_of = document(
        statement(Condition={"ForAnyValue:StringEquals": {"s3:RequestObjectTagKeys": "team"}})
    )
    all_of = document(
        statement(
            Condition={"ForAllValues:StringEquals": {"s3:RequestObjectTagKeys": ["team", "env"]}}
        )
    )
    tags = {"s3_RequestObjectTagKeys": ["team", "owner"]}
    assert decide(any_of, **tags) == ALLOW
    assert decide(all_of, **tags) is None
    assert decide(all_of, s3_RequestObjectTagKeys=["env"]) == ALLOW
    assert decide(all_of) == ALLOW and decide(any_of) is None  # no values at all
    # Negated: every value (ForAllValues), or some value (ForAnyValue), matches none.
    none_secret = document(
        statement(Condition={"ForAllValues:StringNotEquals": {"s3:RequestObjectTagKeys": "x"}})
    )
    some_other = document(
        statement(Condition={"ForAnyValue:StringNotEquals": {"s3:RequestObjectTagKeys": "x"}})
    )
    assert decide(none_secret, **tags) == ALLOW
    assert decide(none_secret, s3_RequestObjectTagKeys=["team", "x"]) is None
    assert decide(some_other, s3_RequestObjectTagKeys=["team", "x"]) == ALLOW
    assert decide(some_other, s3_RequestObjectTagKeys=["x"]) is None
    assert decide(some_other) is None


def test_numbers_dates_addresses_and_booleans() -> None:
    text = document(statement(Condition={"IpAddress": {"aws:SourceIp": "127.0.0.0/8"}}))
    assert decide(text, aws_SourceIp=["127.0.0.1"]) == ALLOW
    assert decide(text, aws_SourceIp=["10.0.0.1"]) is None
    text = document(statement(Condition={"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}))
    assert decide(text, aws_SourceIp=["127.0.0.1"]) == ALLOW
    text = document(
        statement(Condition={"DateLessThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"}})
    )
    assert decide(text, aws_CurrentTime=["2026-11-22T00:00:00Z"]) == ALLOW
    assert decide(text, aws_CurrentTime=["2031-01-01T00:00:00Z"]) is None
    text = document(statement(Effect="Deny", Condition={"Bool": {"aws:SecureTransport": False}}))
    assert decide(text, aws_SecureTransport=["false"]) == DENY
    assert decide(text, aws_SecureTransport=["true"]) is None


def test_policy_variables_name_the_caller() -> None:
    text = document(statement(Resource=f"{BUCKET}/home/${{aws:username}}/*"))
    assert decide(text, resource=f"{BUCKET}/home/bob/x") == ALLOW
    assert decide(text, resource=f"{BUCKET}/home/alice/x") is None


def test_public_policies() -> None:
    assert policy.parse(document(statement()), "photos").public
    pinned = statement(Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/32"}})
    assert not policy.parse(document(pinned), "photos").public
    named = statement(Principal={"AWS": "arn:aws:iam::s3tenant1:root"})
    assert not policy.parse(document(named), "photos").public
    assert not policy.parse(document(statement(Effect="Deny")), "photos").public


def test_actions_of_operations() -> None:
    assert policy_requests.action_of("ListObjectsV2", {}) == "s3:ListBucket"
    assert policy_requests.action_of("HeadObject", {}) == "s3:GetObject"
    assert policy_requests.action_of("GetObject", {"versionId": "x"}) == "s3:GetObjectVersion"
    assert policy_requests.action_of("UploadPart", {}) == "s3:PutObject"
    assert policy_requests.action_of("PutBucketTagging", {}) == "s3:PutBucketTagging"
    assert policy_requests.action_of("DeletePublicAccessBlock", {}) == (
        "s3:PutBucketPublicAccessBlock"
    )


def test_request_keys() -> None:
    keys = policy_requests.request_keys(
        [
            ("x-amz-acl", "public-read"),
            ("x-amz-copy-source", "/src/pub%20lic/a.txt?versionId=123"),
            ("x-amz-tagging", "security=public&team="),
            ("referer", "http://example.com/"),
        ],
        {"prefix": "docs/", "max-keys": "5"},
        peer="127.0.0.1",
        secure=False,
        user=("bob", "b" * 64),
        signature="AWS4-HMAC-SHA256",
    )
    assert keys["s3:x-amz-acl"] == ["public-read"]
    assert keys["s3:x-amz-copy-source"] == ["src/pub lic/a.txt"]
    assert keys["s3:requestobjecttag/security"] == ["public"]
    assert keys["s3:requestobjecttagkeys"] == ["security", "team"]
    assert keys["s3:prefix"] == ["docs/"] and keys["s3:max-keys"] == ["5"]
    assert keys["aws:sourceip"] == ["127.0.0.1"] and keys["aws:securetransport"] == ["false"]
    assert keys["aws:username"] == ["bob"] and keys["aws:referer"] == ["http://example.com/"]
    anonymous = policy_requests.request_keys(
        [], {}, peer="::1", secure=True, user=None, signature=None
    )
    assert "aws:username" not in anonymous and anonymous["aws:principaltype"] == ["Anonymous"]
