"""Tenant identity: validated once at every door, then carried as a ``TenantId``."""

from __future__ import annotations

import re

TENANT_PATTERN = re.compile(r"^[a-z0-9-]{3,40}$")
DATASET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class InvalidTenantError(ValueError):
    """A tenant or dataset identifier that does not match the allowed shape."""


class UnknownTenantError(LookupError):
    """A well-formed tenant that has not been provisioned."""


class TenantId(str):
    """A tenant identifier that has passed validation (lowercase ``[a-z0-9-]{3,40}``)."""

    __slots__ = ()

    def __new__(cls, value: str) -> TenantId:
        if isinstance(value, TenantId):
            return value
        if not isinstance(value, str) or not TENANT_PATTERN.fullmatch(value):
            raise InvalidTenantError(
                f"invalid tenant id {value!r}: use 3-40 characters of a-z, 0-9 and '-'"
            )
        return super().__new__(cls, value)


def validate_dataset(name: str) -> str:
    """Return ``name`` if it is a valid dataset name, else raise ``InvalidTenantError``."""
    if not isinstance(name, str) or not DATASET_PATTERN.fullmatch(name):
        raise InvalidTenantError(
            f"invalid dataset name {name!r}: start with a-z or 0-9, then up to 62 of "
            "a-z, 0-9, '_' and '-'"
        )
    return name
