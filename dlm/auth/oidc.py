"""Bearer JWTs from an identity provider (Keycloak, Entra ID, any OIDC issuer), verified by signature
against the provider's published keys (JWKS).

Only asymmetric algorithms are accepted: a token signed with ``none``, or with HMAC using the
provider's *public* key as the secret, is refused before any key is touched. The keys come from
``DLM_AUTH_JWKS_URL`` (fetched, cached, fetched again when a token names a key id DLM has not seen,
at most once per ``REFRESH_INTERVAL``) or from ``DLM_AUTH_JWKS_FILE`` (read once, for air-gapped sites).
"""

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import jwt

from dlm.auth.principal import OIDC_SUBJECT, Principal
from dlm.config import Settings
from dlm.enums import Role
from dlm.errors import ServiceUnavailable, Unauthorized

log = logging.getLogger("dlm.auth")

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# A key set is fetched again after this long, or sooner when a token names an unknown key id; never
# more often than REFRESH_INTERVAL, so a flood of forged key ids cannot make DLM hammer the provider.
CACHE_SECONDS = 3600.0
REFRESH_INTERVAL = 30.0
FETCH_TIMEOUT = 5.0


class InvalidToken(Unauthorized):
    """A bearer JWT DLM refuses; callers see an Unauthorized whose header says the token is at fault."""

    @property
    def name(self) -> str:
        return "Unauthorized"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="dlm", error="invalid_token"'}


class SigningKey(NamedTuple):
    key: jwt.PyJWK
    # The JWK's own "alg", which then is the only algorithm it verifies.
    declared_algorithm: str | None


class KeySet:
    """The identity provider's signing keys by key id, kept fresh."""

    def __init__(self, *, url: str | None = None, file: str | None = None) -> None:
        self.url = url
        self.file = file
        self._keys: dict[str | None, SigningKey] = {}
        self._fetched = float("-inf")
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None) -> SigningKey:
        if not self._keys or time.monotonic() - self._fetched > CACHE_SECONDS:
            await self._refresh(force=not self._keys)
        if kid not in self._keys and self._may_refresh():
            await self._refresh(force=False)
        if kid in self._keys:
            return self._keys[kid]
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        raise InvalidToken(f"the token was signed with a key the identity provider does not publish (kid {kid!r})")

    def _may_refresh(self) -> bool:
        return self.url is not None and time.monotonic() - self._fetched > REFRESH_INTERVAL

    async def _refresh(self, *, force: bool) -> None:
        async with self._lock:
            if not force and not self._may_refresh():
                return  # another request refreshed while this one waited
            try:
                document = await self._load()
                keys = _parse_key_set(document)
            except (OSError, ValueError, httpx.HTTPError, jwt.PyJWTError) as exc:
                self._fetched = time.monotonic()  # rate-limits retries as well as refreshes
                if self._keys:
                    log.warning("identity provider keys: keeping the cached ones, cannot refresh: %s", exc)
                    return
                raise ServiceUnavailable(f"the identity provider's keys cannot be loaded: {exc}") from None
            self._keys = keys
            self._fetched = time.monotonic()

    async def _load(self) -> Any:
        if self.file is not None:
            return json.loads(await asyncio.to_thread(Path(self.file).read_text))
        assert self.url is not None
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False) as client:
            response = await client.get(self.url)
            response.raise_for_status()
            return response.json()


def _parse_key_set(document: Any) -> dict[str | None, SigningKey]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    keys: dict[str | None, SigningKey] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
            continue  # encryption keys and symmetric secrets never verify a signature here
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError as exc:
            log.warning("identity provider key %s skipped: %s", entry.get("kid"), exc)
            continue
        declared = entry.get("alg")
        keys[entry.get("kid")] = SigningKey(key, declared if isinstance(declared, str) else None)
    if not keys:
        raise ValueError("the JWKS holds no usable signing key")
    return keys


class TokenVerifier:
    """Turns a bearer JWT into a Principal, or refuses it (401)."""

    def __init__(self, settings: Settings) -> None:
        self.keys = KeySet(url=settings.auth_jwks_url, file=settings.auth_jwks_file)
        self.issuer = settings.auth_issuer
        self.audience = settings.auth_audience
        self.leeway = settings.auth_leeway_seconds
        self.subject_claim = settings.auth_subject_claim
        self.roles_claim = settings.auth_roles_claim
        self.groups_claim = settings.auth_groups_claim
        self.role_map = settings.role_map

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("the bearer token is neither a DLM API token nor a well-formed JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ASYMMETRIC_ALGORITHMS:
            raise InvalidToken(f"the token's algorithm {algorithm!r} is not accepted (asymmetric signatures only)")
        kid = header.get("kid")
        signing = await self.keys.key(kid if isinstance(kid, str) else None)
        key = signing.key
        if signing.declared_algorithm:
            matches = algorithm == signing.declared_algorithm
        else:
            matches = _same_family(key.algorithm_name, algorithm)
        if not matches:
            raise InvalidToken(f"the token's algorithm {algorithm} does not match its key ({key.algorithm_name})")
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("the token is not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken(f"the token is not meant for this DLM (audience must be {self.audience!r})") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken(f"the token was not issued by {self.issuer!r}") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidToken(f"the token cannot be verified: {exc}") from None
        groups = frozenset(group.lstrip("/") for group in _claim_values(claims, self.groups_claim))
        return Principal(subject=self._subject(claims), role=self._role(claims), via="oidc", groups=groups)

    def _subject(self, claims: dict[str, Any]) -> str:
        subject = claims.get(self.subject_claim) or claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise InvalidToken(f"the token names no subject ({self.subject_claim!r} or 'sub' claim)")
        return f"{OIDC_SUBJECT}{subject}"

    def _role(self, claims: dict[str, Any]) -> Role | None:
        values = _claim_values(claims, self.roles_claim)
        roles = [self._map(value) for value in values]
        granted = [role for role in roles if role is not None]
        return max(granted, key=lambda role: role.rank) if granted else None

    def _map(self, value: str) -> Role | None:
        if self.role_map is not None:
            return self.role_map.get(value)
        return Role(value) if value in Role.__members__.values() else None


def _claim_values(claims: dict[str, Any], path: str) -> list[str]:
    """The strings at a dotted claim path: a list of them, or one space-separated string (``scope``)."""
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def _same_family(key_algorithm: str, token_algorithm: str) -> bool:
    # A JWK without "alg" gets its key type's default (RS256, ES256): an RSA key also verifies RS512 or PS256.
    families = ({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}, {"ES256", "ES384", "ES512"}, {"EdDSA"})
    return any(key_algorithm in family and token_algorithm in family for family in families)
