"""drift references per model version with precomputed statistics

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('reference_profiles',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('app', sa.String(length=200), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('model_version', sa.String(length=200), nullable=False),
    sa.Column('source', sa.String(length=20), nullable=False),
    sa.Column('source_window_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('event_count', sa.Integer(), nullable=False),
    sa.Column('profile', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reference_profiles')),
    sa.UniqueConstraint('app', 'model', 'model_version', name=op.f('uq_reference_profiles_app_model_model_version'))
    )
    op.create_table('window_profiles',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('app', sa.String(length=200), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('model_version', sa.String(length=200), nullable=False),
    sa.Column('event_count', sa.Integer(), nullable=False),
    sa.Column('profile', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_window_profiles')),
    sa.UniqueConstraint('app', 'model', 'window_start', name=op.f('uq_window_profiles_app_model_window_start'))
    )
    with op.batch_alter_table('window_profiles', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_window_profiles_window_start'), ['window_start'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('window_profiles', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_window_profiles_window_start'))

    op.drop_table('window_profiles')
    op.drop_table('reference_profiles')
