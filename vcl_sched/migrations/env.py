"""Alembic environment for the lab database. Run through `vcl db init` / `vcl db upgrade`."""

from alembic import context

from vcl_sched.db import engine
from vcl_sched.models import Base

cfg = context.config
url = cfg.attributes.get("vcl_url") or cfg.get_main_option("sqlalchemy.url")

with engine(url).connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # A batch migration copies a table and drops the old one: with foreign keys on, SQLite refuses to drop a
        # table others refer to. Off for the migration (outside its transaction, where the pragma has effect),
        # then every reference is checked before the connection is given back.
        connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=sqlite,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
        if sqlite:
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"the migration left rows whose references are broken: {broken[:5]}")
    connection.commit()
    if sqlite:
        connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]
