"""the last release's schema (fc5c7b6): registry, API keys, append-only audit trail

The tables of the last release without migrations: artefacts, photos, vectors, signatures, API keys and the
audit trail, with the triggers that make the trail append-only. A registry that release made has these
tables and no ``alembic_version``: ``app.registry.schema`` recognises it and stamps it with this revision
instead of running it.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.migrations import append_only

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY = {"audit_events": ("id",), "audit_results": ("audit_id", "rank")}


def upgrade() -> None:
    op.create_table('api_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('revoked_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_api_keys_key_hash', 'api_keys', ['key_hash'], unique=True)

    op.create_table('artefacts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('inventory_number', sa.String(length=200), nullable=False),
    sa.Column('institution', sa.String(length=300), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('date_reported', sa.Date(), nullable=True),
    sa.Column('title', sa.String(length=500), nullable=True),
    sa.Column('category', sa.String(length=200), nullable=True),
    sa.Column('object_type', sa.String(length=200), nullable=True),
    sa.Column('materials', sa.Text(), nullable=True),
    sa.Column('techniques', sa.Text(), nullable=True),
    sa.Column('inscriptions', sa.Text(), nullable=True),
    sa.Column('date_period', sa.String(length=200), nullable=True),
    sa.Column('maker', sa.String(length=300), nullable=True),
    sa.Column('subject', sa.Text(), nullable=True),
    sa.Column('distinguishing_features', sa.Text(), nullable=True),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('find_site', sa.Text(), nullable=True),
    sa.Column('provenance', sa.Text(), nullable=True),
    sa.Column('source_reference', sa.Text(), nullable=True),
    sa.Column('height', sa.Float(), nullable=True),
    sa.Column('width', sa.Float(), nullable=True),
    sa.Column('depth', sa.Float(), nullable=True),
    sa.Column('diameter', sa.Float(), nullable=True),
    sa.Column('dimension_unit', sa.String(length=20), nullable=True),
    sa.Column('weight', sa.Float(), nullable=True),
    sa.Column('weight_unit', sa.String(length=20), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('institution', 'inventory_number', name='uq_institution_inventory'),
    sqlite_autoincrement=True
    )
    op.create_index('ix_artefacts_category', 'artefacts', ['category'], unique=False)
    op.create_index('ix_artefacts_institution', 'artefacts', ['institution'], unique=False)
    op.create_index('ix_artefacts_inventory_number', 'artefacts', ['inventory_number'], unique=False)
    op.create_index('ix_artefacts_object_type', 'artefacts', ['object_type'], unique=False)
    op.create_index('ix_artefacts_status', 'artefacts', ['status'], unique=False)

    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('key_id', sa.Integer(), nullable=True),
    sa.Column('key_name', sa.String(length=100), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('action', sa.String(length=40), nullable=False),
    sa.Column('outcome', sa.String(length=40), nullable=False),
    sa.Column('query_sha256', sa.String(length=64), nullable=True),
    sa.Column('artefact_id', sa.Integer(), nullable=True),
    sa.Column('details', sa.Text(), nullable=True),
    sa.Column('model_fingerprint', sa.String(length=120), nullable=True),
    sa.Column('index_version', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_audit_events_action', 'audit_events', ['action'], unique=False)
    op.create_index('ix_audit_events_at', 'audit_events', ['at'], unique=False)
    op.create_index('ix_audit_events_key_id', 'audit_events', ['key_id'], unique=False)

    op.create_table('audit_results',
    sa.Column('audit_id', sa.Integer(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('artefact_id', sa.Integer(), nullable=False),
    sa.Column('photo_id', sa.Integer(), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('verdict', sa.String(length=20), nullable=False),
    sa.ForeignKeyConstraint(['audit_id'], ['audit_events.id'], ),
    sa.PrimaryKeyConstraint('audit_id', 'rank')
    )
    op.create_index('ix_audit_results_artefact_id', 'audit_results', ['artefact_id'], unique=False)

    op.create_table('photos',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('artefact_id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('format', sa.String(length=10), nullable=False),
    sa.Column('view', sa.String(length=100), nullable=True),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['artefact_id'], ['artefacts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('artefact_id', 'sha256', name='uq_artefact_photo'),
    sqlite_autoincrement=True
    )
    op.create_index('ix_photos_artefact_id', 'photos', ['artefact_id'], unique=False)
    op.create_index('ix_photos_sha256', 'photos', ['sha256'], unique=False)

    op.create_table('embeddings',
    sa.Column('photo_id', sa.Integer(), nullable=False),
    sa.Column('model_fingerprint', sa.String(length=120), nullable=False),
    sa.Column('dim', sa.Integer(), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['photo_id'], ['photos.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('photo_id', 'model_fingerprint')
    )
    op.create_index('ix_embeddings_model_fingerprint', 'embeddings', ['model_fingerprint'], unique=False)

    op.create_table('photo_signatures',
    sa.Column('photo_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('phash', sa.BigInteger(), nullable=False),
    sa.Column('colour', sa.LargeBinary(), nullable=False),
    sa.Column('features', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['photo_id'], ['photos.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('photo_id')
    )
    op.create_index('ix_photo_signatures_phash', 'photo_signatures', ['phash'], unique=False)

    append_only.create(APPEND_ONLY)


def downgrade() -> None:
    append_only.drop(list(APPEND_ONLY))
    op.drop_table('photo_signatures')
    op.drop_table('embeddings')
    op.drop_table('photos')
    op.drop_table('audit_results')
    op.drop_table('audit_events')
    op.drop_table('artefacts')
    op.drop_table('api_keys')
    append_only.drop_function()
