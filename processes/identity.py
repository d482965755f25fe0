"""Who is asking: set by the server's auth layer for each request, read by the job manager to
give jobs an owner and to hide other users' jobs. Outside a request (CLI, job workers) there is
no identity and nothing is filtered."""
from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

ROLES = ("viewer", "researcher", "manager")  # each role includes the ones before it


ANONYMOUS_OWNER = "anonymous:"


@dataclass(frozen=True)
class Identity:
    subject: str
    roles: frozenset[str]
    anonymous: bool = False
    issuer: str | None = None

    def has(self, role: str) -> bool:
        return role in self.roles

    @property
    def owner(self) -> str:
        """Who owns this caller's jobs and layers: the token's issuer and subject (a subject
        is unique only within its issuer), or one owner for every anonymous client, which no
        token can name."""
        if self.anonymous:
            return ANONYMOUS_OWNER
        return owner_key(self.issuer or "", self.subject)

    @property
    def sees_all_jobs(self) -> bool:
        return self.has("manager")


def owner_key(issuer: str, subject: str) -> str:
    """The owner of a token's jobs: issuer URLs hold no spaces, so the two never run together."""
    return f"oidc:{issuer} {subject}"


def with_implied_roles(roles: set[str]) -> frozenset[str]:
    """manager implies researcher implies viewer."""
    granted = set(roles)
    for i, role in enumerate(ROLES):
        if role in roles:
            granted.update(ROLES[:i])
    return frozenset(granted & set(ROLES))


current_identity: ContextVar[Identity | None] = ContextVar("aquamask_identity", default=None)
