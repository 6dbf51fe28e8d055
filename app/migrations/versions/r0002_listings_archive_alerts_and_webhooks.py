"""listings archive, alerts and webhooks

What this development added since the last release: the listings archive (archive_listings, archive_photos,
archive_sightings, archive_vectors: every listing photo scans have seen, app/registry/archive.py) and the alerts
with their webhook endpoints and deliveries (app/registry/alerts.py). New tables only: no row of 0001 changes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('archive_listings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('platform', sa.String(length=100), nullable=False),
    sa.Column('listing_id', sa.String(length=300), nullable=False),
    sa.Column('url', sa.Text(), nullable=True),
    sa.Column('title', sa.Text(), nullable=True),
    sa.Column('seller', sa.String(length=300), nullable=True),
    sa.Column('price', sa.String(length=100), nullable=True),
    sa.Column('currency', sa.String(length=20), nullable=True),
    sa.Column('listed_at', sa.String(length=40), nullable=True),
    sa.Column('first_seen', sa.DateTime(), nullable=False),
    sa.Column('last_seen', sa.DateTime(), nullable=False),
    sa.Column('times_seen', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=300), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('platform', 'listing_id', name='uq_archive_platform_listing'),
    sqlite_autoincrement=True
    )
    op.create_index('ix_archive_listings_last_seen', 'archive_listings', ['last_seen'], unique=False)

    op.create_table('archive_photos',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('format', sa.String(length=10), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('copy_sha256', sa.String(length=64), nullable=False),
    sa.Column('has_full', sa.Boolean(), nullable=False),
    sa.Column('first_seen', sa.DateTime(), nullable=False),
    sa.Column('last_seen', sa.DateTime(), nullable=False),
    sa.Column('times_seen', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sha256'),
    sqlite_autoincrement=True
    )
    op.create_index('ix_archive_photos_copy_sha256', 'archive_photos', ['copy_sha256'], unique=False)
    op.create_index('ix_archive_photos_last_seen', 'archive_photos', ['last_seen'], unique=False)

    op.create_table('webhook_endpoints',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('secret', sa.String(length=200), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('created_by', sa.String(length=100), nullable=False),
    sa.Column('removed_at', sa.DateTime(), nullable=True),
    sa.Column('removed_by', sa.String(length=100), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sqlite_autoincrement=True
    )
    op.create_index('ix_webhook_endpoints_active', 'webhook_endpoints', ['active'], unique=False)

    op.create_table('archive_sightings',
    sa.Column('archive_listing_id', sa.Integer(), nullable=False),
    sa.Column('photo_id', sa.Integer(), nullable=False),
    sa.Column('first_seen', sa.DateTime(), nullable=False),
    sa.Column('last_seen', sa.DateTime(), nullable=False),
    sa.Column('times_seen', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['archive_listing_id'], ['archive_listings.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['photo_id'], ['archive_photos.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('archive_listing_id', 'photo_id')
    )
    op.create_index('ix_archive_sightings_photo_id', 'archive_sightings', ['photo_id'], unique=False)

    op.create_table('archive_vectors',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('photo_id', sa.Integer(), nullable=False),
    sa.Column('model_fingerprint', sa.String(length=120), nullable=False),
    sa.Column('dim', sa.Integer(), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['photo_id'], ['archive_photos.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('photo_id', 'model_fingerprint', name='uq_archive_vector'),
    sqlite_autoincrement=True
    )
    op.create_index('ix_archive_vectors_fingerprint_seq', 'archive_vectors', ['model_fingerprint', 'id'], unique=False)

    op.create_table('alerts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dedupe_key', sa.String(length=64), nullable=False),
    sa.Column('artefact_id', sa.Integer(), nullable=True),
    sa.Column('registry_photo_id', sa.Integer(), nullable=True),
    sa.Column('artefact_ref', sa.Integer(), nullable=False),
    sa.Column('inventory_number', sa.String(length=200), nullable=False),
    sa.Column('institution', sa.String(length=300), nullable=False),
    sa.Column('artefact_title', sa.String(length=500), nullable=True),
    sa.Column('archive_photo_id', sa.Integer(), nullable=True),
    sa.Column('listing_photo_sha256', sa.String(length=64), nullable=True),
    sa.Column('platform', sa.String(length=100), nullable=True),
    sa.Column('listing_id', sa.String(length=500), nullable=True),
    sa.Column('listing_url', sa.Text(), nullable=True),
    sa.Column('listing_title', sa.Text(), nullable=True),
    sa.Column('listing_seller', sa.String(length=500), nullable=True),
    sa.Column('listing_price', sa.String(length=200), nullable=True),
    sa.Column('listing_thumbnail', sa.LargeBinary(), nullable=True),
    sa.Column('thumbnail_bytes', sa.Integer(), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('verdict', sa.String(length=20), nullable=False),
    sa.Column('evidence', sa.Text(), nullable=False),
    sa.Column('model_fingerprint', sa.String(length=120), nullable=True),
    sa.Column('source', sa.String(length=20), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('status_changed_by', sa.String(length=100), nullable=True),
    sa.Column('status_changed_at', sa.DateTime(), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['artefact_id'], ['artefacts.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['registry_photo_id'], ['photos.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('dedupe_key', name='uq_alert_dedupe'),
    sqlite_autoincrement=True
    )
    op.create_index('ix_alerts_archive_photo_id', 'alerts', ['archive_photo_id'], unique=False)
    op.create_index('ix_alerts_artefact_id', 'alerts', ['artefact_id'], unique=False)
    op.create_index('ix_alerts_created_at', 'alerts', ['created_at'], unique=False)
    op.create_index('ix_alerts_status_id', 'alerts', ['status', 'id'], unique=False)

    op.create_table('webhook_deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('endpoint_id', sa.Integer(), nullable=False),
    sa.Column('alert_id', sa.Integer(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=64), nullable=False),
    sa.Column('event', sa.String(length=40), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('first_attempt_at', sa.DateTime(), nullable=True),
    sa.Column('last_attempt_at', sa.DateTime(), nullable=True),
    sa.Column('next_attempt_at', sa.DateTime(), nullable=False),
    sa.Column('delivered_at', sa.DateTime(), nullable=True),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('log', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['alert_id'], ['alerts.id'], ),
    sa.ForeignKeyConstraint(['endpoint_id'], ['webhook_endpoints.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('endpoint_id', 'alert_id', name='uq_delivery_endpoint_alert'),
    sa.UniqueConstraint('idempotency_key'),
    sqlite_autoincrement=True
    )
    op.create_index('ix_deliveries_due', 'webhook_deliveries', ['status', 'next_attempt_at'], unique=False)
    op.create_index('ix_webhook_deliveries_alert_id', 'webhook_deliveries', ['alert_id'], unique=False)
    op.create_index('ix_webhook_deliveries_endpoint_id', 'webhook_deliveries', ['endpoint_id'], unique=False)


def downgrade() -> None:
    op.drop_table('webhook_deliveries')
    op.drop_table('alerts')
    op.drop_table('archive_vectors')
    op.drop_table('archive_sightings')
    op.drop_table('webhook_endpoints')
    op.drop_table('archive_photos')
    op.drop_table('archive_listings')
