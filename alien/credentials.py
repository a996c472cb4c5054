"""Credentials that resolve to exactly one tenant: tenant API keys and service tokens.

An API key reads ``alien_<tenant>_<key id>_<secret>``: the tenant and key id say where to look,
only the secret's SHA-256 is stored (the secret has 256 random bits, so a fast hash is
enough), and a revoked key stops working at once.

A service token is the platform proxy's signed JWT. It names the tenant (``tenant``), the end
user on whose behalf the proxy calls (``sub``), its scopes (``scope``, space-separated), and is
short-lived: ``exp - iat`` may not exceed the configured lifetime; ``leeway`` absorbs skew.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

import jwt

from resources.catalog import ApiKey
from resources.settings import AlienSettings
from resources.stores import TenantStores
from resources.tenancy import InvalidTenantError, TenantId

SCOPES = ("read", "search", "write")
KEY_PREFIX = "alien"
ASYMMETRIC = ("RS256", "ES256", "EdDSA")


class CredentialError(Exception):
    """The credential is malformed, unknown, expired or revoked (answered with 401)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling, for exactly one tenant."""

    tenant: TenantId
    id: str  # "key:<key id>" or "service:<issuer>"
    scopes: frozenset[str]
    on_behalf_of: str | None = None  # the end user behind the platform proxy

    def allows(self, scope: str) -> bool:
        return scope in self.scopes

    @property
    def rate_key(self) -> str:
        """Whose budget a request spends: a tenant's key, or one end user behind the proxy,
        so no tenant and no end user can use up another's."""
        return f"{self.tenant}|{self.id}|{self.on_behalf_of or ''}"


def parse_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    wanted = {s.strip() for s in scopes if s.strip()}
    unknown = wanted - set(SCOPES)
    if unknown:
        raise ValueError(
            f"unknown scope(s) {', '.join(sorted(unknown))}; known: {', '.join(SCOPES)}"
        )
    if not wanted:
        raise ValueError("at least one scope is needed")
    return tuple(s for s in SCOPES if s in wanted)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_key(
    stores: TenantStores, scopes: Iterable[str], name: str = ""
) -> tuple[str, ApiKey]:
    """A new key for the tenant: (the full key, to show once; its stored record)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    record = stores.catalog.add_api_key(
        key_id, name or key_id, _digest(secret), parse_scopes(scopes)
    )
    return f"{KEY_PREFIX}_{stores.tenant}_{key_id}_{secret}", record


def split_api_key(token: str) -> tuple[TenantId, str, str]:
    """(tenant, key id, secret) of a key; CredentialError when it is not shaped like one."""
    parts = token.split("_", 3)
    if len(parts) != 4 or parts[0] != KEY_PREFIX or not parts[2] or not parts[3]:
        raise CredentialError("malformed API key")
    try:
        return TenantId(parts[1]), parts[2], parts[3]
    except InvalidTenantError:
        raise CredentialError("malformed API key") from None


def verify_api_key(stores: TenantStores, key_id: str, secret: str) -> Principal:
    record = stores.catalog.api_key(key_id)
    if record is None or not hmac.compare_digest(record.secret_sha256, _digest(secret)):
        raise CredentialError("unknown API key")
    if record.revoked_at is not None:
        raise CredentialError("revoked API key")
    return Principal(stores.tenant, f"key:{key_id}", frozenset(record.scopes))


def is_api_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX + "_")


_REFUSALS = (
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.ImmatureSignatureError, "not yet valid"),
    (jwt.InvalidIssuedAtError, "bad iat"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "algorithm not accepted"),
    (jwt.DecodeError, "malformed token"),
)


def _refusal(err: Exception) -> str:
    return next((text for kind, text in _REFUSALS if isinstance(err, kind)), "refused")


class ServiceTokens:
    """Checks (and, for tests and development, mints) the platform proxy's tokens."""

    def __init__(self, settings: AlienSettings) -> None:
        self.settings = settings
        secret = settings.service_token_secret
        if settings.service_token_public_key:
            self.key: str | None = settings.service_token_public_key
            self.algorithms = list(ASYMMETRIC)
        elif secret is not None and secret.get_secret_value():
            self.key = secret.get_secret_value()
            self.algorithms = ["HS256"]
        else:
            self.key = None
            self.algorithms = []

    @property
    def enabled(self) -> bool:
        return self.key is not None

    def verify(self, token: str) -> tuple[TenantId, str, str, frozenset[str]]:
        """(tenant, issuer, end user, scopes) of a valid token; CredentialError otherwise."""
        s = self.settings
        if self.key is None:
            # Not an API key (those start with the tenant's prefix), and no service token
            # can be valid here: say what would be.
            raise CredentialError(
                "unknown credential: not an API key of this cluster (service tokens are not "
                "enabled here)"
            )
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=self.algorithms,
                audience=s.service_token_audience,
                issuer=s.service_token_issuer,
                leeway=s.service_token_leeway_seconds,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "tenant"]},
            )
        except jwt.ExpiredSignatureError:
            raise CredentialError("service token expired") from None
        except jwt.MissingRequiredClaimError as err:
            raise CredentialError(f"service token lacks the {err.claim!r} claim") from None
        except jwt.PyJWTError as err:
            # A fixed phrase per kind of refusal: the library's own text can carry internals.
            raise CredentialError(f"invalid service token: {_refusal(err)}") from None
        except (TypeError, ValueError):  # claims of the wrong type PyJWT did not check
            raise CredentialError("invalid service token: malformed claims") from None
        if not all(
            isinstance(claims[c], int | float) and not isinstance(claims[c], bool)
            for c in ("exp", "iat")
        ):
            raise CredentialError("invalid service token: exp and iat must be numbers")
        lifetime = claims["exp"] - claims["iat"]
        if lifetime > s.service_token_max_lifetime_seconds:
            raise CredentialError(
                f"service token lives {lifetime} s; at most "
                f"{s.service_token_max_lifetime_seconds} s is accepted"
            )
        user = claims["sub"]
        if not isinstance(user, str) or not user or len(user) > 200:
            raise CredentialError("service token has no valid subject (end user)")
        try:
            tenant = TenantId(claims["tenant"])
        except (InvalidTenantError, TypeError):
            raise CredentialError("service token names an invalid tenant") from None
        raw_scope = claims.get("scope", "")
        scopes = (
            frozenset(raw_scope.split()) & set(SCOPES)
            if isinstance(raw_scope, str)
            else frozenset()
        )
        return tenant, str(claims["iss"]), user, scopes

    def mint(self, tenant: str, user: str, scopes: Iterable[str] = SCOPES, ttl: int = 60) -> str:
        """A token as the platform proxy would sign it (HS256 only: needs the shared secret)."""
        if self.algorithms != ["HS256"] or self.key is None:
            raise CredentialError("minting needs ALIEN_SERVICE_TOKEN_SECRET")
        now = int(time.time())
        claims = {
            "iss": self.settings.service_token_issuer,
            "aud": self.settings.service_token_audience,
            "sub": user,
            "tenant": str(TenantId(tenant)),
            "scope": " ".join(parse_scopes(scopes)),
            "iat": now,
            "exp": now + ttl,
        }
        return jwt.encode(claims, self.key, algorithm="HS256")
