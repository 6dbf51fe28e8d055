"""The web pages' route dependencies as ``Annotated`` aliases: the signed-in user with the permission a
page needs (a form's also with its CSRF token checked), the session, row ids in paths."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.http.requests import row_id
from app.security.roles import Permission
from app.web.pages import allow, csrf_checked, web_session
from app.web.session import WebSession, WebUser

ArtefactId = Annotated[int, row_id("artefact")]
PhotoId = Annotated[int, row_id("photo")]
SessionDep = Annotated[WebSession, Depends(web_session)]

Searcher = Annotated[WebUser, Depends(allow(Permission.search))]
SearchForm = Annotated[WebUser, Depends(csrf_checked(Permission.search))]
RegistryLister = Annotated[WebUser, Depends(allow(Permission.list_registry))]
ArtefactReader = Annotated[WebUser, Depends(allow(Permission.read_any_artefact))]
RegistryWriter = Annotated[WebUser, Depends(allow(Permission.write_registry))]
RegistryForm = Annotated[WebUser, Depends(csrf_checked(Permission.write_registry))]
PhotoViewer = Annotated[WebUser, Depends(allow(Permission.read_any_photo, Permission.read_matched_photo,
                                               Permission.thumb_matched_photo))]
# Alerts: a registry object seen in a listing; reviewing one (confirm, dismiss) is a form.
AlertId = Annotated[int, row_id("alert")]
AlertReader = Annotated[WebUser, Depends(allow(Permission.read_alerts))]
AlertForm = Annotated[WebUser, Depends(csrf_checked(Permission.review_alerts))]
