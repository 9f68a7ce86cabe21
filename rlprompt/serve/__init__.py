"""The serving gateway: learned prompts in front of live traffic, learning from real outcomes.

app.py (FastAPI routes) → gateway.py (one request's logic) → portfolio.py (contextual Thompson
sampling over arms, posteriors folded from the event log) → store.py (SQLAlchemy tables, alembic
migrations, group-commit writer); evolution.py retires and breeds arms, screened offline by
guardrails.py and the reward modules; dashboard.py renders the state. docs/SERVE.md has the design.
"""
