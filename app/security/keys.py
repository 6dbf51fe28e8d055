"""API keys: created (shown once), looked up by hash, listed, revoked."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from app.core.db import utcnow
from app.core.errors import AppError, NotFound
from app.core.files import sha256_hex
from app.security.actor import Principal
from app.security.audit import record_event
from app.security.models import ApiKey
from app.security.roles import Role

TOKEN_PREFIX = "hm_"


def hash_key(token: str) -> str:
    return sha256_hex(token.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    token: str  # the only time the secret exists outside the client


class KeyStore:
    def __init__(self, sessions: sessionmaker):
        self.sessions = sessions

    def create(self, name: str, role: Role | str) -> CreatedKey:
        name = (name or "").strip()
        if not name or len(name) > 100:
            raise AppError("A key needs a name of 1 to 100 characters.", code="validation_error", status_code=422)
        if name.isdigit():
            # `keys revoke 4` means the key with id 4: a name of digits would be mistaken for an id.
            raise AppError("A key's name cannot be only digits (revoke reads digits as a key id); add a letter.",
                           code="validation_error", status_code=422)
        try:
            role = Role(role)
        except ValueError:
            raise AppError(f"Unknown role {role!r}; one of {', '.join(r.value for r in Role)}.",
                           code="validation_error", status_code=422) from None
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.sessions.begin() as s:
            row = ApiKey(name=name, role=role.value, key_hash=hash_key(token), prefix=token[:10])
            s.add(row)
            s.flush()
            record_event(s, "key.create", details={"key_id": row.id, "name": name, "role": role.value})
        return CreatedKey(row, token)

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a valid, unrevoked key; None otherwise."""
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        with self.sessions() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(token)))
        if row is None or row.revoked_at is not None:
            return None
        return Principal(key_id=row.id, name=row.name, role=Role(row.role))

    def principal_by_id(self, key_id: int) -> Principal | None:
        """The principal of key ``key_id`` while it is unrevoked (a web session re-checks it on each request)."""
        with self.sessions() as s:
            row = s.get(ApiKey, key_id)
        if row is None or row.revoked_at is not None:
            return None
        return Principal(key_id=row.id, name=row.name, role=Role(row.role))

    def list(self) -> list[ApiKey]:
        with self.sessions() as s:
            return list(s.scalars(select(ApiKey).order_by(ApiKey.id)))

    def revoke(self, ref: str | int) -> ApiKey:
        """Revoke by id, or by name when exactly one active key has it."""
        with self.sessions.begin() as s:
            row = self._find(s, ref)
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                record_event(s, "key.revoke", details={"key_id": row.id, "name": row.name, "role": row.role})
            return row

    @staticmethod
    def _find(s, ref: str | int) -> ApiKey:
        if isinstance(ref, int) or str(ref).isdigit():
            row = s.get(ApiKey, int(ref))
            # A key named with digits before such names were refused: say so rather than guess.
            named = None if isinstance(ref, int) else s.scalar(select(ApiKey.id).where(
                ApiKey.name == ref, ApiKey.revoked_at.is_(None), ApiKey.id != int(ref)))
            if named is not None:
                raise AppError(f"{ref!r} is the id of one key and the name of another (id {named}); revoke by id "
                               "after checking `heritage-match keys list`.", code="ambiguous", status_code=409)
            if row is None:
                raise NotFound(f"No API key with id {ref}.")
            return row
        rows = list(s.scalars(select(ApiKey).where(ApiKey.name == ref, ApiKey.revoked_at.is_(None))))
        if not rows:
            raise NotFound(f"No active API key named {ref!r}.")
        if len(rows) > 1:
            raise AppError(f"Several active keys are named {ref!r}; revoke by id.", code="ambiguous",
                           status_code=409)
        return rows[0]
