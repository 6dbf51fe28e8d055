"""Types the API and the CLI exchange: the artefact record, photos, search results."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from app.registry.models import ArtefactStatus

Verdict = Literal["match", "possible", "no_match"]

# Where the API serves registry photos (``app/api/routes/photos.py``): every photo link says it this way.
PHOTOS_PATH = "/v1/photos"


def photo_url(photo_id: int, thumb: bool = False) -> str:
    return f"{PHOTOS_PATH}/{photo_id}" + ("?size=thumb" if thumb else "")


# The database stores UTC without a zone; the API says so (RFC 3339 needs the offset).
UtcDatetime = Annotated[dt.datetime, AfterValidator(lambda v: v if v.tzinfo else v.replace(tzinfo=dt.timezone.utc))]


class ArtefactFields(BaseModel):
    """Object ID record plus what trafficking work needs. Every field is optional here."""

    # No inf or nan: SQLite would store them, but JSON cannot carry them back (they came out as null).
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, use_enum_values=True, allow_inf_nan=False)

    inventory_number: str | None = Field(default=None, min_length=1, max_length=200)
    institution: str | None = Field(default=None, max_length=300, description="Holding institution.")
    status: ArtefactStatus | None = None
    date_reported: dt.date | None = None
    title: str | None = Field(default=None, max_length=500)
    category: str | None = Field(default=None, max_length=200, description="Type of object: category.")
    object_type: str | None = Field(default=None, max_length=200, description="Type of object: specific type.")
    materials: str | None = None
    techniques: str | None = None
    inscriptions: str | None = Field(default=None, description="Inscriptions and markings.")
    date_period: str | None = Field(default=None, max_length=200, description="Date or period.")
    maker: str | None = Field(default=None, max_length=300)
    subject: str | None = None
    distinguishing_features: str | None = None
    description: str | None = None
    find_site: str | None = None
    provenance: str | None = None
    source_reference: str | None = None
    height: float | None = Field(default=None, ge=0)
    width: float | None = Field(default=None, ge=0)
    depth: float | None = Field(default=None, ge=0)
    diameter: float | None = Field(default=None, ge=0)
    dimension_unit: str | None = Field(default=None, max_length=20, description="e.g. cm, mm")
    weight: float | None = Field(default=None, ge=0)
    weight_unit: str | None = Field(default=None, max_length=20, description="e.g. g, kg")


# Every field of the record, by its API name (also the manifest's column names).
RECORD_FIELDS = tuple(ArtefactFields.model_fields)


class ArtefactCreate(ArtefactFields):
    inventory_number: str = Field(..., min_length=1, max_length=200)
    institution: str = Field(default="", max_length=300)
    status: ArtefactStatus = ArtefactStatus.missing

    @field_validator("institution", mode="before")
    @classmethod
    def _none_is_empty(cls, v):
        return "" if v is None else v


class ArtefactUpdate(ArtefactFields):
    """PATCH body: only the fields sent are changed. Every record keeps an inventory number and a status."""

    @field_validator("inventory_number", "status")
    @classmethod
    def _cannot_be_removed(cls, v):
        if v is None:
            raise ValueError("cannot be removed")
        return v

    @field_validator("institution")
    @classmethod
    def _none_is_empty(cls, v):
        return "" if v is None else v


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
    created_at: UtcDatetime
    updated_at: UtcDatetime
    photos: list[PhotoOut] = []


class ArtefactPage(BaseModel):
    items: list[ArtefactOut]
    total: int
    offset: int
    limit: int


class Region(BaseModel):
    """A box in the query photo's pixels (after EXIF orientation): x0, y0 inclusive, x1, y1 exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int


class MatchEvidence(BaseModel):
    """Why the score is what it is."""

    exact_reuse: bool = Field(default=False, description="The query re-uses this registry photo (perceptual hash).")
    cosine: float | None = Field(default=None, description="Embedding similarity to the artefact's best photo.")
    margin: float | None = Field(default=None, description="Cosine lead over the best other artefact.")
    colour: float | None = Field(default=None, description="Colour-signature similarity of the whole pictures, 0 to 1.")
    colour_margin: float | None = Field(default=None, description="Colour lead over the best other artefact.")
    object_colour: float | None = Field(
        default=None, description="Colour similarity of the object alone, its background left out (0 to 1).")
    inliers: int = Field(default=0, description="Keypoint matches consistent with one geometric transform.")
    matches: int = Field(
        default=0, description="Keypoint matches (mutual nearest, ratio test) before the geometric check."
    )
    coverage: float = Field(
        default=0.0, description="Share of the object's visible extent spanned by the agreeing keypoints, 0 to 1."
    )
    surface: float | None = Field(
        default=None,
        description="Share of the aligned object's surface that agrees between the two photos, 0 to 1 "
                    "(null: not compared).",
    )
    surface_cells: int = Field(default=0, description="Cells of the aligned object whose surfaces were compared.")
    summary: str = Field(default="", description="What the verdict rests on, in one sentence.")


class SearchResult(BaseModel):
    model_config = ConfigDict(use_enum_values=True)

    artefact_id: int
    inventory_number: str
    institution: str
    title: str | None
    status: ArtefactStatus
    score: float = Field(description="Calibrated confidence that this is the same object, 0 to 1.")
    verdict: Verdict
    photo_id: int = Field(description="The registry photo that matched best.")
    photo_url: str
    region: Region | None = Field(default=None, description="Where in the query photo this artefact was found.")
    evidence: MatchEvidence


class ModelInfo(BaseModel):
    name: str
    fingerprint: str
    dim: int
    device: str
    calibrated: bool = Field(default=True, description="False: scores follow fixed cosine thresholds, not a fit.")
    calibration: str = Field(
        default="",
        description="The calibration in force: where it came from (`data-dir`: fitted on this registry by "
                    "`heritage-match calibrate`; `shipped`: fitted on benchmark packs and shipped with the "
                    "software) and when it was fitted, e.g. `data-dir, fitted 2026-12-07T12:00:00Z`; or "
                    "`none: fixed cosine thresholds`.",
    )


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
    audit_id: int | None = Field(default=None, description="The audit-trail event recording this search.")


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class IndexStatus(BaseModel):
    """The index a search would use now; only ``loaded`` while there is none."""

    loaded: bool
    fingerprint: str | None = Field(default=None, description="The model whose vectors it holds.")
    count: int | None = Field(default=None, description="Photo vectors in it.")
    version: int | None = None
    matches_model: bool | None = Field(default=None, description="Built with the active model: searches can use it.")


class CalibrationStatus(BaseModel):
    """The calibration in force and how it did on objects its fit never saw."""

    origin: Literal["data-dir", "shipped", "none"] = Field(
        description="`data-dir`: fitted on this registry (`heritage-match calibrate`); `shipped`: fitted on "
                    "benchmark packs and shipped with the software; `none`: fixed cosine thresholds.")
    fitted: str | None = Field(default=None, description="When it was fitted (UTC, ISO 8601).")
    path: str | None = Field(default=None, description="Its file name.")
    held_out: dict[str, dict[str, float | None]] | None = Field(
        default=None,
        description="Per benchmark pack (and `all`): `recall@1`, `match_recall`, `false_match_rate` (open-set "
                    "queries called `match`) and `false_match_rate_upper95` (its Clopper-Pearson 95% upper "
                    "bound), each measured on objects the fit never saw.")


class Health(BaseModel):
    status: Literal["ok"]
    model: ModelInfo | None
    index: IndexStatus | None
    artefacts: int | None
    calibration: CalibrationStatus | None = None


class Readiness(BaseModel):
    ready: bool = Field(description="The model is loaded and the index is usable with it.")
    index: IndexStatus = Field(description="The index state, as in /healthz.")


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(..., min_length=1, max_length=100, description="Who or what uses the key.")
    role: Literal["admin", "registrar", "officer", "monitor"]


class ApiKeyOut(BaseModel):
    id: int
    name: str
    role: str
    prefix: str = Field(description="The key's first characters, to recognise it.")
    created_at: UtcDatetime
    revoked_at: UtcDatetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret: shown this once, stored only as a hash.")


class IndexRebuildReport(BaseModel):
    fingerprint: str
    vectors: int
    embedded: int
    failed: int
    missing: int
    version: int
