"""Types the API and the CLI exchange: the artefact record, photos, search results."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.registry.models import ArtefactStatus

Verdict = Literal["match", "possible", "no_match"]


class ArtefactFields(BaseModel):
    """Object ID record plus what trafficking work needs. Every field is optional here."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, use_enum_values=True)

    inventory_number: str | None = Field(None, min_length=1, max_length=200)
    institution: str | None = Field(None, max_length=300, description="Holding institution.")
    status: ArtefactStatus | None = None
    date_reported: dt.date | None = None
    title: str | None = Field(None, max_length=500)
    category: str | None = Field(None, max_length=200, description="Type of object: category.")
    object_type: str | None = Field(None, max_length=200, description="Type of object: specific type.")
    materials: str | None = None
    techniques: str | None = None
    inscriptions: str | None = Field(None, description="Inscriptions and markings.")
    date_period: str | None = Field(None, max_length=200, description="Date or period.")
    maker: str | None = Field(None, max_length=300)
    subject: str | None = None
    distinguishing_features: str | None = None
    description: str | None = None
    find_site: str | None = None
    provenance: str | None = None
    source_reference: str | None = None
    height: float | None = Field(None, ge=0)
    width: float | None = Field(None, ge=0)
    depth: float | None = Field(None, ge=0)
    diameter: float | None = Field(None, ge=0)
    dimension_unit: str | None = Field(None, max_length=20, description="e.g. cm, mm")
    weight: float | None = Field(None, ge=0)
    weight_unit: str | None = Field(None, max_length=20, description="e.g. g, kg")


# Every field of the record, by its API name (also the manifest's column names).
RECORD_FIELDS = tuple(ArtefactFields.model_fields)


class ArtefactCreate(ArtefactFields):
    inventory_number: str = Field(..., min_length=1, max_length=200)
    institution: str = Field("", max_length=300)
    status: ArtefactStatus = ArtefactStatus.missing

    @field_validator("institution", mode="before")
    @classmethod
    def _none_is_empty(cls, v):
        return "" if v is None else v


class ArtefactUpdate(ArtefactFields):
    """PATCH body: only the fields sent are changed."""


class PhotoOut(BaseModel):
    id: int
    artefact_id: int
    sha256: str
    view: str | None
    width: int
    height: int
    format: str
    indexed: bool = Field(description="Whether the photo is searchable with the active model.")
    url: str
    thumbnail_url: str


class ArtefactOut(ArtefactFields):
    model_config = ConfigDict(extra="ignore")

    id: int
    inventory_number: str
    institution: str
    status: ArtefactStatus
    created_at: dt.datetime
    updated_at: dt.datetime
    photos: list[PhotoOut] = []


class ArtefactPage(BaseModel):
    items: list[ArtefactOut]
    total: int
    offset: int
    limit: int


class SearchResult(BaseModel):
    model_config = ConfigDict(use_enum_values=True)

    artefact_id: int
    inventory_number: str
    institution: str
    title: str | None
    status: ArtefactStatus
    score: float = Field(description="Cosine similarity of the best-matching registry photo.")
    verdict: Verdict
    photo_id: int = Field(description="The registry photo that matched best.")
    photo_url: str


class ModelInfo(BaseModel):
    name: str
    fingerprint: str
    dim: int
    device: str


class QueryInfo(BaseModel):
    sha256: str
    width: int
    height: int
    format: str


class SearchResponse(BaseModel):
    model: ModelInfo
    index_version: int
    query: QueryInfo
    results: list[SearchResult]
    took_ms: float


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok"]
    model: ModelInfo | None
    index: dict | None
    artefacts: int | None
