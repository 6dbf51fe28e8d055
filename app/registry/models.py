"""Database tables: artefacts (Object ID record), their photos, photo embeddings per model,
model-independent photo signatures (perceptual hash, colour, local features), and the photos' bytes when the
photo store is the database (``HM_PHOTO_STORE=database``)."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    BigInteger,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.core.db import Base, utcnow


class ArtefactStatus(str, enum.Enum):
    missing = "missing"
    stolen = "stolen"
    looted = "looted"
    destroyed = "destroyed"
    at_risk = "at_risk"
    in_custody = "in_custody"
    recovered = "recovered"


class Artefact(Base):
    __tablename__ = "artefacts"
    # AUTOINCREMENT: a deleted row's id is never given again, so audit events, scan outputs and
    # the index never mistake a new record for a deleted one (SQLite otherwise reuses the highest id).
    __table_args__ = (UniqueConstraint("institution", "inventory_number", name="uq_institution_inventory"),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    inventory_number: Mapped[str] = mapped_column(String(200), index=True)
    institution: Mapped[str] = mapped_column(String(300), default="", index=True)
    status: Mapped[str] = mapped_column(String(20), default=ArtefactStatus.missing.value, index=True)
    date_reported: Mapped[dt.date | None] = mapped_column(Date, nullable=True)

    title: Mapped[str | None] = mapped_column(String(500))
    category: Mapped[str | None] = mapped_column(String(200), index=True)
    object_type: Mapped[str | None] = mapped_column(String(200), index=True)
    materials: Mapped[str | None] = mapped_column(Text)
    techniques: Mapped[str | None] = mapped_column(Text)
    inscriptions: Mapped[str | None] = mapped_column(Text)
    date_period: Mapped[str | None] = mapped_column(String(200))
    maker: Mapped[str | None] = mapped_column(String(300))
    subject: Mapped[str | None] = mapped_column(Text)
    distinguishing_features: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    find_site: Mapped[str | None] = mapped_column(Text)
    provenance: Mapped[str | None] = mapped_column(Text)
    source_reference: Mapped[str | None] = mapped_column(Text)

    height: Mapped[float | None] = mapped_column(Float)
    width: Mapped[float | None] = mapped_column(Float)
    depth: Mapped[float | None] = mapped_column(Float)
    diameter: Mapped[float | None] = mapped_column(Float)
    dimension_unit: Mapped[str | None] = mapped_column(String(20))
    weight: Mapped[float | None] = mapped_column(Float)
    weight_unit: Mapped[str | None] = mapped_column(String(20))

    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    photos: Mapped[list["Photo"]] = relationship(
        back_populates="artefact", cascade="all, delete-orphan", order_by="Photo.id"
    )


class Photo(Base):
    __tablename__ = "photos"
    __table_args__ = (UniqueConstraint("artefact_id", "sha256", name="uq_artefact_photo"),
                      {"sqlite_autoincrement": True})  # ids never reused (see Artefact)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # also the vector id in FAISS
    artefact_id: Mapped[int] = mapped_column(ForeignKey("artefacts.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    format: Mapped[str] = mapped_column(String(10))
    view: Mapped[str | None] = mapped_column(String(100))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    artefact: Mapped[Artefact] = relationship(back_populates="photos")
    embeddings: Mapped[list["Embedding"]] = relationship(
        back_populates="photo", cascade="all, delete-orphan"
    )
    signature: Mapped["PhotoSignature | None"] = relationship(
        back_populates="photo", cascade="all, delete-orphan"
    )


# A photo's vectors of one model are stored under the model's fingerprint (the whole frame: the index
# holds these) and under the fingerprint with this suffix (the object's box alone, compared for the
# search's candidates; an empty vector when the object fills the frame).
OBJECT_VIEW = "#object"


def object_fingerprint(fingerprint: str) -> str:
    return fingerprint + OBJECT_VIEW


class Embedding(Base):
    __tablename__ = "embeddings"

    photo_id: Mapped[int] = mapped_column(ForeignKey("photos.id", ondelete="CASCADE"), primary_key=True)
    model_fingerprint: Mapped[str] = mapped_column(String(120), primary_key=True, index=True)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little endian

    photo: Mapped[Photo] = relationship(back_populates="embeddings")


# The version of the signatures the search computes (app/pipeline/signature.py): bump it when any
# signature changes meaning, and stored signatures of an older version are recomputed.
# 3: the colour column holds the object's colour signature after the whole picture's.
SIGNATURE_VERSION = 3
# The perceptual hash has been computed the same way since this version: hashes stored by it or later
# still find a re-used registry photo before their signature is recomputed.
PHASH_SINCE_VERSION = 1


class PhotoSignature(Base):
    """What verification needs of a registry photo, computed once at registration."""

    __tablename__ = "photo_signatures"

    photo_id: Mapped[int] = mapped_column(ForeignKey("photos.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    phash: Mapped[int] = mapped_column(BigInteger, index=True)
    colour: Mapped[bytes] = mapped_column(LargeBinary)
    features: Mapped[bytes] = mapped_column(LargeBinary)

    photo: Mapped[Photo] = relationship(back_populates="signature")


class PhotoBlob(Base):
    """A photo's bytes, once per content (``HM_PHOTO_STORE=database``: replicas with no shared folder).

    Written in the transaction that adds the photo's row, deleted in the one that removes its last row: a
    photo and its rows are always together, with no lock beyond the database's own."""

    __tablename__ = "photo_blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    format: Mapped[str] = mapped_column(String(10))
    data: Mapped[bytes] = mapped_column(LargeBinary)
