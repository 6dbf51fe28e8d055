"""Who is acting: the API key of the request, or the local operator at the command line.

It travels in a context variable so that a registry change is audited in the database transaction
that makes it, whatever the entry point (API, `registry import`, `demo`), without threading the key
through every service call. The API sets it per request; the CLI sets it once.
"""

from __future__ import annotations

import getpass
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from app.security.roles import Permission, Role, can


@dataclass(frozen=True)
class Principal:
    key_id: int | None  # None: not an API key (the CLI, or HM_AUTH=false)
    name: str
    role: Role

    def can(self, permission: Permission) -> bool:
        return can(self.role, permission)


LOCAL = Principal(key_id=None, name="local", role=Role.admin)
# Without HM_AUTH every request, API or web, acts as this admin (a single-user machine only).
ANONYMOUS = Principal(key_id=None, name="anonymous", role=Role.admin)
# Who sent a request refused before any key or session was known (none, an unknown one, or its address was
# blocked for guessing): the audit trail records such a refused search under this name, with the least role.
UNAUTHENTICATED = Principal(key_id=None, name="unauthenticated", role=Role.monitor)
_current: ContextVar[Principal] = ContextVar("heritage_match_principal", default=LOCAL)


def current_principal() -> Principal:
    return _current.get()


def set_principal(principal: Principal):
    """Set for the current context; returns the token to reset it with."""
    return _current.set(principal)


def reset_principal(token) -> None:
    _current.reset(token)


@contextmanager
def acting_as(principal: Principal):
    """Make ``principal`` the actor of the registry changes in this block (and this thread)."""
    token = set_principal(principal)
    try:
        yield principal
    finally:
        reset_principal(token)


def cli_principal() -> Principal:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        user = "unknown"
    return Principal(key_id=None, name=f"cli:{user}", role=Role.admin)
