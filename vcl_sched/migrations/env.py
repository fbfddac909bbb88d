"""Alembic environment for the lab database. Run through `vcl db init` / `vcl db upgrade`."""

from alembic import context

from vcl_sched.db import engine
from vcl_sched.models import Base

cfg = context.config
url = cfg.attributes.get("vcl_url") or cfg.get_main_option("sqlalchemy.url")

with engine(url).connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
