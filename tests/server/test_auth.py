"""Bearer-token access control against a real server and a local OIDC issuer.

The issuer is a stand-in on loopback that serves what the OpenID Connect Discovery 1.0 and
RFC 7517 (JWKS) specifications define: /.well-known/openid-configuration and a JWKS document.
Tokens are minted here with PyJWT from RSA and EC keys made by the test; the aquamask server
validates them as it would tokens from EGI Check-in or Keycloak.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.server import start_server

VO = "urn:mace:egi.eu:group:vo.example.org"
VIEWER = f"{VO}:role=member#aai.egi.eu"
RESEARCHER = f"{VO}:researchers:role=member#aai.egi.eu"
AUDIENCE = "aquamask"


class Issuer:
    """Discovery + JWKS on loopback; keys can be added later (rotation)."""

    def __init__(self) -> None:
        self.keys: dict[str, object] = {}
        self.public: list[dict] = []
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks",
                            "id_token_signing_alg_values_supported": ["RS256", "ES256"]}
                elif self.path == "/jwks":
                    body = {"keys": issuer.public}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add_key(self, kid: str, kind: str = "rsa", publish: bool = True):
        key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rsa"
               else ec.generate_private_key(ec.SECP256R1()))
        self.keys[kid] = key
        if publish:
            algorithm = jwt.algorithms.RSAAlgorithm if kind == "rsa" else jwt.algorithms.ECAlgorithm
            jwk = json.loads(algorithm.to_jwk(key.public_key()))
            self.public.append(dict(jwk, kid=kid, use="sig"))
        return key

    def token(self, sub: str = "alice", entitlements=(RESEARCHER,), kid: str = "k1",
              alg: str = "RS256", **overrides) -> str:
        now = int(time.time())
        claims = {"iss": self.url, "aud": AUDIENCE, "sub": sub, "iat": now, "nbf": now - 5,
                  "exp": now + 300, "eduperson_entitlement": list(entitlements)}
        claims.update(overrides)
        return jwt.encode(claims, self.keys[kid], algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def issuer():
    issuer = Issuer()
    issuer.add_key("k1")
    issuer.add_key("ec1", kind="ec")
    issuer.add_key("unpublished", publish=False)
    yield issuer
    issuer.httpd.shutdown()


@pytest.fixture(scope="module")
def secured(issuer, tmp_path_factory):
    from aquamask.processes.demo import make_demo_scene
    home = tmp_path_factory.mktemp("secured-home")
    make_demo_scene(home / "data" / "demo.tif", size=128)
    server = start_server(home, {
        "AQUAMASK__AUTH__MODE": "oidc", "AQUAMASK__AUTH__ISSUER": issuer.url,
        "AQUAMASK__AUTH__ANONYMOUS": "nobody", "AQUAMASK__AUTH__JWKS_REFRESH_COOLDOWN_S": "0",
        "AQUAMASK__AUTH__ROLES__VIEWER": json.dumps([VIEWER]),
        "AQUAMASK__AUTH__ROLES__RESEARCHER": json.dumps([RESEARCHER]),
        "AQUAMASK__AUTH__ROLES__MANAGER": json.dumps(["aquamask-managers"]),
        "AQUAMASK__DETECTION__METHOD": "ndwi"}, workers=1)
    yield server
    server.stop()


def call(server, method: str, path: str, token: str | None = None, **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, f"{server.url}{path}", headers=headers, timeout=60, **kwargs)


def execute(server, token):
    return call(server, "POST", "/processes/water-detection/execution", token,
                json={"inputs": {"image": {"href": "demo.tif"}}})


def test_no_token_is_401_with_a_bearer_challenge(secured):
    response = call(secured, "GET", "/processes")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="aquamask"')
    assert "authentication required" in response.json()["description"]
    assert call(secured, "GET", "/health").status_code == 200, "health stays open"
    # so does the viewer's page, where a user pastes a token; its data APIs do not
    assert call(secured, "GET", "/viewer/api/config").status_code == 200
    assert call(secured, "GET", "/viewer/api/scenes").status_code == 401


def test_viewer_reads_but_cannot_execute(secured, issuer):
    token = issuer.token(sub="vera", entitlements=[VIEWER])
    assert call(secured, "GET", "/processes", token).status_code == 200
    assert call(secured, "GET", "/ows?SERVICE=WMS&REQUEST=GetCapabilities",
                token).status_code == 200
    response = execute(secured, token)
    assert response.status_code == 403 and "researcher" in response.json()["description"]
    assert call(secured, "GET", "/jobs", token).status_code == 403


def test_an_entitlement_from_another_authority_grants_nothing(secured, issuer):
    """#15.10: the configured entitlement names its authority; the same group asserted by
    another authority (which anyone running an IdP can mint) is another entitlement."""
    for forged in (f"{VO}:role=member#other.authority", f"{VO}:role=member",
                   f"{VO}:researchers:role=member#evil.example.org"):
        token = issuer.token(sub="mallory", entitlements=[forged])
        assert call(secured, "GET", "/processes", token).status_code == 403, forged


def test_jobs_belong_to_their_creator(secured, issuer):
    alice, bob = issuer.token(sub="alice"), issuer.token(sub="bob")
    manager = issuer.token(sub="mia", entitlements=[], groups=["aquamask-managers"])
    response = execute(secured, alice)
    assert response.status_code == 200, response.text
    job_id = response.json()["mask"]["href"].split("/")[-2]
    assert call(secured, "GET", f"/jobs/{job_id}", alice).status_code == 200
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/results", f"/results/{job_id}/mask.tif"):
        assert call(secured, "GET", path, bob).status_code == 404, path
    assert call(secured, "DELETE", f"/jobs/{job_id}", bob).status_code == 404
    bobs = call(secured, "GET", "/jobs?f=json", bob).json()["jobs"]
    assert job_id not in [j["jobID"] for j in bobs]
    everyone = call(secured, "GET", "/jobs?f=json", manager).json()["jobs"]
    assert job_id in [j["jobID"] for j in everyone]
    assert call(secured, "GET", f"/results/{job_id}/mask.tif", manager).status_code == 200
    assert call(secured, "DELETE", f"/jobs/{job_id}", alice).status_code == 200


def test_an_es256_token_is_accepted(secured, issuer):
    token = issuer.token(sub="erin", kid="ec1", alg="ES256")
    assert call(secured, "GET", "/jobs?f=json", token).status_code == 200


def test_a_rotated_key_is_fetched_on_its_first_use(secured, issuer):
    issuer.add_key("k2")
    assert call(secured, "GET", "/jobs?f=json", issuer.token(kid="k2")).status_code == 200


def _forge_unsigned(token: str) -> str:
    header, payload, _ = token.split(".")
    header_json = {"alg": "none", "typ": "JWT", "kid": "k1"}
    encoded = base64.urlsafe_b64encode(json.dumps(header_json).encode()).rstrip(b"=").decode()
    return f"{encoded}.{payload}."


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def _hs256_with_public_key(issuer) -> str:
    public_pem = issuer.keys["k1"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = base64.urlsafe_b64encode(
        json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode()).rstrip(b"=")
    payload = issuer.token().split(".")[1].encode()
    signature = base64.urlsafe_b64encode(
        hmac.new(public_pem, header + b"." + payload, hashlib.sha256).digest()).rstrip(b"=")
    return (header + b"." + payload + b"." + signature).decode()


@pytest.mark.parametrize("case,expected_text", [
    ("expired", "expired"),
    ("not_yet_valid", "not valid yet"),
    ("wrong_issuer", "another issuer"),
    ("wrong_audience", "not meant for this service"),
    ("unknown_kid", "signing key not found"),
    ("tampered", "invalid token"),
    ("alg_none", "not accepted"),
    ("hs256_public_key", "not accepted"),
    ("garbage", "not a JWT"),
])
def test_bad_tokens_are_401(secured, issuer, case, expected_text):
    now = int(time.time())
    token = {
        "expired": lambda: issuer.token(exp=now - 3600, iat=now - 7200, nbf=now - 7200),
        "not_yet_valid": lambda: issuer.token(nbf=now + 3600),
        "wrong_issuer": lambda: issuer.token(iss="https://evil.example.org"),
        "wrong_audience": lambda: issuer.token(aud="someone-else"),
        "unknown_kid": lambda: issuer.token(kid="unpublished"),
        "tampered": lambda: _tamper(issuer.token()),
        "alg_none": lambda: _forge_unsigned(issuer.token()),
        "hs256_public_key": lambda: _hs256_with_public_key(issuer),
        "garbage": lambda: "not-a-token",
    }[case]()
    response = call(secured, "GET", "/jobs?f=json", token)
    assert response.status_code == 401, response.text
    assert expected_text in response.json()["description"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_valid_token_without_entitlements_is_403(secured, issuer):
    response = call(secured, "GET", "/processes", issuer.token(sub="nobody", entitlements=[]))
    assert response.status_code == 403
