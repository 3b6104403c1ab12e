"""A request in a bucket policy's terms: its action, its resource and its context keys.

Actions are named as S3 names them for policies, which is not always the operation's
name: a listing is ``s3:ListBucket``, a HEAD is the GET's action, a multipart upload's
steps are ``s3:PutObject``, and an operation on a named version (``?versionId=``) is the
``...Version`` action. Context keys are lower-cased, each with a list of values.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qsl, unquote

# operation -> action; operations absent here are named "s3:" + the operation.
ACTIONS = {
    "HeadBucket": "s3:ListBucket",
    "ListObjects": "s3:ListBucket",
    "ListObjectsV2": "s3:ListBucket",
    "ListObjectVersions": "s3:ListBucketVersions",
    "ListMultipartUploads": "s3:ListBucketMultipartUploads",
    "HeadObject": "s3:GetObject",
    "CopyObject": "s3:PutObject",
    "PostObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "UploadPartCopy": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "ListParts": "s3:ListMultipartUploadParts",
    "DeleteObjects": "s3:DeleteObject",
    "GetBucketCors": "s3:GetBucketCORS",
    "PutBucketCors": "s3:PutBucketCORS",
    "DeleteBucketCors": "s3:PutBucketCORS",
    "DeleteBucketTagging": "s3:PutBucketTagging",
    "GetPublicAccessBlock": "s3:GetBucketPublicAccessBlock",
    "PutPublicAccessBlock": "s3:PutBucketPublicAccessBlock",
    "DeletePublicAccessBlock": "s3:PutBucketPublicAccessBlock",
    "GetObjectLockConfiguration": "s3:GetBucketObjectLockConfiguration",
    "PutObjectLockConfiguration": "s3:PutBucketObjectLockConfiguration",
    "GetBucketLifecycleConfiguration": "s3:GetLifecycleConfiguration",
    "DeleteBucketLifecycle": "s3:PutLifecycleConfiguration",
    "GetBucketEncryption": "s3:GetEncryptionConfiguration",
    "DeleteBucketEncryption": "s3:PutEncryptionConfiguration",
    "GetBucketReplication": "s3:GetReplicationConfiguration",
    "DeleteBucketReplication": "s3:PutReplicationConfiguration",
    "DeleteBucketOwnershipControls": "s3:PutBucketOwnershipControls",
    "GetBucketNotificationConfiguration": "s3:GetBucketNotification",
    "GetBucketAccelerateConfiguration": "s3:GetAccelerateConfiguration",
    "DeleteBucketWebsite": "s3:DeleteBucketWebsite",
}
# The action of an operation on a named version.
VERSION_ACTIONS = {
    "s3:GetObject": "s3:GetObjectVersion",
    "s3:DeleteObject": "s3:DeleteObjectVersion",
    "s3:GetObjectAcl": "s3:GetObjectVersionAcl",
    "s3:PutObjectAcl": "s3:PutObjectVersionAcl",
    "s3:GetObjectTagging": "s3:GetObjectVersionTagging",
    "s3:PutObjectTagging": "s3:PutObjectVersionTagging",
    "s3:DeleteObjectTagging": "s3:DeleteObjectVersionTagging",
    "s3:GetObjectAttributes": "s3:GetObjectVersionAttributes",
}
# The actions on the policy itself: its bucket owner's alone, whatever the policy says
# (nobody is locked out of changing it, nobody else can take it over).
OWNER_KEEPS = frozenset({"s3:GetBucketPolicy", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy"})
# Request headers that are condition keys of the same name under "s3:".
HEADER_KEYS = (
    "x-amz-acl",
    "x-amz-grant-read",
    "x-amz-grant-write",
    "x-amz-grant-read-acp",
    "x-amz-grant-write-acp",
    "x-amz-grant-full-control",
    "x-amz-metadata-directive",
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-storage-class",
    "x-amz-content-sha256",
)
# Request headers whose condition keys have other names.
RENAMED_HEADERS = {
    "x-amz-object-lock-mode": "s3:object-lock-mode",
    "x-amz-object-lock-retain-until-date": "s3:object-lock-retain-until-date",
    "x-amz-object-lock-legal-hold": "s3:object-lock-legal-hold",
    "user-agent": "aws:useragent",
    "referer": "aws:referer",
}
LISTING_PARAMS = {"prefix": "s3:prefix", "delimiter": "s3:delimiter", "max-keys": "s3:max-keys"}


def action_of(operation: str, params: Mapping[str, str]) -> str:
    action = ACTIONS.get(operation, "s3:" + operation)
    if "versionId" in params:
        action = VERSION_ACTIONS.get(action, action)
    return action


def resource_of(bucket: str, key: str | None = None) -> str:
    return f"arn:aws:s3:::{bucket}" + (f"/{key}" if key is not None else "")


def request_keys(
    headers: Sequence[tuple[str, str]],
    params: Mapping[str, str],
    *,
    peer: str,
    secure: bool,
    user: tuple[str, str] | None,
    signature: str | None,
) -> dict[str, list[str]]:
    """The context keys of a request: where it comes from, who sends it (``user``: name
    and canonical id, None when anonymous), what it asks for."""
    now = time.time()
    keys: dict[str, list[str]] = {
        "aws:sourceip": [peer],
        "aws:securetransport": ["true" if secure else "false"],
        "aws:epochtime": [str(int(now))],
        "aws:currenttime": [
            datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ],
        "aws:principaltype": ["Anonymous" if user is None else "User"],
    }
    if user is not None:
        keys["aws:username"] = [user[0]]
        keys["aws:userid"] = [user[1]]
    if signature is not None:
        keys["s3:signatureversion"] = [signature]
    for name, value in headers:
        if name in HEADER_KEYS:
            keys.setdefault("s3:" + name, []).append(value.strip())
        elif name in RENAMED_HEADERS:
            keys[RENAMED_HEADERS[name]] = [value.strip()]
        elif name == "x-amz-copy-source":
            keys["s3:x-amz-copy-source"] = [copy_source_key(value)]
        elif name == "x-amz-tagging":
            tags = parse_qsl(value, keep_blank_values=True)
            for tag, tag_value in tags:
                keys[f"s3:requestobjecttag/{tag.lower()}"] = [tag_value]
            keys["s3:requestobjecttagkeys"] = [tag for tag, _ in tags]
    for param, key in LISTING_PARAMS.items():
        if param in params:
            keys[key] = [params[param]]
    if "versionId" in params:
        keys["s3:versionid"] = [params["versionId"]]
    return keys


def copy_source_key(header: str) -> str:
    """``x-amz-copy-source`` as policies compare it: ``bucket/key``, decoded, without a
    version."""
    path = header.strip().split("?", 1)[0]
    return unquote(path).lstrip("/")


def object_tag_keys(tags: Mapping[str, str]) -> dict[str, list[str]]:
    """``s3:ExistingObjectTag/<key>`` of an object's tags."""
    return {f"s3:existingobjecttag/{k.lower()}": [v] for k, v in tags.items()}
