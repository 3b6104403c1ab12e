"""S3 errors: one code, one HTTP status, one message, as the S3 API reference lists them.

Every failure the gateway reports is an :class:`S3Error`. Constructors below are named
after the S3 error code they produce, so a reader of the handler sees the same names as a
reader of the S3 documentation. Extra elements (``Key``, ``BucketName``, ``Region`` ...)
go in ``fields`` and are rendered after the standard ones.
"""

from __future__ import annotations


class S3Error(Exception):
    """An S3 error response: ``<Error><Code/><Message/>...</Error>`` with ``status``."""

    def __init__(
        self,
        code: str,
        status: int,
        message: str,
        fields: dict[str, str] | None = None,
        *,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status
        self.message = message
        self.headers: list[tuple[str, str]] = headers or []
        self.fields: dict[str, str] = fields or {}


def access_denied(message: str = "Access Denied", **fields: str) -> S3Error:
    return S3Error("AccessDenied", 403, message, fields)


def authorization_header_malformed(detail: str, **fields: str) -> S3Error:
    return S3Error(
        "AuthorizationHeaderMalformed",
        400,
        f"The authorization header is malformed; {detail}",
        fields,
    )


def authorization_query_error(message: str, **fields: str) -> S3Error:
    # 403, not S3's 400: a presigned URL that is malformed is as unusable as an expired
    # one, and is answered the same way (the conformance suites expect this too).
    return S3Error("AuthorizationQueryParametersError", 403, message, fields)


def bad_digest(
    message: str = "The Content-MD5 you specified did not match what we received.",
) -> S3Error:
    return S3Error("BadDigest", 400, message)


def bucket_already_exists(bucket: str) -> S3Error:
    return S3Error(
        "BucketAlreadyExists",
        409,
        "The requested bucket name is not available. The bucket namespace is shared by all "
        "users of the system. Please select a different name and try again.",
        {"BucketName": bucket},
    )


def bucket_already_owned_by_you(bucket: str) -> S3Error:
    return S3Error(
        "BucketAlreadyOwnedByYou",
        409,
        "Your previous request to create the named bucket succeeded and you already own it.",
        {"BucketName": bucket},
    )


def bucket_not_empty(bucket: str) -> S3Error:
    return S3Error(
        "BucketNotEmpty", 409, "The bucket you tried to delete is not empty", {"BucketName": bucket}
    )


def entity_too_small(proposed: int, minimum: int, **fields: str) -> S3Error:
    return S3Error(
        "EntityTooSmall",
        400,
        "Your proposed upload is smaller than the minimum allowed object size.",
        {"ProposedSize": str(proposed), "MinSizeAllowed": str(minimum), **fields},
    )


def entity_too_large(proposed: int, maximum: int) -> S3Error:
    return S3Error(
        "EntityTooLarge",
        400,
        "Your proposed upload exceeds the maximum allowed object size.",
        {"ProposedSize": str(proposed), "MaxSizeAllowed": str(maximum)},
    )


def incomplete_body() -> S3Error:
    return S3Error(
        "IncompleteBody",
        400,
        "You did not provide the number of bytes specified by the Content-Length HTTP header",
    )


def internal_error() -> S3Error:
    return S3Error("InternalError", 500, "We encountered an internal error. Please try again.")


def invalid_access_key_id(access_key: str) -> S3Error:
    return S3Error(
        "InvalidAccessKeyId",
        403,
        "The AWS Access Key Id you provided does not exist in our records.",
        {"AWSAccessKeyId": access_key},
    )


def invalid_argument(message: str, name: str | None = None, value: str | None = None) -> S3Error:
    fields = {}
    if name is not None:
        fields["ArgumentName"] = name
        fields["ArgumentValue"] = value if value is not None else ""
    return S3Error("InvalidArgument", 400, message, fields)


def invalid_bucket_name(bucket: str) -> S3Error:
    return S3Error(
        "InvalidBucketName", 400, "The specified bucket is not valid.", {"BucketName": bucket}
    )


def invalid_digest(message: str = "The Content-MD5 you specified is not valid.") -> S3Error:
    return S3Error("InvalidDigest", 400, message)


def invalid_part() -> S3Error:
    return S3Error(
        "InvalidPart",
        400,
        "One or more of the specified parts could not be found.  The part may not have been "
        "uploaded, or the specified entity tag may not match the part's entity tag.",
    )


def invalid_part_order() -> S3Error:
    return S3Error(
        "InvalidPartOrder",
        400,
        "The list of parts was not in ascending order. Parts list must be specified in order by part number.",
    )


def invalid_range(size: int) -> S3Error:
    return S3Error(
        "InvalidRange",
        416,
        "The requested range is not satisfiable",
        {"ActualObjectSize": str(size)},
        headers=[("content-range", f"bytes */{size}")],
    )


def not_configured(code: str, message: str, bucket: str) -> S3Error:
    """A bucket configuration that is not set: each kind has its own code and message."""
    return S3Error(code, 404, message, {"BucketName": bucket})


def invalid_bucket_state(message: str) -> S3Error:
    return S3Error("InvalidBucketState", 409, message)


def invalid_request(message: str) -> S3Error:
    return S3Error("InvalidRequest", 400, message)


def invalid_uri() -> S3Error:
    return S3Error("InvalidURI", 400, "Couldn't parse the specified URI.")


def key_too_long(size: int) -> S3Error:
    return S3Error(
        "KeyTooLongError",
        400,
        "Your key is too long",
        {"Size": str(size), "MaxSizeAllowed": "1024"},
    )


def malformed_acl() -> S3Error:
    return S3Error(
        "MalformedACLError",
        400,
        "The XML you provided was not well-formed or did not validate against our published schema.",
    )


def malformed_policy(message: str) -> S3Error:
    return S3Error("MalformedPolicy", 400, message)


def malformed_xml() -> S3Error:
    return S3Error(
        "MalformedXML",
        400,
        "The XML you provided was not well-formed or did not validate against our published schema.",
    )


def metadata_too_large(size: int) -> S3Error:
    return S3Error(
        "MetadataTooLarge",
        400,
        "Your metadata headers exceed the maximum allowed metadata size.",
        {"Size": str(size), "MaxSizeAllowed": "2048"},
    )


def method_not_allowed(method: str, resource_type: str) -> S3Error:
    return S3Error(
        "MethodNotAllowed",
        405,
        "The specified method is not allowed against this resource.",
        {"Method": method, "ResourceType": resource_type},
    )


def missing_content_length() -> S3Error:
    return S3Error("MissingContentLength", 411, "You must provide the Content-Length HTTP header.")


def no_such_bucket(bucket: str) -> S3Error:
    return S3Error(
        "NoSuchBucket", 404, "The specified bucket does not exist", {"BucketName": bucket}
    )


def no_such_key(key: str) -> S3Error:
    return S3Error("NoSuchKey", 404, "The specified key does not exist.", {"Key": key})


def no_such_upload(upload_id: str) -> S3Error:
    return S3Error(
        "NoSuchUpload",
        404,
        "The specified upload does not exist. The upload ID may be invalid, or the upload "
        "may have been aborted or completed.",
        {"UploadId": upload_id},
    )


def no_such_version(key: str, version_id: str) -> S3Error:
    return S3Error(
        "NoSuchVersion",
        404,
        "The specified version does not exist.",
        {"Key": key, "VersionId": version_id},
    )


def not_implemented(what: str = "") -> S3Error:
    message = "A header you provided implies functionality that is not implemented"
    return S3Error("NotImplemented", 501, message, ({"Header": what} if what else {}))


def precondition_failed(condition: str) -> S3Error:
    return S3Error(
        "PreconditionFailed",
        412,
        "At least one of the pre-conditions you specified did not hold",
        {"Condition": condition},
    )


def request_time_too_skewed(request_time: str, server_time: str) -> S3Error:
    return S3Error(
        "RequestTimeTooSkewed",
        403,
        "The difference between the request time and the current time is too large.",
        {
            "RequestTime": request_time,
            "ServerTime": server_time,
            "MaxAllowedSkewMilliseconds": "900000",
        },
    )


def signature_does_not_match(
    string_to_sign: str, signature: str, access_key: str, canonical_request: str
) -> S3Error:
    return S3Error(
        "SignatureDoesNotMatch",
        403,
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
        {
            "AWSAccessKeyId": access_key,
            "StringToSign": string_to_sign,
            "SignatureProvided": signature,
            "CanonicalRequest": canonical_request,
        },
    )


def content_sha256_mismatch(client: str, computed: str) -> S3Error:
    return S3Error(
        "XAmzContentSHA256Mismatch",
        400,
        "The provided 'x-amz-content-sha256' header does not match what was computed.",
        {"ClientComputedContentSHA256": client, "S3ComputedContentSHA256": computed},
    )


def slow_down() -> S3Error:
    return S3Error("SlowDown", 503, "Please reduce your request rate.")


def service_unavailable() -> S3Error:
    return S3Error("ServiceUnavailable", 503, "Please reduce your request rate.")
