"""Per-tenant S3 access: the bucket policy on a real S3-protocol server; the tenant user and
IAM policy on MinIO when ALIEN_TEST_MINIO_URL names one (its admin API exists nowhere here)."""

from __future__ import annotations

import json
import os
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


MINIO = os.environ.get("ALIEN_TEST_MINIO_URL")  # host:port of a MinIO server


@pytest.mark.skipif(MINIO is None, reason="needs MinIO's admin API: set ALIEN_TEST_MINIO_URL, "
                    "ALIEN_TEST_MINIO_ACCESS_KEY and ALIEN_TEST_MINIO_SECRET_KEY")  # fmt: skip
def test_tenant_user_reaches_its_bucket_only() -> None:
    from minio.credentials import StaticProvider
    from minio.minioadmin import MinioAdmin

    access, secret = (
        os.environ["ALIEN_TEST_MINIO_ACCESS_KEY"],
        os.environ["ALIEN_TEST_MINIO_SECRET_KEY"],
    )
    admin = MinioAdmin(endpoint=MINIO, credentials=StaticProvider(access, secret), secure=False)
    root = s3_client(MINIO, access, secret, False)
    tenants = [f"t{uuid.uuid4().hex[:8]}" for _ in range(2)]
    stores = [S3ObjectStore(root, f"alien-{t}") for t in tenants]
    try:
        for store in stores:
            store.create()
        key, secret_a = provision_tenant_user(admin, tenants[0], "cluster-secret")
        assert provision_tenant_user(admin, tenants[0], "cluster-secret") == (key, secret_a)
        as_a = s3_client(MINIO, key, secret_a, False)
        S3ObjectStore(as_a, stores[0].bucket).put_bytes("raw/x", b"mine")
        with pytest.raises(S3Error):
            S3ObjectStore(as_a, stores[1].bucket).put_bytes("raw/x", b"intrusion")
    finally:
        retire_tenant_user(admin, tenants[0])
        for store in stores:
            store.drop()
