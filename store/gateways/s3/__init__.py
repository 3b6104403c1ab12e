"""The S3 gateway: the S3 REST API on top of the cluster, as a stateless client.

How a request flows (``handler.py``): ``routing`` names the bucket, key and operation;
``sigv4``/``sigv2`` check the signature against a key from ``users``; the operation
(``ops_buckets``, ``ops_objects``, ``ops_copy``, ``ops_object_meta``, ``multipart``,
``completion``) reads the body through ``payload`` (aws-chunked decoding in ``chunked``,
digests in ``checksums``) and answers with ``xmldoc`` documents or ``errors``.

Where things are kept (``layout``): users, buckets, sharded bucket indexes (``index``,
listed by ``listing``), striped object data (``objects``), upload records, and a queue of
data to free (``gc``; ``sweep`` finds what a crashed gateway left behind). Every shared
update goes through the three patterns of ``backend``: atomic swap, compare-and-set, and
paged listing. The HTTP/1.1 server itself is ``store.gateways.web``.
"""
