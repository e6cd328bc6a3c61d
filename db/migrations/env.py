"""Alembic environment for tensevae: the URL comes from the caller or the environment."""

from alembic import context

from db.models import Base
from db.session import database_url, engine

config = context.config
url = config.attributes.get("url") or database_url()

if context.is_offline_mode():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    with engine(url).connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
