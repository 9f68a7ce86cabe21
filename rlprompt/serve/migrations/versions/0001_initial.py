"""The gateway's event log: arms, conversations, turns, feedback, auto scores, evolution.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "arms",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(64), nullable=False, unique=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("context", sa.String(200), nullable=True),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("parent_id", sa.Integer, nullable=True),
        sa.Column("prior_alpha", sa.Float, nullable=False),
        sa.Column("prior_beta", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("retired_at", sa.Float, nullable=True),
        sa.Column("retired_reason", sa.Text, nullable=True),
    )
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("arm_id", sa.Integer, sa.ForeignKey("arms.id"), nullable=False, index=True),
        sa.Column("context", sa.String(200), nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False, index=True),
    )
    op.create_table(
        "turns",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "conversation_id", sa.String(64), sa.ForeignKey("conversations.id"), nullable=False, index=True
        ),
        sa.Column("messages", sa.Text, nullable=False),
        sa.Column("reply", sa.Text, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("target_ms", sa.Float, nullable=False),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "feedback",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("feedback_id", sa.String(128), nullable=False, unique=True),
        sa.Column(
            "conversation_id", sa.String(64), sa.ForeignKey("conversations.id"), nullable=False, index=True
        ),
        sa.Column("arm_id", sa.Integer, nullable=False, index=True),
        sa.Column("context", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=True),
        sa.Column("value_nano", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "auto_scores",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "conversation_id", sa.String(64), sa.ForeignKey("conversations.id"), nullable=False, index=True
        ),
        sa.Column("arm_id", sa.Integer, nullable=False),
        sa.Column("context", sa.String(200), nullable=False),
        sa.Column("total", sa.Float, nullable=False),
        sa.Column("normalized", sa.Float, nullable=False),
        sa.Column("parts", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "evolution",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("arm_id", sa.Integer, nullable=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("p_beats_best", sa.Float, nullable=True),
        sa.Column("screen_reward", sa.Float, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "evolution_rounds",
        sa.Column("round", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("feedback_count", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
    )


def downgrade() -> None:
    for table in (
        "evolution_rounds",
        "evolution",
        "auto_scores",
        "feedback",
        "turns",
        "conversations",
        "arms",
    ):
        op.drop_table(table)
