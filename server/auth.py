"""Authentication and authorisation, compatible with the AARC blueprint architecture.

Bearer tokens from any OIDC provider (EGI Check-in, Keycloak, ...) are validated locally: JWT
access tokens against the issuer's JWKS (discovered from /.well-known/openid-configuration, keys
cached and refetched when a token names an unknown key id), or opaque tokens through RFC 7662
introspection when a client is configured. Roles come from AARC-G002 entitlements
(``eduperson_entitlement``) and plain group claims, mapped in config onto viewer < researcher <
manager. PyJWT does the cryptography; nothing here verifies a signature by hand.
"""
from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import jwt
import requests
from flask import Flask, Response, g, jsonify, request

from aquamask.processes.identity import Identity, current_identity, with_implied_roles
from aquamask.processes.settings import Settings
from aquamask.server.health import PATHS as HEALTH_PATHS

LOGGER = logging.getLogger(__name__)
ALLOWED_ALGORITHMS = ("RS256", "ES256")  # never "none", never HS* (a public key is no secret)


class AuthError(Exception):
    def __init__(self, status: int, message: str, error: str = "invalid_token") -> None:
        super().__init__(message)
        self.status, self.message, self.error = status, message, error


@dataclass
class OIDCValidator:
    issuer: str
    audience: str | None
    jwks_uri: str | None = None
    leeway: int = 30
    # at most one JWKS refetch per this many seconds for unknown key ids (no fetch storms)
    refresh_cooldown: float = 30.0
    introspection_client_id: str | None = None
    introspection_client_secret: str | None = None
    http_timeout: float = 5.0
    discovery_ttl: float = 3600.0
    _discovery: dict[str, Any] = field(default_factory=dict, repr=False)
    _discovered_at: float = field(default=0.0, repr=False)
    _jwks: jwt.PyJWKClient | None = field(default=None, repr=False)

    def discovery(self) -> dict[str, Any]:
        if not self._discovery or time.monotonic() - self._discovered_at > self.discovery_ttl:
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                response = requests.get(url, timeout=self.http_timeout)
                response.raise_for_status()
                self._discovery = response.json()
            except (requests.RequestException, ValueError) as err:
                raise AuthError(503, f"the identity provider cannot be reached ({err})",
                                "temporarily_unavailable") from err
            self._discovered_at = time.monotonic()
        return self._discovery

    def jwks_client(self) -> jwt.PyJWKClient:
        if self._jwks is None:
            uri = self.jwks_uri or self.discovery()["jwks_uri"]
            # PyJWKClient caches the key set and refetches it when a kid is not in the cache
            self._jwks = jwt.PyJWKClient(uri, cache_keys=True, lifespan=3600,
                                         timeout=self.http_timeout,
                                         cooldown_duration=self.refresh_cooldown)
        return self._jwks

    def claims(self, token: str) -> dict[str, Any]:
        if token.count(".") == 2:
            return self._jwt_claims(token)
        if self.introspection_client_id:
            return self._introspect(token)
        raise AuthError(401, "the bearer token is not a JWT and no introspection is configured")

    def _jwt_claims(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as err:
            raise AuthError(401, f"malformed token: {err}") from err
        if header.get("alg") not in ALLOWED_ALGORITHMS:
            raise AuthError(401, f"token algorithm {header.get('alg')!r} is not accepted")
        try:
            key = self.jwks_client().get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as err:
            raise AuthError(503, f"the issuer's keys cannot be fetched ({err})",
                            "temporarily_unavailable") from err
        except jwt.PyJWTError as err:
            raise AuthError(401, f"token signing key not found: {err}") from err
        try:
            return jwt.decode(token, key.key, algorithms=list(ALLOWED_ALGORITHMS),
                              audience=self.audience, issuer=self.issuer, leeway=self.leeway,
                              options={"require": ["exp", "iss"],
                                       "verify_aud": self.audience is not None})
        except jwt.ExpiredSignatureError as err:
            raise AuthError(401, "the token has expired") from err
        except jwt.ImmatureSignatureError as err:
            raise AuthError(401, "the token is not valid yet") from err
        except jwt.InvalidAudienceError as err:
            raise AuthError(401, "the token is not meant for this service (aud)") from err
        except jwt.InvalidIssuerError as err:
            raise AuthError(401, "the token comes from another issuer (iss)") from err
        except jwt.PyJWTError as err:
            raise AuthError(401, f"invalid token: {err}") from err

    def _introspect(self, token: str) -> dict[str, Any]:
        endpoint = self.discovery().get("introspection_endpoint")
        if not endpoint:
            raise AuthError(401, "the issuer offers no token introspection")
        try:
            response = requests.post(endpoint, data={"token": token},
                                     auth=(self.introspection_client_id or "",
                                           self.introspection_client_secret or ""),
                                     timeout=self.http_timeout)
            response.raise_for_status()
            claims = response.json()
        except (requests.RequestException, ValueError) as err:
            raise AuthError(503, f"token introspection failed ({err})",
                            "temporarily_unavailable") from err
        if not claims.get("active"):
            raise AuthError(401, "the token is not active")
        if claims.get("iss") not in (None, self.issuer):
            raise AuthError(401, "the token comes from another issuer (iss)")
        return claims


def roles_from_claims(claims: dict[str, Any], role_map: Mapping[str, Iterable[str]],
                      claim_names: Iterable[str]) -> frozenset[str]:
    """Roles whose configured entitlements or groups appear in the token's claims, each
    matched exactly: an AARC-G002 entitlement's '#authority' is part of it (the same group
    asserted by another authority is another entitlement), so the configuration names it."""
    values: set[str] = set()
    for name in claim_names:
        claim = claims.get(name)
        if isinstance(claim, str):
            claim = claim.split() if name == "scope" else [claim]
        if isinstance(claim, list):
            values.update(v for v in claim if isinstance(v, str))
    roles = {role for role, wanted in (role_map or {}).items()
             if any(value in values for value in wanted or [])}
    return with_implied_roles(roles)


# the viewer's page and its configuration hold no data, and a remote user must reach them to
# paste or obtain a token at all
OPEN_PATHS = frozenset({"/viewer", "/viewer/", "/viewer/api/config"})


def required_role(method: str, path: str) -> str | None:
    """The role a request needs; None for the open health checks, and for /metrics, which
    checks its own access (``metrics.access``: a scraper may bring a static token instead)."""
    if path in HEALTH_PATHS or path == "/metrics" or path in OPEN_PATHS \
            or path.startswith("/viewer/static/"):
        return None
    if path.startswith(("/jobs", "/results/")):
        return "researcher"
    if method == "POST" and path.startswith("/processes/") and path.endswith("/execution"):
        return "researcher"
    if method in ("GET", "HEAD", "OPTIONS") or (method == "POST" and path == "/ows"):
        return "viewer"
    return "manager"


def _is_loopback(address: str | None) -> bool:
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False


class Auth:
    def __init__(self, settings: Settings) -> None:
        conf = settings.auth
        self.mode = conf.mode
        self.anonymous = conf.anonymous
        self.anonymous_role = conf.anonymous_role
        self.role_map = conf.roles
        self.claim_names = conf.claims
        self.validator: OIDCValidator | None = None
        if self.mode == "oidc":
            if not conf.issuer:
                raise ValueError("auth.mode is oidc but auth.issuer is not set")
            self.validator = OIDCValidator(
                issuer=conf.issuer, audience=conf.audience, jwks_uri=conf.jwks_uri,
                leeway=conf.leeway_s, refresh_cooldown=conf.jwks_refresh_cooldown_s,
                introspection_client_id=conf.introspection_client_id,
                introspection_client_secret=conf.introspection_client_secret)
        elif self.mode != "none":
            raise ValueError(f"auth.mode must be none or oidc, not {self.mode!r}")
        LOGGER.warning("auth: mode=%s; requests without a token are %s", self.mode,
                       {"loopback": "allowed from loopback addresses only, as "
                                    f"{self.anonymous_role}",
                        "all": f"allowed from anywhere, as {self.anonymous_role}",
                        "nobody": "refused"}.get(self.anonymous, self.anonymous))

    def identify(self) -> Identity | None:
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthError(401, "use an 'Authorization: Bearer <token>' header",
                                "invalid_request")
            if self.validator is None:
                raise AuthError(401, "this server does not accept tokens (auth.mode is none)")
            claims = self.validator.claims(token.strip())
            subject = str(claims.get("sub") or claims.get("username") or "")
            if not subject:
                raise AuthError(401, "the token names no subject (sub)")
            return Identity(subject=subject, issuer=str(claims.get("iss") or
                                                        self.validator.issuer),
                            roles=roles_from_claims(claims, self.role_map, self.claim_names))
        if self.anonymous == "all" or (self.anonymous == "loopback"
                                       and _is_loopback(request.remote_addr)):
            return Identity(subject="anonymous", roles=with_implied_roles({self.anonymous_role}),
                            anonymous=True)
        return None

    def authorize(self, role: str) -> Response | None:
        """None when the request comes with ``role`` (its identity is then the request's),
        else the 401, 403 or 503 answer."""
        try:
            identity = self.identify()
        except AuthError as err:
            return _auth_error(err.status, err.error, err.message)
        if identity is None:
            return _auth_error(401, "invalid_request", "authentication required: send "
                               "'Authorization: Bearer <token>' from the identity provider")
        if not identity.has(role):
            return _auth_error(403, "insufficient_scope",
                               f"this needs the {role} role; yours: "
                               f"{', '.join(sorted(identity.roles)) or 'none'}")
        g.aquamask_identity_token = current_identity.set(identity)
        return None

    @staticmethod
    def error(status: int, error: str, message: str) -> Response:
        return _auth_error(status, error, message)

    def init_app(self, app: Flask) -> None:
        @app.before_request
        def authenticate() -> Response | None:
            role = required_role(request.method, request.path)
            return None if role is None else self.authorize(role)

        @app.teardown_request
        def forget(_exc) -> None:
            token = g.pop("aquamask_identity_token", None)
            if token is not None:
                current_identity.reset(token)


def _auth_error(status: int, error: str, message: str) -> Response:
    code = {401: "Unauthorized", 403: "Forbidden"}.get(status, "ServiceUnavailable")
    response = jsonify({"type": code, "code": code, "status": status, "description": message})
    response.status_code = status
    if status == 401:
        safe = " ".join(message.replace('"', "'").split())  # no quotes or line breaks in a header
        response.headers["WWW-Authenticate"] = (
            f'Bearer realm="aquamask", error="{error}", error_description="{safe}"')
    return response
