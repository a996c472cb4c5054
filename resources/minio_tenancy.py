"""Per-tenant S3 credentials and bucket policy (MinIO's admin API; the policy is plain S3).

For tenant T, with bucket ``alien-T``:

- an IAM policy ``alien-T`` that allows object and bucket operations on that bucket only;
- a MinIO user ``alien-T`` (its secret derived from the cluster secret, so nothing stores
  it; the operator writes it into the tenant's Secret) with only that policy attached;
- a bucket policy on ``alien-T`` that refuses requests not made over TLS when the cluster
  uses TLS, so a misconfigured client cannot move a tenant's objects in clear.

The user and IAM policy need MinIO's admin API (``MinioAdmin``). Current MinIO attaches a
policy with ``attach_policy``; servers on the older admin API (MinIO's gateway code, which the
test suite's JuiceFS S3 gateway runs) answer that call with 426 and take ``policy_set``
instead, so both are tried in that order.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from minio import Minio
from minio.error import MinioAdminException

from resources.s3objects import bucket_name

# How a server without the newer policy-attach call refuses it: 426 XMinioAdminVersionMismatch
# (gateway-era MinIO), 404 or 501 (older or partial admin APIs).
OLD_ADMIN_API_STATUSES = {"426", "404", "501"}


def tenant_access_key(tenant: str, prefix: str = "alien") -> str:
    return bucket_name(tenant, prefix)


def tenant_secret_key(cluster_secret: str, tenant: str, generation: str = "") -> str:
    """The tenant user's secret, derived; with the tenant's generation, so a tenant created
    afresh under an old name gets a new one."""
    context = f"s3-user:{tenant}" + (f":{generation}" if generation else "")
    return hmac.new(cluster_secret.encode(), context.encode(), hashlib.sha256).hexdigest()


def iam_policy(bucket: str) -> dict[str, Any]:
    """The tenant user's only permissions: its own bucket and the objects in it."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "OwnBucket",
                "Effect": "Allow",
                "Action": [
                    "s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads",
                ],
                "Resource": [f"arn:aws:s3:::{bucket}"],
            },
            {
                "Sid": "OwnObjects",
                "Effect": "Allow",
                "Action": [
                    "s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                    "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts",
                ],
                "Resource": [f"arn:aws:s3:::{bucket}/*"],
            },
        ],
    }  # fmt: skip


def bucket_policy(bucket: str) -> dict[str, Any]:
    """Refuse every request to the bucket that is not made over TLS.

    Anonymous access needs no statement: S3 and MinIO refuse it unless a policy allows it,
    and this one allows nothing.
    """
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "TlsOnly",
                "Effect": "Deny",
                "Principal": {"AWS": ["*"]},
                "Action": ["s3:*"],
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": ["false"]}},
            }
        ],
    }


def apply_bucket_policy(client: Minio, bucket: str, *, require_tls: bool) -> None:
    """Set the TLS-only policy when the cluster uses TLS to S3 (idempotent); without TLS
    there is nothing to require, and any policy left on the bucket is removed."""
    if require_tls:
        client.set_bucket_policy(bucket, json.dumps(bucket_policy(bucket)))
    else:
        client.delete_bucket_policy(bucket)


def provision_tenant_user(
    admin: Any, tenant: str, cluster_secret: str, prefix: str = "alien", generation: str = ""
) -> tuple[str, str]:
    """User + IAM policy for the tenant through ``minio.MinioAdmin`` (idempotent)."""
    bucket = bucket_name(tenant, prefix)
    access = tenant_access_key(tenant, prefix)
    secret = tenant_secret_key(cluster_secret, tenant, generation)
    admin.policy_add(bucket, policy=iam_policy(bucket))
    admin.user_add(access, secret)
    try:
        admin.attach_policy([bucket], user=access)
    except MinioAdminException as err:
        if str(err._code) not in OLD_ADMIN_API_STATUSES:
            raise
        admin.policy_set(bucket, user=access)  # the admin API before attach/detach
    return access, secret


def retire_tenant_user(admin: Any, tenant: str, prefix: str = "alien") -> None:
    bucket = bucket_name(tenant, prefix)
    for call in (lambda: admin.user_remove(tenant_access_key(tenant, prefix)),
                 lambda: admin.policy_remove(bucket)):  # fmt: skip
        try:
            call()
        except Exception as err:  # already gone is success
            if "not" not in str(err).lower():
                raise
