"""Database engine, sessions and migrations (alembic is the only way tables are made)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from hiprouter import fileperms
from hiprouter.resources import alembic_dir


def utcnow() -> datetime:
    """Timezone-aware now in UTC (all stored times are UTC)."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite drops tzinfo on read; treat naive stored times as UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def dialect_insert(dialect: str) -> Any:
    """The `insert` construct with ON CONFLICT support of a dialect (PostgreSQL or SQLite)."""
    return pg_insert if dialect == "postgresql" else sqlite_insert


def redact_url(url: str) -> str:
    """The database URL without its password, for status output and logs."""
    return make_url(url).render_as_string(hide_password=True)


def prepare_sqlite_file(url: str) -> None:
    """Create a SQLite database's folder and file with the service's modes before SQLite
    does (it would follow the umask), and put the modes of an existing file and its
    -wal/-shm right (SQLite gives those the database file's mode)."""
    if not url.startswith("sqlite"):
        return
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    db_file = Path(path)
    fileperms.make_dirs(db_file.parent)
    try:
        os.close(os.open(db_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, fileperms.file_mode()))
    except FileExistsError:
        pass
    for file in (db_file, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        try:
            fileperms.secure(file)
        except FileNotFoundError:
            continue
        except PermissionError:  # not ours (a read-only `status` of another user's file)
            continue


def make_engine(url: str, wait_s: float | None = None) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and foreign keys.

    `wait_s` bounds how long a statement waits for a lock held by another process (SQLite
    busy timeout, PostgreSQL lock_timeout) and for the connection; default: 30 s on SQLite,
    no lock timeout on PostgreSQL (whose connection attempt gives up after 10 s).
    """
    busy_ms = int((wait_s if wait_s is not None else 30.0) * 1000)
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            fileperms.make_dirs(Path(path).parent)
        engine = create_engine(
            url, connect_args={"timeout": busy_ms / 1000, "check_same_thread": False},
            pool_pre_ping=True,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # Let SQLAlchemy's BEGIN be the one pysqlite would emit lazily, so
            # "BEGIN IMMEDIATE" can be issued explicitly where a writer lock is needed.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            immediate = conn.get_execution_options().get("sqlite_immediate")
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        connect_args["connect_timeout"] = max(1, int(wait_s)) if wait_s is not None else 10
        if wait_s is not None:
            connect_args["options"] = f"-c lock_timeout={busy_ms}"
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20,
                         connect_args=connect_args)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def write_transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session in one transaction that holds the write lock from its start on SQLite.

    On SQLite this serialises writers (BEGIN IMMEDIATE), which is what makes
    read-then-update claims safe; on PostgreSQL it is a normal transaction and
    callers use SELECT ... FOR UPDATE SKIP LOCKED. Commits on success.
    """
    with factory() as session:
        session.connection(execution_options={"sqlite_immediate": True})
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(alembic_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "heads") -> None:
    """Run alembic migrations up to `revision` (all heads by default)."""
    from alembic import command

    prepare_sqlite_file(url)
    command.upgrade(alembic_config(url), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
