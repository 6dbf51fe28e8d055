"""Roles and the permissions each grants.

A looter who can query the registry freely learns which objects are registered, so reading is split
finely: an officer reads only records and photos of artefacts its own searches matched, a monitor
sees only matches and thumbnails and cannot page through the registry.
"""

from __future__ import annotations

import enum


class Role(str, enum.Enum):
    admin = "admin"
    registrar = "registrar"
    officer = "officer"
    monitor = "monitor"


class Permission(str, enum.Enum):
    search = "search"
    list_registry = "registry.list"  # page through and filter the registry
    read_any_artefact = "artefact.read"
    read_matched_artefact = "artefact.read_matched"  # only artefacts the key's searches matched
    read_any_photo = "photo.read"
    read_matched_photo = "photo.read_matched"  # full photos and thumbnails of matched artefacts
    thumb_matched_photo = "photo.thumb_matched"  # thumbnails of matched artefacts only
    write_registry = "registry.write"  # create, edit, delete artefacts and photos
    manage_keys = "keys.manage"
    rebuild_index = "index.rebuild"
    read_alerts = "alerts.read"  # alerts: registry objects seen in listings (scans, retro-hunts)
    review_alerts = "alerts.review"  # confirm or dismiss an alert
    manage_webhooks = "webhooks.manage"  # endpoints that receive new alerts


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.admin: frozenset(Permission),
    Role.registrar: frozenset({
        Permission.search, Permission.list_registry, Permission.read_any_artefact, Permission.read_any_photo,
        Permission.write_registry, Permission.read_alerts, Permission.review_alerts,
    }),
    Role.officer: frozenset({Permission.search, Permission.read_matched_artefact, Permission.read_matched_photo}),
    Role.monitor: frozenset({Permission.search, Permission.thumb_matched_photo}),
}

# Which verdicts of a key's own searches open an artefact's record and photos to it.
GRANTING_VERDICTS: dict[Role, tuple[str, ...]] = {
    Role.officer: ("match", "possible"),
    Role.monitor: ("match",),
}
# What a monitor's search shows: matches only, so probing learns nothing from near misses.
MONITOR_VISIBLE_VERDICTS = ("match",)
# The candidates a search shows to a role that may not list the registry: the verdicts that open a
# record to it (a no_match candidate's inventory number and title would list the registry, up to
# top_k at a time, whatever photo is sent). Roles not here (registrar, admin) see every candidate.
VISIBLE_VERDICTS: dict[Role, tuple[str, ...]] = {
    Role.officer: GRANTING_VERDICTS[Role.officer],
    Role.monitor: MONITOR_VISIBLE_VERDICTS,
}


def can(role: Role | str, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[Role(role)]
