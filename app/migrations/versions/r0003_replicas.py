"""replicas: change feed, web state, shared rate limits and photo blobs

What several API replicas on one database need: the change feed each replica's index follows
(registry_changes, app/registry/changes.py), the web searches and ended sessions that lived in the data
directory's web-searches.db (web_searches, ended_sessions, app/security/models.py), the secret that signs web
sessions and the rate limits' buckets (service_secrets, rate_buckets), and the photos' bytes for the database
photo store (photo_blobs; archive_blobs for the listings archive's copies), and the retro-hunt's progress
(hunt_positions), so that replicas share one hunt. New tables only: no row of 0002 changes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('archive_blobs',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('format', sa.String(length=10), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('sha256')
    )
    op.create_table('hunt_positions',
    sa.Column('model_fingerprint', sa.String(length=120), nullable=False),
    sa.Column('last_photo_id', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('model_fingerprint')
    )
    op.create_table('ended_sessions',
    sa.Column('sid', sa.String(length=64), nullable=False),
    sa.Column('until', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('sid')
    )
    with op.batch_alter_table('ended_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ended_sessions_until'), ['until'], unique=False)

    op.create_table('photo_blobs',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('format', sa.String(length=10), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('sha256')
    )
    op.create_table('rate_buckets',
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('tokens', sa.Float(), nullable=False),
    sa.Column('updated', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('rate_buckets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rate_buckets_updated'), ['updated'], unique=False)

    op.create_table('registry_changes',
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=30), nullable=False),
    sa.Column('fingerprint', sa.String(length=120), nullable=True),
    sa.Column('photo_ids', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('seq'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('registry_changes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_registry_changes_at'), ['at'], unique=False)

    op.create_table('service_secrets',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('web_searches',
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('sid', sa.String(length=64), nullable=False),
    sa.Column('key_id', sa.Integer(), nullable=True),
    sa.Column('key_name', sa.String(length=200), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('response', sa.Text(), nullable=False),
    sa.Column('display_jpeg', sa.LargeBinary(), nullable=False),
    sa.Column('filename', sa.String(length=500), nullable=False),
    sa.PrimaryKeyConstraint('n'),
    sa.UniqueConstraint('id'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('web_searches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_web_searches_sid'), ['sid'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('web_searches', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_web_searches_sid'))

    op.drop_table('web_searches')
    op.drop_table('service_secrets')
    with op.batch_alter_table('registry_changes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_registry_changes_at'))

    op.drop_table('registry_changes')
    with op.batch_alter_table('rate_buckets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rate_buckets_updated'))

    op.drop_table('rate_buckets')
    op.drop_table('photo_blobs')
    with op.batch_alter_table('ended_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ended_sessions_until'))

    op.drop_table('ended_sessions')
    op.drop_table('archive_blobs')
    op.drop_table('hunt_positions')
