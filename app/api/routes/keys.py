"""API keys for administrators (the same as `heritage-match keys`)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import KeyId, allowed
from app.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, ErrorResponse
from app.security.roles import Permission

router = APIRouter(prefix="/v1/keys", tags=["keys"], dependencies=allowed(Permission.manage_keys))


@router.get("", response_model=list[ApiKeyOut])
def list_keys(request: Request) -> list[ApiKeyOut]:
    """Every key, revoked ones too; never the secret."""
    return [ApiKeyOut.model_validate(k, from_attributes=True) for k in request.app.state.keys.list()]


@router.post("", response_model=ApiKeyCreated, status_code=201)
def create_key(body: ApiKeyCreate, request: Request) -> ApiKeyCreated:
    """A new key; its secret is in this response and nowhere else, ever."""
    created = request.app.state.keys.create(body.name, body.role)
    return ApiKeyCreated(**ApiKeyOut.model_validate(created.key, from_attributes=True).model_dump(),
                         key=created.token)


@router.delete("/{key_id}", response_model=ApiKeyOut,
               responses={404: {"model": ErrorResponse, "description": "No such key."}})
def revoke_key(request: Request, key_id: KeyId) -> ApiKeyOut:
    """Revoke a key: its next request is refused. The row stays for the audit trail."""
    return ApiKeyOut.model_validate(request.app.state.keys.revoke(key_id), from_attributes=True)
