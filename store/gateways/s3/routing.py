"""From a request line to an S3 operation: addressing, names and sub-resources.

Path-style requests name the bucket in the first path segment (``/bucket/key``);
virtual-host-style requests name it in the Host header (``bucket.DOMAIN``, for a ``--domain``
the gateway was given). The query's sub-resources (``?uploads``, ``?acl``, ``?list-type=2``
...) then choose the operation, named as in the S3 API reference. Any sub-resource this
gateway does not implement resolves to NotImplemented: an operation must never be mistaken
for a different one that would "succeed".
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from store.gateways.s3 import errors
from store.gateways.s3.sigv4 import decode_component, split_query

MAX_KEY_BYTES = 1024

# Sub-resources that select an operation (or must be refused as unimplemented). Any other
# query parameter (x-id, prefix, max-keys ...) is an argument.
BUCKET_SUBRESOURCES = frozenset(
    {
        "accelerate",
        "acl",
        "analytics",
        "cors",
        "delete",
        "encryption",
        "intelligent-tiering",
        "inventory",
        "lifecycle",
        "location",
        "logging",
        "metadataTable",
        "metrics",
        "notification",
        "object-lock",
        "ownershipControls",
        "policy",
        "policyStatus",
        "publicAccessBlock",
        "replication",
        "requestPayment",
        "tagging",
        "uploads",
        "versioning",
        "versions",
        "website",
    }
)
OBJECT_SUBRESOURCES = frozenset(
    {
        "acl",
        "attributes",
        "legal-hold",
        "renameObject",
        "restore",
        "retention",
        "select",
        "tagging",
        "torrent",
        "uploadId",
        "uploads",
    }
)

# Bucket configurations this gateway has no way to set: reading one truthfully answers
# "none configured" with the error S3 uses for that; writing one is NotImplemented.
UNCONFIGURED_BUCKET_GETS = {
    "encryption": "GetBucketEncryption",
    "lifecycle": "GetBucketLifecycleConfiguration",
    "ownershipControls": "GetBucketOwnershipControls",
    "replication": "GetBucketReplication",
    "website": "GetBucketWebsite",
    "logging": "GetBucketLogging",
    "notification": "GetBucketNotificationConfiguration",
    "accelerate": "GetBucketAccelerateConfiguration",
    "requestPayment": "GetBucketRequestPayment",
}
UNCONFIGURED_BUCKET_DELETES = {
    "lifecycle": "DeleteBucketLifecycle",
    "website": "DeleteBucketWebsite",
    "encryption": "DeleteBucketEncryption",
    "ownershipControls": "DeleteBucketOwnershipControls",
    "replication": "DeleteBucketReplication",
}

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass
class Route:
    operation: str
    bucket: str | None = None
    key: str | None = None
    params: dict[str, str] = field(default_factory=dict)  # decoded, first value of each name
    virtual_host: bool = False

    @property
    def resource(self) -> str:
        """What error documents name as the ``Resource``."""
        if self.bucket is None:
            return "/"
        return f"/{self.bucket}" + (f"/{self.key}" if self.key is not None else "")


def valid_bucket_name(name: str) -> bool:
    """S3's rules for new bucket names (the ones DNS-compatible addressing needs)."""
    if not _BUCKET_NAME.match(name) or ".." in name or ".-" in name or "-." in name:
        return False
    if name.startswith(("xn--", "sthree-", "amzn-s3-demo-")) or name.endswith(
        ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
    ):
        return False
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return True
    return False


def decode_params(raw_query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for raw_name, raw_value in split_query(raw_query):
        params.setdefault(decode_component(raw_name), decode_component(raw_value))
    return params


def bucket_from_host(host: str | None, domains: tuple[str, ...]) -> str | None:
    """The bucket a virtual-host-style Host header names, or None for path-style."""
    if not host or not domains:
        return None
    name = host.strip().lower()
    if name.startswith("["):
        return None  # an IPv6 literal
    name = name.rpartition(":")[0] if ":" in name else name
    for domain in domains:
        if name.endswith("." + domain):
            bucket = name[: -len(domain) - 1]
            return bucket or None
    return None


def decode_key(raw: str) -> str:
    return check_key(decode_component(raw))


def check_key(key: str) -> str:
    """A key as S3 allows it: at most 1024 bytes of UTF-8, no NUL."""
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        raise errors.key_too_long(size)
    if "\x00" in key:
        raise errors.invalid_uri()
    return key


def route(
    method: str, raw_path: str, raw_query: str, host: str | None, domains: tuple[str, ...] = ()
) -> Route:
    """Resolve a request to an operation; raises S3Error for malformed names."""
    if not raw_path.startswith("/"):
        raise errors.invalid_uri()
    params = decode_params(raw_query)
    virtual = bucket_from_host(host, domains)
    if virtual is not None:
        bucket: str | None = virtual
        key_raw = raw_path[1:]
    else:
        first, slash, rest = raw_path[1:].partition("/")
        bucket = decode_component(first) if first else None
        key_raw = rest if slash else ""
    key = decode_key(key_raw) if key_raw else None
    if bucket is None:
        return Route(_service_operation(method), params=params)
    if method == "OPTIONS":  # a CORS preflight, of the bucket or of any key in it
        return Route("PreflightRequest", bucket, key, params, virtual_host=virtual is not None)
    if key is None:
        operation = _bucket_operation(method, params)
    else:
        operation = _object_operation(method, params)
    return Route(operation, bucket, key, params, virtual_host=virtual is not None)


def _service_operation(method: str) -> str:
    if method in ("GET", "HEAD"):
        return "ListBuckets"
    return "MethodNotAllowed"


def _subresource(params: dict[str, str], known: frozenset[str]) -> str | None:
    found = [name for name in params if name in known]
    if not found:
        return None
    # More than one (say ?acl&tagging) is not a request S3 defines.
    return found[0] if len(found) == 1 else "?"


def _bucket_operation(method: str, params: dict[str, str]) -> str:
    sub = _subresource(params, BUCKET_SUBRESOURCES)
    if method in ("GET", "HEAD") and sub is None:
        if method == "HEAD":
            return "HeadBucket"
        return "ListObjectsV2" if params.get("list-type") == "2" else "ListObjects"
    table: dict[tuple[str, str | None], str] = {
        ("GET", "location"): "GetBucketLocation",
        ("GET", "uploads"): "ListMultipartUploads",
        ("GET", "versions"): "ListObjectVersions",
        ("GET", "versioning"): "GetBucketVersioning",
        ("PUT", "versioning"): "PutBucketVersioning",
        ("GET", "object-lock"): "GetObjectLockConfiguration",
        ("PUT", "object-lock"): "PutObjectLockConfiguration",
        ("GET", "publicAccessBlock"): "GetPublicAccessBlock",
        ("PUT", "publicAccessBlock"): "PutPublicAccessBlock",
        ("DELETE", "publicAccessBlock"): "DeletePublicAccessBlock",
        ("GET", "acl"): "GetBucketAcl",
        ("GET", "tagging"): "GetBucketTagging",
        ("PUT", "tagging"): "PutBucketTagging",
        ("DELETE", "tagging"): "DeleteBucketTagging",
        ("PUT", None): "CreateBucket",
        ("PUT", "acl"): "PutBucketAcl",
        ("DELETE", None): "DeleteBucket",
        ("POST", "delete"): "DeleteObjects",
        ("POST", None): "PostObject",  # an upload from an HTML form
        ("GET", "cors"): "GetBucketCors",
        ("PUT", "cors"): "PutBucketCors",
        ("DELETE", "cors"): "DeleteBucketCors",
        ("GET", "policy"): "GetBucketPolicy",
        ("PUT", "policy"): "PutBucketPolicy",
        ("DELETE", "policy"): "DeleteBucketPolicy",
        ("GET", "policyStatus"): "GetBucketPolicyStatus",
    }
    operation = table.get((method, sub))
    if operation is not None:
        return operation
    if method == "GET" and sub in UNCONFIGURED_BUCKET_GETS:
        return UNCONFIGURED_BUCKET_GETS[sub]
    if method == "DELETE" and sub in UNCONFIGURED_BUCKET_DELETES:
        return UNCONFIGURED_BUCKET_DELETES[sub]
    if method not in ("GET", "HEAD", "PUT", "POST", "DELETE"):
        return "MethodNotAllowed"
    return "NotImplemented"


def _object_operation(method: str, params: dict[str, str]) -> str:
    sub = _subresource(params, OBJECT_SUBRESOURCES)
    table: dict[tuple[str, str | None], str] = {
        ("GET", None): "GetObject",
        ("HEAD", None): "HeadObject",
        ("PUT", None): "PutObject",  # CopyObject when x-amz-copy-source is sent
        ("DELETE", None): "DeleteObject",
        ("GET", "uploadId"): "ListParts",
        ("PUT", "uploadId"): "UploadPart",  # UploadPartCopy with x-amz-copy-source
        ("POST", "uploadId"): "CompleteMultipartUpload",
        ("DELETE", "uploadId"): "AbortMultipartUpload",
        ("POST", "uploads"): "CreateMultipartUpload",
        ("GET", "acl"): "GetObjectAcl",
        ("PUT", "acl"): "PutObjectAcl",
        ("GET", "tagging"): "GetObjectTagging",
        ("GET", "attributes"): "GetObjectAttributes",
        ("PUT", "tagging"): "PutObjectTagging",
        ("DELETE", "tagging"): "DeleteObjectTagging",
        ("GET", "retention"): "GetObjectRetention",
        ("PUT", "retention"): "PutObjectRetention",
        ("GET", "legal-hold"): "GetObjectLegalHold",
        ("PUT", "legal-hold"): "PutObjectLegalHold",
    }
    operation = table.get((method, sub))
    if operation is not None:
        return operation
    if method not in ("GET", "HEAD", "PUT", "POST", "DELETE"):
        return "MethodNotAllowed"
    return "NotImplemented"
