"""Alembic environment: runs on the connection `rlprompt.serve.store.migrate` passes in.

The gateway migrates at start-up (an installed wheel carries these files); the alembic CLI works
too: `alembic -x url=sqlite:///serve.sqlite upgrade head` with script_location set to this folder.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from rlprompt.serve.store import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # the alembic CLI: the URL comes from `-x url=...`
    url = context.get_x_argument(as_dictionary=True).get("url", "sqlite:///serve.sqlite")
    with sa.create_engine(url).begin() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    context.run_migrations()
