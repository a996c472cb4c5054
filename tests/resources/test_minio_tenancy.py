"""Per-tenant S3 access: the TLS-only bucket policy on moto's S3 server (which enforces
``aws:SecureTransport``); the tenant user and IAM policy on the S3 gateway with MinIO's admin
API, which enforces them."""

from __future__ import annotations

import json
import uuid

import pytest
from minio.error import S3Error

from resources.minio_tenancy import (
    apply_bucket_policy,
    bucket_policy,
    iam_policy,
    provision_tenant_user,
    retire_tenant_user,
)
from resources.s3objects import S3ObjectStore, s3_client


def test_iam_policy_grants_only_the_tenants_bucket() -> None:
    policy = iam_policy("alien-acme")
    resources = {r for st in policy["Statement"] for r in st["Resource"]}
    assert resources == {"arn:aws:s3:::alien-acme", "arn:aws:s3:::alien-acme/*"}
    actions = [a for st in policy["Statement"] for a in st["Action"]]
    assert all(a.startswith("s3:") and "*" not in a for a in actions)
    assert all(st["Effect"] == "Allow" for st in policy["Statement"])


def test_tls_only_bucket_policy_is_enforced_and_idempotent(s3_server) -> None:
    """On the S3-protocol server (plain HTTP here), the TLS-only policy refuses our requests:
    the policy is not just stored, it acts. Without TLS required, no policy is left."""
    client = s3_client(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, False)
    store = S3ObjectStore(client, f"alien-t-{uuid.uuid4().hex[:10]}")
    store.create()
    store.put_bytes("raw/x", b"before")
    try:
        apply_bucket_policy(client, store.bucket, require_tls=True)
        apply_bucket_policy(client, store.bucket, require_tls=True)
        assert json.loads(client.get_bucket_policy(store.bucket)) == bucket_policy(store.bucket)
        with pytest.raises(Exception, match=r"403|AccessDenied"):
            store.get_bytes("raw/x")
    finally:
        apply_bucket_policy(client, store.bucket, require_tls=False)
    with pytest.raises(S3Error):
        client.get_bucket_policy(store.bucket)  # NoSuchBucketPolicy
    assert store.get_bytes("raw/x") == b"before"
    store.drop()


def test_tenant_user_reaches_its_bucket_only(minio_server) -> None:
    """On the S3 gateway with MinIO's admin API: each tenant's user works in its own bucket,
    the server refuses it on the other's, and a retired user is refused everywhere."""
    from minio.credentials import StaticProvider
    from minio.minioadmin import MinioAdmin

    endpoint, access = minio_server.endpoint, minio_server.access_key
    secret = minio_server.secret_key
    admin = MinioAdmin(endpoint=endpoint, credentials=StaticProvider(access, secret), secure=False)
    root = s3_client(endpoint, access, secret, False)
    tenants = [f"t{uuid.uuid4().hex[:8]}" for _ in range(2)]
    stores = [S3ObjectStore(root, f"alien-{t}") for t in tenants]
    try:
        for store in stores:
            store.create()
        key, secret_a = provision_tenant_user(admin, tenants[0], "cluster-secret")
        assert provision_tenant_user(admin, tenants[0], "cluster-secret") == (key, secret_a)
        provision_tenant_user(admin, tenants[1], "cluster-secret")
        as_a = s3_client(endpoint, key, secret_a, False)
        S3ObjectStore(as_a, stores[0].bucket).put_bytes("raw/x", b"mine")
        stores[1].put_bytes("raw/y", b"theirs")
        with pytest.raises(S3Error, match="AccessDenied"):
            S3ObjectStore(as_a, stores[1].bucket).put_bytes("raw/x", b"intrusion")
        with pytest.raises(S3Error, match="AccessDenied"):
            S3ObjectStore(as_a, stores[1].bucket).get_bytes("raw/y")
        with pytest.raises(S3Error, match="AccessDenied"):
            list(S3ObjectStore(as_a, stores[1].bucket).list("raw/"))
        assert {b.name for b in as_a.list_buckets()} == {stores[0].bucket}
        retire_tenant_user(admin, tenants[0])
        retire_tenant_user(admin, tenants[0])  # idempotent
        with pytest.raises(S3Error):
            S3ObjectStore(as_a, stores[0].bucket).get_bytes("raw/x")
    finally:
        for tenant in tenants:
            retire_tenant_user(admin, tenant)
        for store in stores:
            store.drop()
