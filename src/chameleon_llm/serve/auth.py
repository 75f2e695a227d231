"""API keys: ``Authorization: Bearer <key>``; each key is scoped to user-id patterns and permissions."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase

from .errors import ApiError
from .settings import ALL_PERMISSIONS, ApiKey, Permission

USER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+:=-]{0,127}$")


def check_user_id(user_id: str, *, param: str = "user") -> str:
    """A user id is 1–128 characters of letters, digits and ``._@+:=-``, starting with a letter or digit."""
    if not USER_ID.match(user_id):
        raise ApiError(
            400,
            f"invalid user id {user_id[:140]!r}: use 1-128 letters, digits or ._@+:=- "
            "(starting with a letter or digit)",
            code="invalid_user_id",
            param=param,
        )
    return user_id


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's name, the user ids it covers, and what it may do with them."""

    name: str
    users: tuple[str, ...]
    allow: frozenset[Permission]

    def covers(self, user_id: str) -> bool:
        return any(p == "*" or fnmatchcase(user_id, p) for p in self.users)

    def require(self, permission: Permission, user_id: str | None = None) -> None:
        """403 unless this key may do ``permission`` (on ``user_id``, when given)."""
        if permission not in self.allow:
            raise ApiError(403, f"this API key may not {permission}", code="permission_denied")
        if user_id is not None and not self.covers(user_id):
            raise ApiError(
                403, f"this API key is not allowed to access user {user_id!r}", code="user_out_of_scope"
            )


ANONYMOUS = Principal("anonymous", ("*",), frozenset(ALL_PERMISSIONS))


class KeyRing:
    """Looks keys up by their SHA-256 (keys themselves are not kept in memory)."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._by_digest = {k.digest(): Principal(k.name, tuple(k.users), frozenset(k.allow)) for k in keys}

    @property
    def enabled(self) -> bool:
        return bool(self._by_digest)

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller for an ``Authorization`` header value; 401 when missing or unknown."""
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
        found = self._by_digest.get(hashlib.sha256(token.strip().encode()).hexdigest())
        if found is None:
            raise ApiError(401, "invalid API key", code="invalid_api_key")
        return found
