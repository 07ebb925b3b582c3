"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from conductor import database
from conductor.models import Base


def test_migrations_match_models(database_url: str) -> None:
    engine = database.make_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
    assert database.current_revision(database_url) is not None


def test_upgrade_is_idempotent(database_url: str) -> None:
    before = database.current_revision(database_url)
    database.upgrade(database_url)
    assert database.current_revision(database_url) == before
