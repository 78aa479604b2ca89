"""Bearer JWTs from an identity provider: verified by signature against its JWKS, and every forgery
the issue lists is refused with 401."""

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.app import create_app
from dlm.config import Settings
from dlm.enums import Role
from tests.auth.conftest import bearer, make_token
from tests.conftest import Registry, assert_error

ISSUER = "https://keycloak.example.org/realms/ska"
AUDIENCE = "dlm"
ROLE_MAP = "dlm-admins=admin,ska-pipelines=ingest,ska-scientists=reader"


class Provider:
    """An identity provider's signing keys, and tokens signed with them."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.add_key("k1")

    def add_key(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [
                {**jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig"}
                for kid, key in self.keys.items()
            ]
        }

    def token(self, kid: str = "k1", key: Any = None, algorithm: str = "RS256", **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u-123", "exp": now + 300, "iat": now, **claims}
        payload = {name: value for name, value in payload.items() if value is not None}
        return jwt.encode(payload, key or self.keys[kid], algorithm=algorithm, headers={"kid": kid})

    def public_pem(self, kid: str = "k1") -> bytes:
        return (
            self.keys[kid]
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )


def _unsigned(header: dict[str, Any], payload: dict[str, Any], sign: Any = None) -> str:
    def encode(part: Any) -> str:
        raw = json.dumps(part).encode() if not isinstance(part, bytes) else part
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signing_input = f"{encode(header)}.{encode(payload)}"
    signature = encode(sign(signing_input.encode())) if sign else ""
    return f"{signing_input}.{signature}"


@pytest.fixture
def provider() -> Provider:
    return Provider()


def _oidc_settings(settings: Settings, **options: Any) -> Settings:
    values = {
        "auth_issuer": ISSUER,
        "auth_audience": AUDIENCE,
        "auth_role_map": ROLE_MAP,
        "auth_roles_claim": "groups",
        "auth_subject_claim": "preferred_username",
        "auth_leeway_seconds": 30.0,
        **options,
    }
    return msgspec.structs.replace(settings, **values)


@pytest.fixture
async def oidc(settings: Settings, provider: Provider, tmp_path: Path) -> AsyncIterator[AsyncTestClient]:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(provider.jwks()))
    async with AsyncTestClient(create_app(_oidc_settings(settings, auth_jwks_file=str(jwks)))) as client:
        yield client


async def _whoami(client: AsyncTestClient, token: str) -> Any:
    return await client.get("/auth/whoami", headers=bearer(token))


async def test_a_providers_token_names_the_caller_and_their_role(oidc: AsyncTestClient, provider: Provider) -> None:
    token = provider.token(preferred_username="alice", groups=["ska-scientists", "dlm-admins", "other"])
    response = await _whoami(oidc, token)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "subject": "oidc:alice",
        "role": "admin",
        "via": "oidc",
        "expires": None,
        "groups": ["dlm-admins", "other", "ska-scientists"],
    }
    pipeline = await _whoami(oidc, provider.token(preferred_username="pipe-7", groups=["ska-pipelines"]))
    assert pipeline.json()["role"] == "ingest"
    fallback = await _whoami(oidc, provider.token(groups=["ska-scientists"]))
    assert fallback.json()["subject"] == "oidc:u-123", "sub when the preferred claim is missing"


async def test_groups_from_the_provider_open_items_their_acl_names(
    oidc: AsyncTestClient, provider: Provider, tmp_path: Path
) -> None:
    """ "group:<name>" in an acl means the provider's group (Keycloak's "/" dropped); an acl restricts the
    members of the item's own group too (item_group grants nothing past it)."""
    admin = bearer(provider.token(preferred_username="ops", groups=["dlm-admins"]))
    registry = Registry(oidc, tmp_path / "store")
    oidc.headers.update(admin)
    await registry.storage()
    for name, group, acl in (
        ("theirs", "/radio", '{"read": ["group:radio"]}'),
        ("shared", "SKA", '{"read": ["group:optical"]}'),
        ("private", "radio", '{"read": []}'),
    ):
        uid = await registry.register(name)
        oid = (await registry.item(uid))["oid"]
        await oidc.patch("/request/set_group", params={"oid": oid, "group": group.lstrip("/")})
        await oidc.patch("/request/set_acl", params={"oid": oid, "acl": acl})
    del oidc.headers["authorization"]
    radio = bearer(provider.token(preferred_username="r", groups=["ska-scientists", "/radio"]))
    optical = bearer(provider.token(preferred_username="o", groups=["ska-scientists", "optical"]))
    for who, name, status in (
        (radio, "theirs", 200),
        (optical, "theirs", 403),
        (optical, "shared", 200),
        (radio, "shared", 403),
        (radio, "private", 403),
    ):
        response = await oidc.get("/request/retrieve", params={"item_name": name}, headers=who)
        assert response.status_code == status, (name, response.text)


async def test_a_token_with_no_mapped_role_may_do_nothing(oidc: AsyncTestClient, provider: Provider) -> None:
    token = provider.token(preferred_username="bob", groups=["unrelated"])
    response = await oidc.get("/request/query_data_item", headers=bearer(token))
    assert_error(response, 403, "Forbidden", "'oidc:bob' has no DLM role")


def _forgeries(provider: Provider) -> dict[str, str]:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 300, "groups": ["dlm-admins"]}
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = provider.public_pem()
    return {
        "bad signature": provider.token(key=other_key, groups=["dlm-admins"]),
        "alg none": _unsigned({"alg": "none", "kid": "k1"}, claims),
        "alg none, no kid": _unsigned({"alg": "none"}, claims),
        "HS256 with the public key": _unsigned(
            {"alg": "HS256", "kid": "k1", "typ": "JWT"},
            claims,
            lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
        ),
        "expired": provider.token(exp=now - 120, groups=["dlm-admins"]),
        "not yet valid": provider.token(nbf=now + 600, groups=["dlm-admins"]),
        "wrong issuer": provider.token(iss="https://evil.example.org", groups=["dlm-admins"]),
        "wrong audience": provider.token(aud="another-service", groups=["dlm-admins"]),
        "no audience": provider.token(aud=None, groups=["dlm-admins"]),
        "no expiry": provider.token(exp=None, groups=["dlm-admins"]),
        "unknown kid": provider.token(kid="k1", groups=["dlm-admins"]).replace(
            provider.token(kid="k1").split(".")[0], _unsigned({"alg": "RS256", "kid": "k9"}, {}).split(".")[0]
        ),
        "ES256 claimed for an RSA key": _unsigned({"alg": "ES256", "kid": "k1"}, claims, lambda data: b"x" * 64),
        "garbage": "not.a.jwt",
        "truncated": provider.token(groups=["dlm-admins"])[:-20],
    }


async def test_every_forgery_is_refused(oidc: AsyncTestClient, provider: Provider) -> None:
    refused = {}
    for name, token in _forgeries(provider).items():
        response = await _whoami(oidc, token)
        refused[name] = response.status_code
        assert_error(response, 401, "Unauthorized")
        assert "invalid_token" in response.headers["www-authenticate"], name
    assert set(refused.values()) == {401}


async def test_small_clock_skew_is_tolerated(oidc: AsyncTestClient, provider: Provider) -> None:
    now = int(time.time())
    token = provider.token(exp=now - 10, nbf=now + 10, groups=["ska-scientists"])
    assert (await _whoami(oidc, token)).status_code == 200


async def test_keycloak_roles_and_oauth_scopes_are_read_where_they_are(
    settings: Settings, provider: Provider, tmp_path: Path
) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(provider.jwks()))
    for claim, value in (
        ("realm_access.roles", {"realm_access": {"roles": ["offline_access", "dlm-admins"]}}),
        ("scope", {"scope": "openid profile dlm-admins"}),
    ):
        configured = _oidc_settings(settings, auth_jwks_file=str(jwks), auth_roles_claim=claim)
        async with AsyncTestClient(create_app(configured)) as client:
            response = await _whoami(client, provider.token(**value))
        assert response.json()["role"] == "admin", claim


async def test_an_elliptic_curve_key_works_too(settings: Settings, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "ec1"}
    jwks = tmp_path / "jwks.json"
    jwks.write_text(
        json.dumps({"keys": [jwk, {"kty": "oct", "k": "c3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nz", "kid": "hmac"}]})
    )
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ec-user", "exp": now + 60, "groups": ["ska-scientists"]}
    async with AsyncTestClient(create_app(_oidc_settings(settings, auth_jwks_file=str(jwks)))) as client:
        good = await _whoami(client, jwt.encode(claims, key, algorithm="ES256", headers={"kid": "ec1"}))
        symmetric = await _whoami(client, jwt.encode(claims, "s" * 32, algorithm="HS256", headers={"kid": "hmac"}))
    assert good.json()["subject"] == "oidc:ec-user"
    assert_error(symmetric, 401, "Unauthorized", "HS256")


class _JwksServer:
    """The provider's JWKS endpoint on loopback, counting how often DLM fetches it."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.provider.jwks()).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/realms/ska/protocol/openid-connect/certs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def jwks_server(provider: Provider) -> Iterator[_JwksServer]:
    server = _JwksServer(provider)
    yield server
    server.server.shutdown()


async def test_keys_are_fetched_cached_and_refreshed_on_an_unknown_kid_at_a_bounded_rate(
    settings: Settings, provider: Provider, jwks_server: _JwksServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dlm.auth import oidc

    async with AsyncTestClient(create_app(_oidc_settings(settings, auth_jwks_url=jwks_server.url))) as client:
        for _ in range(3):
            assert (await _whoami(client, provider.token(groups=["ska-scientists"]))).status_code == 200
        assert jwks_server.fetches == 1, "cached"

        provider.add_key("k2")  # the provider rotates its keys
        unknown = await _whoami(client, provider.token(kid="k2", groups=["ska-scientists"]))
        assert unknown.status_code == 401, "refreshed at most every REFRESH_INTERVAL: too soon after the first fetch"
        assert jwks_server.fetches == 1

        monkeypatch.setattr(oidc, "REFRESH_INTERVAL", 0.0)
        rotated = await _whoami(client, provider.token(kid="k2", groups=["ska-scientists"]))
        assert rotated.status_code == 200, rotated.text
        assert jwks_server.fetches == 2

        monkeypatch.setattr(oidc, "REFRESH_INTERVAL", 3600.0)
        for index in range(20):  # a flood of made-up key ids
            forged = provider.token(kid="k2", groups=["dlm-admins"]).split(".")
            header = _unsigned({"alg": "RS256", "kid": f"made-up-{index}"}, {}).split(".")[0]
            assert (await _whoami(client, ".".join([header, *forged[1:]]))).status_code == 401
        assert jwks_server.fetches == 2, "no fetch per forged key id"


async def test_an_unreachable_provider_is_503_not_a_500(settings: Settings, provider: Provider) -> None:
    configured = _oidc_settings(settings, auth_jwks_url="http://127.0.0.1:9/certs")
    async with AsyncTestClient(create_app(configured)) as client:
        response = await _whoami(client, provider.token(groups=["ska-scientists"]))
    assert_error(response, 503, "ServiceUnavailable", "identity provider")


def test_half_an_oidc_configuration_stops_dlm_at_startup() -> None:
    from dlm.config import InvalidSettings

    with pytest.raises(InvalidSettings, match="DLM_AUTH_ISSUER"):
        Settings.from_env({"DLM_AUTH_JWKS_URL": "https://idp.example.org/certs"})


async def test_a_providers_user_named_like_an_api_token_is_not_its_holder(
    oidc: AsyncTestClient, provider: Provider, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """API token names and identity provider subjects are two namespaces (`token:…`, `oidc:…`)."""
    secret = await make_token(sessionmaker, "t-ingest", Role.INGEST)
    admin = bearer(provider.token(preferred_username="ops", groups=["dlm-admins"]))
    registry = Registry(oidc, tmp_path / "store")
    oidc.headers.update(admin)
    await registry.storage()
    oidc.headers.update(bearer(secret))
    uid = await registry.register("tokens-own")
    assert (await oidc.patch("/request/set_acl", params={"uid": uid, "acl": '{"read": []}'})).status_code == 200
    impostor = bearer(provider.token(preferred_username="t-ingest", groups=["ska-pipelines"]))
    assert (await _whoami(oidc, provider.token(preferred_username="t-ingest", groups=["ska-scientists"]))).json()[
        "subject"
    ] == "oidc:t-ingest"
    read = await oidc.get("/request/retrieve", params={"uid": uid}, headers=impostor)
    assert_error(read, 403, "Forbidden", "oidc:t-ingest")
    changed = await oidc.patch("/request/set_acl", params={"uid": uid, "acl": '{"read": ["*"]}'}, headers=impostor)
    assert_error(changed, 403, "Forbidden", "oidc:t-ingest", "token:t-ingest")
