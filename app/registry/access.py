"""What a principal may read of the registry: the one place the API and the web pages ask.

An officer reads only records and photos of artefacts its own searches matched; a monitor only
thumbnails of them. A missing id and an unmatched one get the same refusal, so a key cannot learn
which ids are registered.
"""

from __future__ import annotations

from app.core.errors import Forbidden, NotFound
from app.registry.models import Artefact, Photo
from app.registry.store import RegistryStore
from app.security.actor import Principal
from app.security.audit import AuditLog
from app.security.roles import Permission

ARTEFACT_REFUSED = "This key may read only artefacts its own searches matched."
PHOTO_REFUSED = "This key may see only photos of artefacts its own searches matched."
THUMB_ONLY = "This key may see only thumbnails (size=thumb) of artefacts its searches matched."


def readable_artefact(principal: Principal, artefact_id: int, store: RegistryStore, audit: AuditLog) -> Artefact:
    """The artefact if ``principal`` may read its record; Forbidden (or NotFound for readers of all) else."""
    if principal.can(Permission.read_any_artefact):
        return store.get_artefact(artefact_id)
    refused = Forbidden(ARTEFACT_REFUSED)
    if not principal.can(Permission.read_matched_artefact):
        raise refused
    try:
        artefact = store.get_artefact(artefact_id)
    except NotFound:
        raise refused from None
    if not audit.matched(principal, artefact_id, artefact.created_at):
        raise refused
    return artefact


def may_read_artefact(principal: Principal, artefact_id: int, store: RegistryStore, audit: AuditLog) -> bool:
    try:
        readable_artefact(principal, artefact_id, store, audit)
    except (Forbidden, NotFound):
        return False
    return True


def readable_photo(principal: Principal, photo_id: int, size: str, store: RegistryStore, audit: AuditLog) -> Photo:
    """The photo if ``principal`` may see it at ``size`` ("full" or "thumb")."""
    if principal.can(Permission.read_any_photo):
        return store.get_photo(photo_id)
    if size == "full" and not principal.can(Permission.read_matched_photo):
        raise Forbidden(THUMB_ONLY)
    if not (principal.can(Permission.read_matched_photo) or principal.can(Permission.thumb_matched_photo)):
        raise Forbidden(PHOTO_REFUSED)
    refused = Forbidden(PHOTO_REFUSED)
    try:
        photo = store.get_photo(photo_id)
        artefact = store.get_artefact(photo.artefact_id)
    except NotFound:
        raise refused from None
    if not audit.matched(principal, artefact.id, artefact.created_at):
        raise refused
    return photo


def may_see_photo(principal: Principal, photo_id: int, store: RegistryStore, audit: AuditLog) -> bool:
    """Whether ``principal`` may see the photo at least as a thumbnail."""
    try:
        readable_photo(principal, photo_id, "thumb", store, audit)
    except (Forbidden, NotFound):
        return False
    return True
