"""Job records in SQL (SQLAlchemy Core): SQLite in WAL mode by default, PostgreSQL by URL.

One row per job; reads are indexed lookups, so a request costs the same with 10 or 10,000 jobs
stored (pygeoapi's TinyDB manager rereads the whole file on every call).
"""
from __future__ import annotations

import json
import os
from typing import Any

from sqlalchemy import (Column, Float, Index, Integer, MetaData, String, Table, Text,
                        create_engine, event, func, inspect, select, text)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.engine import Engine

metadata = MetaData()
jobs = Table(
    "jobs", metadata,
    Column("identifier", String(64), primary_key=True),
    Column("process_id", String(128), nullable=False),
    Column("type", String(32), nullable=False, default="process"),
    Column("status", String(16), nullable=False),
    Column("message", Text),
    Column("progress", Float, default=0),
    Column("created", String(40)),
    Column("started", String(40)),
    Column("updated", String(40)),
    Column("finished", String(40)),
    Column("location", Text),
    Column("mimetype", String(128)),
    Column("inputs", Text),       # JSON of the execute request's inputs
    Column("outputs", Text),      # JSON results document
    Column("error_status", Integer),  # HTTP status of a failure the user caused
    Column("error_code", String(64)),
    Column("pid", Integer),
    Column("pid_start", String(32)),  # the worker's start time in /proc: pid reuse is told apart
    Column("host", String(255)),
    Column("heartbeat", Float),  # time.time() of the worker's last sign of life, on any host
    Column("runner", String(16)),  # fork, dask or inline: how a dismissal stops it
    Column("owner", String(255)),
    Index("ix_jobs_started", "started"),
    Index("ix_jobs_status", "status"),
    Index("ix_jobs_owner_started", "owner", "started"),
)
JSON_COLUMNS = ("inputs", "outputs")
COLUMNS = {c.name for c in jobs.columns}


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (every gunicorn worker) go on while a job worker writes progress
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class JobStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._pid = 0
        self._create_schema()

    @property
    def engine(self) -> Engine:
        """This process's engine and its pool of connections (reused: opening a SQLite
        connection and setting its pragmas costs more than a job update). A forked child
        gets an engine of its own, as connections must not cross fork()."""
        if self._pid != os.getpid():
            if self._engine is not None:
                self._engine.dispose(close=False)  # the parent's: left to the parent
            if self.url.startswith("sqlite"):
                self._engine = create_engine(self.url, pool_size=4, max_overflow=16)
                event.listen(self._engine, "connect", _sqlite_pragmas)
            else:
                self._engine = create_engine(self.url, pool_pre_ping=True)
            self._pid = os.getpid()
        return self._engine

    def _create_schema(self) -> None:
        """Create the table, or add the columns a store written by an older release lacks.
        SQLAlchemy has no migrations of its own and one nullable column does not call for
        Alembic. Several processes may start at once: a lost creation race is retried."""
        for attempt in range(3):
            try:
                metadata.create_all(self.engine, checkfirst=True)
                present = {c["name"] for c in inspect(self.engine).get_columns("jobs")}
                with self.engine.begin() as conn:
                    for column in jobs.columns:
                        if column.name not in present:
                            kind = column.type.compile(self.engine.dialect)
                            conn.execute(text(f"ALTER TABLE jobs ADD COLUMN {column.name} {kind}"))
                return
            except DBAPIError:
                if attempt == 2:
                    raise

    @staticmethod
    def _encode(record: dict[str, Any]) -> dict[str, Any]:
        row = {k: v for k, v in record.items() if k in COLUMNS}
        for key in JSON_COLUMNS:
            if key in row and row[key] is not None and not isinstance(row[key], str):
                row[key] = json.dumps(row[key])
        if "status" in row and hasattr(row["status"], "value"):
            row["status"] = row["status"].value
        return row

    @staticmethod
    def _decode(row) -> dict[str, Any]:
        record = dict(row._mapping)
        for key in JSON_COLUMNS:
            if record.get(key):
                record[key] = json.loads(record[key])
        return record

    def add(self, record: dict[str, Any]) -> str:
        with self.engine.begin() as conn:
            conn.execute(jobs.insert().values(**self._encode(record)))
        return record["identifier"]

    def update(self, job_id: str, changes: dict[str, Any], *,
               only_if_status: tuple[str, ...] | None = None) -> bool:
        """Apply ``changes``; with ``only_if_status`` only while the job is in one of those
        states (so a late progress write cannot resurrect a dismissed or failed job)."""
        query = jobs.update().where(jobs.c.identifier == job_id)
        if only_if_status:
            query = query.where(jobs.c.status.in_(only_if_status))
        with self.engine.begin() as conn:
            return conn.execute(query.values(**self._encode(changes))).rowcount > 0

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.identifier == job_id)).first()
        return self._decode(row) if row else None

    def list(self, limit: int | None = None, offset: int | None = None,
             status: str | None = None,
             owner: str | None = None) -> tuple[list[dict[str, Any]], int]:
        query = select(jobs).order_by(jobs.c.started.desc())
        count = select(func.count()).select_from(jobs)
        if status:
            query = query.where(jobs.c.status == status)
            count = count.where(jobs.c.status == status)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
            count = count.where(jobs.c.owner == owner)
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit).offset(offset or 0)).all()
            total = conn.execute(count).scalar_one()
        return [self._decode(r) for r in rows], total

    def active(self, owner: str | None = None) -> list[dict[str, Any]]:
        query = select(jobs).where(jobs.c.status.in_(("accepted", "running")))
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [self._decode(r) for r in rows]

    def count_by_status(self) -> dict[str, int]:
        query = select(jobs.c.status, func.count()).group_by(jobs.c.status)
        with self.engine.connect() as conn:
            return {status: n for status, n in conn.execute(query).all()}

    def delete(self, job_id: str) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(jobs.delete().where(jobs.c.identifier == job_id)).rowcount > 0
