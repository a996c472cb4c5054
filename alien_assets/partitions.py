"""Tenants are the partitions: added when a tenant is provisioned, never one per document."""

import dagster as dg

TENANTS = "tenants"
tenant_partitions = dg.DynamicPartitionsDefinition(name=TENANTS)
