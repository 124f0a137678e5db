"""alert lifecycle, silences, policies' job bookkeeping and the scheduler lease

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('silences',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=True),
    sa.Column('subject', sa.String(length=200), nullable=True),
    sa.Column('app', sa.String(length=200), nullable=True),
    sa.Column('model', sa.String(length=200), nullable=True),
    sa.Column('starts_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ends_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('comment', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expired_by', sa.String(length=200), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_silences'))
    )
    with op.batch_alter_table('silences', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_silences_ends_at'), ['ends_at'], unique=False)

    op.create_table('scheduler_lease',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('owner', sa.String(length=200), nullable=False),
    sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('renewed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_scheduler_lease'))
    )
    op.create_table('scheduled_runs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('scheduled_for', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('owner', sa.String(length=200), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_scheduled_runs')),
    sa.UniqueConstraint('name', 'scheduled_for', name=op.f('uq_scheduled_runs_name_scheduled_for'))
    )
    with op.batch_alter_table('scheduled_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_scheduled_runs_scheduled_for'), ['scheduled_for'], unique=False)

    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=40), server_default='', nullable=False))
        batch_op.add_column(sa.Column('subject', sa.String(length=200), server_default='', nullable=False))
        batch_op.add_column(sa.Column('group_key', sa.String(length=500), server_default='', nullable=False))
        batch_op.add_column(sa.Column('rule', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('acknowledged_by', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('acknowledged_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('resolved_by', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_notified_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_alerts_group_key'), ['group_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_alerts_status'), ['status'], unique=False)
    _backfill_alert_kind_and_group()

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('parent_job_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('policy', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('created_by', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('max_attempts', sa.Integer(), server_default='3', nullable=False))
        batch_op.add_column(sa.Column('lease_owner', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('approved_by', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('approved_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('cancelled_by', sa.String(length=200), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_policy'), ['policy'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_jobs_parent_job_id_jobs'), 'jobs', ['parent_job_id'], ['id'])

    op.create_table('notifications',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('alert_id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('group_key', sa.String(length=500), nullable=False),
    sa.Column('event', sa.String(length=20), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_status_code', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['alert_id'], ['alerts.id'], name=op.f('fk_notifications_alert_id_alerts')),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_notifications_job_id_jobs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notifications'))
    )
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_notifications_alert_id'), ['alert_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_notifications_fingerprint'), ['fingerprint'], unique=False)
        batch_op.create_index(batch_op.f('ix_notifications_status'), ['status'], unique=False)

    op.create_table('notification_attempts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('notification_id', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('body_format', sa.String(length=20), nullable=False),
    sa.Column('receiver_host', sa.String(length=300), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('duration_ms', sa.Float(), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('succeeded', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['notification_id'], ['notifications.id'], name=op.f('fk_notification_attempts_notification_id_notifications')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notification_attempts'))
    )
    with op.batch_alter_table('notification_attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_notification_attempts_notification_id'), ['notification_id'], unique=False)


def _backfill_alert_kind_and_group() -> None:
    # Revision 0001 kept kind and subject only in alerts.details; copy them into the new columns.
    # The group key format is repeated here on purpose: a migration must not change when the code does.
    alerts = sa.table(
        'alerts',
        sa.column('id', sa.Integer()),
        sa.column('app', sa.String()),
        sa.column('model', sa.String()),
        sa.column('details', sa.JSON()),
        sa.column('kind', sa.String()),
        sa.column('subject', sa.String()),
        sa.column('group_key', sa.String()),
    )
    connection = op.get_bind()
    rows = connection.execute(sa.select(alerts.c.id, alerts.c.app, alerts.c.model, alerts.c.details)).all()
    for alert_id, app, model, details in rows:
        kind = str((details or {}).get('kind', ''))
        subject = str((details or {}).get('subject', ''))
        connection.execute(
            alerts.update().where(alerts.c.id == alert_id).values(
                kind=kind, subject=subject, group_key=_group_key(app, model, kind)
            )
        )


def _group_key(app: str, model: str, kind: str) -> str:
    labels = {'app': app, 'kind': kind, 'model': model}
    quoted = ', '.join(f'{name}="{_escape(value)}"' for name, value in sorted(labels.items()))
    return '{}:{' + quoted + '}'


def _escape(value: str) -> str:
    return value.replace('\\', '\\\\').replace('"', '\\"')


def downgrade() -> None:
    with op.batch_alter_table('notification_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_notification_attempts_notification_id'))

    op.drop_table('notification_attempts')
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_notifications_status'))
        batch_op.drop_index(batch_op.f('ix_notifications_fingerprint'))
        batch_op.drop_index(batch_op.f('ix_notifications_alert_id'))

    op.drop_table('notifications')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_jobs_parent_job_id_jobs'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_jobs_policy'))
        batch_op.drop_column('cancelled_by')
        batch_op.drop_column('approved_at')
        batch_op.drop_column('approved_by')
        batch_op.drop_column('lease_expires_at')
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('lease_owner')
        batch_op.drop_column('max_attempts')
        batch_op.drop_column('attempts')
        batch_op.drop_column('created_by')
        batch_op.drop_column('policy')
        batch_op.drop_column('parent_job_id')

    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_alerts_status'))
        batch_op.drop_index(batch_op.f('ix_alerts_group_key'))
        batch_op.drop_column('last_notified_at')
        batch_op.drop_column('resolved_at')
        batch_op.drop_column('resolved_by')
        batch_op.drop_column('acknowledged_at')
        batch_op.drop_column('acknowledged_by')
        batch_op.drop_column('rule')
        batch_op.drop_column('group_key')
        batch_op.drop_column('subject')
        batch_op.drop_column('kind')

    with op.batch_alter_table('scheduled_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_scheduled_runs_scheduled_for'))

    op.drop_table('scheduled_runs')
    op.drop_table('scheduler_lease')
    with op.batch_alter_table('silences', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_silences_ends_at'))

    op.drop_table('silences')
