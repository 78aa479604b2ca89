"""The caller of a request, as DLM knows them after authentication."""

import datetime
from typing import Literal

import msgspec

from dlm.enums import Role
from dlm.errors import Forbidden

# Where a subject comes from, in front of its name: API tokens and an identity provider's users never
# share a namespace (a JWT whose subject is a token's name is not that token's holder).
TOKEN_SUBJECT = "token:"
OIDC_SUBJECT = "oidc:"


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    # Who: "token:<an API token's name>", "oidc:<a JWT's subject claim>", or "anonymous" in open mode.
    # Recorded as the actor of what they do and as the owner of what they create.
    subject: str
    # What they may do; None when an identity provider vouched for them but named no DLM role.
    role: Role | None
    # How DLM knows: a DLM API token, an identity provider's JWT, or nothing (open mode).
    via: Literal["token", "oidc", "open"]
    # When the credential stops being valid, if it does.
    expires: datetime.datetime | None = None
    # The groups an identity provider says the caller is in (docs/security.md#items-who-may-read-and-change-them).
    groups: frozenset[str] = frozenset()

    @property
    def authenticated(self) -> bool:
        return self.via != "open"

    def may(self, needed: Role) -> bool:
        return self.role is not None and self.role.allows(needed)

    def require(self, needed: Role, action: str) -> None:
        """Refuse (403) unless this principal holds ``needed`` or more."""
        if not self.may(needed):
            held = f"role {self.role.value}" if self.role else "no DLM role"
            raise Forbidden(f"{action} needs role {needed.value}; {self.subject!r} has {held}")


# Open mode (no authentication configured, loopback only): whoever reaches DLM may do anything.
ANONYMOUS = Principal(subject="anonymous", role=Role.ADMIN, via="open")
