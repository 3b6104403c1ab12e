"""CORS through boto3 and raw HTTP: a bucket's rules are stored and returned, preflights
are answered from them without credentials, and signed requests from an allowed origin
carry the rule's headers."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.clients.s3.conftest import Gateway, error_of, raw_request

RULES = {
    "CORSRules": [
        {
            "ID": "uploads",
            "AllowedMethods": ["PUT", "POST"],
            "AllowedOrigins": ["https://*.example.com"],
            "AllowedHeaders": ["content-*", "x-amz-*"],
            "ExposeHeaders": ["ETag"],
            "MaxAgeSeconds": 600,
        },
        {"AllowedMethods": ["GET", "HEAD"], "AllowedOrigins": ["*"]},
    ]
}


def test_configuration_is_stored_returned_and_deleted(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as caught:
        s3.get_bucket_cors(Bucket=bucket)
    assert error_of(caught.value) == (404, "NoSuchCORSConfiguration")
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=RULES)
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"] == RULES["CORSRules"]
    s3.delete_bucket_cors(Bucket=bucket)
    with pytest.raises(ClientError) as caught:
        s3.get_bucket_cors(Bucket=bucket)
    assert error_of(caught.value) == (404, "NoSuchCORSConfiguration")


def test_invalid_configurations_are_refused(s3: Any, bucket: str) -> None:
    for rule in (
        {"AllowedMethods": ["PATCH"], "AllowedOrigins": ["*"]},
        {"AllowedMethods": ["GET"], "AllowedOrigins": ["*.a.*"]},
    ):
        with pytest.raises(ClientError) as caught:
            s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [rule]})
        assert error_of(caught.value) == (400, "InvalidRequest")


def preflight(gateway: Gateway, bucket: str, **headers: str) -> tuple[int, dict[str, str]]:
    sent = {name.replace("_", "-"): value for name, value in headers.items()}
    status, got, _ = raw_request(gateway, "OPTIONS", f"/{bucket}/some/key", sent)
    return status, got


def test_preflights(s3: Any, bucket: str, gateway: Gateway) -> None:
    origin = "https://app.example.com"
    asked = {"Origin": origin, "Access_Control_Request_Method": "PUT"}
    assert preflight(gateway, bucket, **asked)[0] == 403  # no rules yet
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=RULES)
    status, headers = preflight(
        gateway, bucket, **asked, Access_Control_Request_Headers="Content-Type, X-Amz-Date"
    )
    assert status == 200
    assert headers["access-control-allow-origin"] == origin
    assert headers["access-control-allow-methods"] == "PUT, POST"
    assert headers["access-control-allow-headers"] == "content-type, x-amz-date"
    assert (headers["access-control-expose-headers"], headers["access-control-max-age"]) == (
        "ETag",
        "600",
    )
    status, headers = preflight(
        gateway, bucket, Origin="https://other.org", Access_Control_Request_Method="GET"
    )
    assert (status, headers["access-control-allow-origin"]) == (200, "*")
    refused = [
        {"Origin": "https://other.org", "Access_Control_Request_Method": "PUT"},
        {**asked, "Access_Control_Request_Headers": "authorization"},
        {"Origin": "http://app.example.com", "Access_Control_Request_Method": "PUT"},
    ]
    for headers_sent in refused:
        status, headers = preflight(gateway, bucket, **headers_sent)
        assert status == 403
        assert "access-control-allow-origin" not in headers
    assert preflight(gateway, bucket, Access_Control_Request_Method="PUT")[0] == 400
    assert preflight(gateway, "no-such-bucket-here", **asked)[0] == 404


def test_signed_requests_from_an_allowed_origin_get_the_rules_headers(s3: Any, bucket: str) -> None:
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=RULES)
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")

    def with_origin(origin: str) -> Any:
        def add(request: Any, **_: Any) -> None:
            request.headers["Origin"] = origin

        return add

    handler = with_origin("https://web.example.com")
    s3.meta.events.register("before-sign.s3.GetObject", handler)
    try:
        got = s3.get_object(Bucket=bucket, Key="k")
    finally:
        s3.meta.events.unregister("before-sign.s3.GetObject", handler)
    headers = got["ResponseMetadata"]["HTTPHeaders"]
    assert headers["access-control-allow-origin"] == "*"  # the GET rule allows any origin
    assert (
        s3.get_object(Bucket=bucket, Key="k")["ResponseMetadata"]["HTTPHeaders"].get(
            "access-control-allow-origin"
        )
        is None
    )
