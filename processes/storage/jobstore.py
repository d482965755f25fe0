"""The job store (SQLAlchemy Core): SQLite in WAL mode by default, PostgreSQL by URL.

The one source of truth of the server: jobs (status, progress, inputs, outputs, the process that
answers for each) and the published layers with their owners (``layers``). Mapfiles,
capabilities, caches and the viewer's lists are derived from these rows and rebuilt from them.

Reads are indexed lookups, so a request costs the same with 10 or 10,000 jobs stored (pygeoapi's
TinyDB manager rereads the whole file on every call). Every call retries a passing outage of the
database (PostgreSQL restarting or failing over, SQLite locked) with backoff for a bounded time
(``retry_s``), so a job waits rather than fails while its store is away.
"""
from __future__ import annotations

import builtins
import json
import logging
import os
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar
from urllib.parse import quote

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    exc,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

if TYPE_CHECKING:
    from aquamask.processes.settings import Settings

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

ACTIVE = ("accepted", "running")
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
    Column("outputs", Text),      # JSON: every output the processor made
    # JSON: how the client asked for the results (outputs, response) and its callbacks
    Column("execution", Text),
    Column("error_status", Integer),  # HTTP status of a failure the user caused
    Column("error_code", String(64)),
    # the process answering for the job now: the web worker that accepted it, then its worker
    Column("pid", Integer),
    Column("pid_start", String(32)),  # the process's start time in /proc: pid reuse told apart
    Column("host", String(255)),
    Column("heartbeat", Float),  # time.time() of the worker's last sign of life, on any host
    Column("runner", String(16)),  # fork, dask or inline: how a dismissal stops it
    Column("owner", String(255)),  # Identity.owner: issuer and subject, or "anonymous"
    # set once the job was handed to an executor: a record never handed over whose web worker
    # died was never acknowledged to anyone and is removed, not failed
    Column("submitted", Boolean, default=False),
    Index("ix_jobs_created", "created"),
    Index("ix_jobs_status", "status"),
    Index("ix_jobs_owner_created", "owner", "created"),
)
# one row per owner, written by every submission: the row (PostgreSQL) or the database (SQLite)
# lock it takes makes "count the active jobs, then insert" atomic per owner
owners = Table(
    "owners", metadata,
    Column("owner", String(255), primary_key=True),
    Column("submissions", Integer, nullable=False, default=0),
)
# the published layers: one row per product (a job's result, or one date of a series)
layers = Table(
    "layers", metadata,
    Column("product_id", String(130), primary_key=True),
    Column("job_id", String(64), nullable=False),
    Column("name", String(160), nullable=False, unique=True),  # WMS layer / WCS coverage id
    Column("owner", String(255)),
    Column("public", Boolean, nullable=False, default=False),
    Column("series", String(160)),   # the time-enabled layer this product is a date of
    Column("datetime", String(40)),  # acquisition time (UTC), for the series' TIME values
    Column("facts", Text, nullable=False),  # JSON: path, grid, CRS, style, title, abstract, bbox
    Column("product", Text),  # JSON: what a retry needs to rebuild the Product
    # where it is served: embedded (MapServer here) or geoserver; pending while GeoServer is
    # retried (served here meanwhile); unpublish-pending while GeoServer still has it
    Column("engine", String(16), nullable=False),
    Column("state", String(24), nullable=False),
    Column("geoserver", Text),  # JSON: GeoServer's store/coverage/mosaic names for it
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("retrier_pid", Integer),
    Column("published", String(40), nullable=False),
    Column("updated", String(40), nullable=False),
    Index("ix_layers_job", "job_id"),
    Index("ix_layers_owner", "owner"),
    Index("ix_layers_series", "series"),
)
# the catalogue's revision: bumped in the transaction of every layer change, so derived files
# (mapfiles, capabilities) know in one indexed read whether they are current
catalogue = Table(
    "catalogue", metadata,
    Column("id", Integer, primary_key=True),
    Column("revision", Integer, nullable=False),
)
JSON_COLUMNS = {"jobs": ("inputs", "outputs", "execution"),
                "layers": ("facts", "product", "geoserver")}
COLUMNS = {c.name for c in jobs.columns}
LAYER_COLUMNS = {c.name for c in layers.columns}


class StoreUnavailable(Exception):
    """The database stayed unreachable for the whole retry window."""


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (every gunicorn worker) go on while a job worker writes progress
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///`` URL, None for other databases or in-memory ones."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url[len(prefix):] in ("", ":memory:"):
        return None
    return url[len(prefix):].split("?", 1)[0]


def _transient(err: exc.DBAPIError) -> bool:
    """A failure that waiting can cure: the server gone or restarting, a lost connection, a
    locked or momentarily missing file. Integrity and programming errors are not."""
    return bool(err.connection_invalidated) or isinstance(err, exc.OperationalError)


_STORES: "weakref.WeakSet[JobStore]" = weakref.WeakSet()


def _close_before_fork() -> None:
    """Close every idle pooled connection before this process forks (gunicorn's master
    forking web workers, a test forking writers): a child must not inherit an open SQLite
    connection, whose close at the child's exit can checkpoint or remove the WAL under the
    parent and corrupt the database. The parent reconnects on its next call."""
    for store in list(_STORES):
        if store._engine is not None and store._pid == os.getpid():
            store._engine.dispose()


os.register_at_fork(before=_close_before_fork)


class JobStore:
    """Jobs, owners' quotas and layers on one database.

    ``create``: make the database and its tables when missing (the server at start; only
    then); a job worker passes False. A SQLite file deleted under a running server is then an
    error every process reports, rather than an empty database one of them silently starts.
    ``retry_s``: how long a call keeps retrying a database that is away."""

    def __init__(self, url: str, *, create: bool = True, retry_s: float = 120.0) -> None:
        self.url = url
        self.create = create
        self.retry_s = retry_s
        self._engine: Engine | None = None
        self._pid = 0
        self.path = sqlite_path(url)
        _STORES.add(self)
        if create and self.path:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._uri = quote(self.path) if self.path else None
        self._retrying(self._create_schema)
        if self.create and self.path:
            # made: from now on a missing file is an error to report, never made again
            self.create = False
            self.engine.dispose()
            self._engine, self._pid = None, 0

    # -- connections ---------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        """This process's engine and its pool of connections (reused: opening a SQLite
        connection and setting its pragmas costs more than a job update). A forked child
        gets an engine of its own, as connections must not cross fork()."""
        if self._pid != os.getpid():
            if self._engine is not None:
                self._engine.dispose(close=False)  # the parent's: left to the parent
            if self.path:
                # mode=rw: never create the file here (see ``create``)
                mode = "rwc" if self.create else "rw"
                self._engine = create_engine(
                    f"sqlite:///file:{self._uri}?mode={mode}&uri=true",
                    pool_size=4, max_overflow=16)
                event.listen(self._engine, "connect", _sqlite_pragmas)
                event.listen(self._engine.pool, "checkout", self._same_file)
            else:
                self._engine = create_engine(self.url, pool_pre_ping=True)
            self._pid = os.getpid()
        return self._engine  # type: ignore[return-value]  # made above for this process

    def _same_file(self, dbapi_connection, record, _proxy) -> None:
        """A pooled SQLite connection still on the file the URL names: one kept open across
        the file's deletion or replacement would write to a file nobody else reads."""
        try:
            now = os.stat(str(self.path)).st_ino
        except FileNotFoundError:
            now = None
        if "inode" not in record.info:
            record.info["inode"] = now
        elif record.info["inode"] != now:
            raise exc.DisconnectionError("the job store file was deleted or replaced")

    def _retrying(self, fn: Callable[[], T]) -> T:
        """``fn()``, retried with backoff while the database is away, up to ``retry_s``."""
        deadline = time.monotonic() + self.retry_s
        delay = 0.25
        while True:
            if self.path and not self.create and not os.path.exists(self.path):
                # nothing to wait for: the server never created it, or it was deleted
                raise StoreUnavailable("the job store's database file is missing")
            try:
                return fn()
            except exc.DBAPIError as err:
                if not _transient(err) or time.monotonic() + delay > deadline:
                    if _transient(err):
                        raise StoreUnavailable(_describe(err)) from err
                    raise
                LOGGER.warning("job store unavailable (%s); retrying in %.1f s",
                               _describe(err), delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _begin(self, work: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self.engine.begin() as conn:
                return work(conn)
        return self._retrying(run)

    def _read(self, work: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self.engine.connect() as conn:
                return work(conn)
        return self._retrying(run)

    def _create_schema(self) -> None:
        """Create the tables, or add the columns a store written by an older release lacks.
        SQLAlchemy has no migrations of its own and a few nullable columns do not call for
        Alembic. Several processes may start at once: a lost creation race is retried."""
        for attempt in range(3):
            try:
                metadata.create_all(self.engine, checkfirst=True)
                found = inspect(self.engine)
                with self.engine.begin() as conn:
                    for table in (jobs, layers):
                        present = {c["name"] for c in found.get_columns(table.name)}
                        for column in table.columns:
                            if column.name not in present:
                                kind = column.type.compile(self.engine.dialect)
                                conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN "
                                                  f"{column.name} {kind}"))
                        for index in table.indexes:
                            index.create(conn, checkfirst=True)
                    # its one row, by whichever process gets there first (no read, then
                    # write: two processes starting together would both insert)
                    self._insert_if_absent(conn, catalogue, "id", id=1, revision=0)
                return
            except exc.IntegrityError:
                if attempt == 2:
                    raise
            except exc.DBAPIError as err:
                if attempt == 2 or _transient(err) and not self.create:
                    raise

    def check(self) -> str | None:
        """None when the store answers and is the one this server started with, else what is
        wrong, in words without SQL, paths or credentials (for /health)."""
        if self.path and not os.path.exists(self.path):
            return "the job store's database file is missing"
        try:
            with self.engine.connect() as conn:
                conn.execute(select(catalogue.c.revision)).first()
                conn.execute(select(jobs.c.identifier).limit(1)).first()
        except exc.DisconnectionError:
            return "the job store's database file was replaced"
        except exc.DBAPIError as err:
            return f"the job store does not answer ({_describe(err)})"
        return None

    # -- jobs ----------------------------------------------------------------------------------
    @staticmethod
    def _encode(record: dict[str, Any], table: str = "jobs") -> dict[str, Any]:
        names = COLUMNS if table == "jobs" else LAYER_COLUMNS
        row = {k: v for k, v in record.items() if k in names}
        for key in JSON_COLUMNS[table]:
            if key in row and row[key] is not None and not isinstance(row[key], str):
                row[key] = json.dumps(row[key])
        if "status" in row and hasattr(row["status"], "value"):
            row["status"] = row["status"].value
        return row

    @staticmethod
    def _decode(row, table: str = "jobs") -> dict[str, Any]:
        record = dict(row._mapping)
        for key in JSON_COLUMNS[table]:
            if record.get(key):
                record[key] = json.loads(record[key])
        return record

    def add(self, record: dict[str, Any], *, owner_limit: int = 0) -> bool:
        """Insert a job. With ``owner_limit``, only while its owner has fewer active jobs than
        that, atomically (False when refused): concurrent submissions cannot overshoot."""
        row = self._encode(record)
        owner = row.get("owner")

        def work(conn: Connection) -> bool:
            if owner_limit and owner:
                self._lock_owner(conn, owner)
                active = conn.execute(select(func.count()).select_from(jobs).where(
                    jobs.c.owner == owner, jobs.c.status.in_(ACTIVE))).scalar_one()
                if active >= owner_limit:
                    return False
            conn.execute(jobs.insert().values(**row))
            return True
        return self._begin(work)

    def _insert_if_absent(self, conn: Connection, table: Table, key: str,
                          **values: Any) -> None:
        """``values`` as a row of ``table`` unless one with its ``key`` exists: race-free on
        SQLite and PostgreSQL (ON CONFLICT DO NOTHING), read then write elsewhere."""
        insert = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}.get(
            self.engine.dialect.name)
        if insert is not None:
            conn.execute(insert(table).values(**values)  # both dialects'
                         .on_conflict_do_nothing(index_elements=[key]))  # type: ignore
        elif conn.execute(select(table.c[key]).where(table.c[key] == values[key])).first() \
                is None:
            conn.execute(table.insert().values(**values))

    def _lock_owner(self, conn: Connection, owner: str) -> None:
        """Write the owner's row: its lock serialises this owner's submissions until commit."""
        self._insert_if_absent(conn, owners, "owner", owner=owner, submissions=0)
        conn.execute(update(owners).where(owners.c.owner == owner)
                     .values(submissions=owners.c.submissions + 1))

    def update(self, job_id: str, changes: dict[str, Any], *,
               only_if_status: tuple[str, ...] | None = None) -> bool:
        """Apply ``changes``; with ``only_if_status`` only while the job is in one of those
        states (so a late progress write cannot resurrect a dismissed or failed job)."""
        query = jobs.update().where(jobs.c.identifier == job_id)
        if only_if_status:
            query = query.where(jobs.c.status.in_(only_if_status))
        values = self._encode(changes)
        return self._begin(lambda conn: conn.execute(query.values(**values)).rowcount > 0)

    def get(self, job_id: str) -> dict[str, Any] | None:
        row = self._read(lambda conn: conn.execute(
            select(jobs).where(jobs.c.identifier == job_id)).first())
        return self._decode(row) if row else None

    def list(self, limit: int | None = None, offset: int | None = None,
             status: str | Iterable[str] | None = None, owner: str | None = None,
             process_id: str | Iterable[str] | None = None
             ) -> tuple[builtins.list[dict[str, Any]], int]:
        query = select(jobs).order_by(jobs.c.created.desc(), jobs.c.identifier)
        count = select(func.count()).select_from(jobs)
        conditions: builtins.list[Any] = []
        if status:
            conditions.append(jobs.c.status.in_([status] if isinstance(status, str)
                                                else list(status)))
        if owner is not None:
            conditions.append(jobs.c.owner == owner)
        if process_id:
            conditions.append(jobs.c.process_id.in_([process_id] if isinstance(process_id, str)
                                                    else list(process_id)))
        if conditions:
            query, count = query.where(*conditions), count.where(*conditions)

        def work(conn: Connection):
            rows = conn.execute(query.limit(limit).offset(offset or 0)).all()
            return rows, conn.execute(count).scalar_one()
        rows, total = self._read(work)
        return [self._decode(r) for r in rows], total

    def active(self, owner: str | None = None) -> builtins.list[dict[str, Any]]:
        query = select(jobs).where(jobs.c.status.in_(ACTIVE))
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        return [self._decode(r) for r in self._read(lambda conn: conn.execute(query).all())]

    def count_by_status(self) -> dict[str, int]:
        query = select(jobs.c.status, func.count()).group_by(jobs.c.status)
        return self._read(lambda conn: {status: n for status, n in conn.execute(query).all()})

    def delete(self, job_id: str) -> bool:
        return self._begin(lambda conn: conn.execute(
            jobs.delete().where(jobs.c.identifier == job_id)).rowcount > 0)

    # -- layers --------------------------------------------------------------------------------
    def revision(self) -> int:
        """The catalogue's revision: changes with every layer added, changed or removed."""
        return self._read(lambda conn: conn.execute(
            select(catalogue.c.revision).where(catalogue.c.id == 1)).scalar_one())

    @staticmethod
    def _bump(conn: Connection) -> None:
        conn.execute(update(catalogue).where(catalogue.c.id == 1)
                     .values(revision=catalogue.c.revision + 1))

    def put_layer(self, row: dict[str, Any]) -> None:
        """Insert or replace the layer of ``row["product_id"]``, in one transaction."""
        values = self._encode(row, "layers")

        def work(conn: Connection) -> None:
            done = conn.execute(layers.update().where(
                layers.c.product_id == values["product_id"]).values(**values)).rowcount
            if not done:
                conn.execute(layers.insert().values(**values))
            self._bump(conn)
        self._begin(work)

    def update_layer(self, product_id: str, changes: dict[str, Any], *,
                     only_if_state: tuple[str, ...] | None = None) -> bool:
        query = layers.update().where(layers.c.product_id == product_id)
        if only_if_state:
            query = query.where(layers.c.state.in_(only_if_state))
        values = self._encode(changes, "layers")

        def work(conn: Connection) -> bool:
            done = conn.execute(query.values(**values)).rowcount > 0
            if done:
                self._bump(conn)
            return done
        return self._begin(work)

    def delete_layer(self, product_id: str) -> bool:
        def work(conn: Connection) -> bool:
            done = conn.execute(layers.delete().where(
                layers.c.product_id == product_id)).rowcount > 0
            if done:
                self._bump(conn)
            return done
        return self._begin(work)

    def layer(self, product_id: str) -> dict[str, Any] | None:
        row = self._read(lambda conn: conn.execute(
            select(layers).where(layers.c.product_id == product_id)).first())
        return self._decode(row, "layers") if row else None

    def layer_named(self, name: str) -> dict[str, Any] | None:
        row = self._read(lambda conn: conn.execute(
            select(layers).where(layers.c.name == name)).first())
        return self._decode(row, "layers") if row else None

    def layers(self, *, job_id: str | None = None, series: str | None = None,
               names: Iterable[str] | None = None, engine: str | None = None
               ) -> builtins.list[dict[str, Any]]:
        """Layers, oldest first, optionally of one job, one series or with these names."""
        query = select(layers).order_by(layers.c.published, layers.c.product_id)
        if job_id is not None:
            query = query.where(layers.c.job_id == job_id)
        if series is not None:
            query = query.where(layers.c.series == series)
        if names is not None:
            query = query.where(layers.c.name.in_(list(names)))
        if engine is not None:
            query = query.where(layers.c.engine == engine)
        rows = self._read(lambda conn: conn.execute(query).all())
        return [self._decode(r, "layers") for r in rows]

    def visible_layers(self, owner: str | None, *, everyone: bool = False
                       ) -> tuple[int, builtins.list[dict[str, Any]]]:
        """The catalogue's revision and the layers ``owner`` may see (its own and the public
        ones; all with ``everyone``), read in one transaction."""
        query = select(layers).order_by(layers.c.published, layers.c.product_id)
        if not everyone:
            query = query.where(layers.c.public.is_(True) if owner is None
                                else (layers.c.public.is_(True)) | (layers.c.owner == owner))

        def work(conn: Connection):
            revision = conn.execute(select(catalogue.c.revision)
                                    .where(catalogue.c.id == 1)).scalar_one()
            return revision, conn.execute(query).all()
        revision, rows = self._read(work)
        return revision, [self._decode(r, "layers") for r in rows]


def _describe(err: exc.DBAPIError) -> str:
    """The database's complaint without the statement or its parameters (never SQL)."""
    original = getattr(err, "orig", None) or err
    text_ = str(original).strip().splitlines()[0] if str(original).strip() else ""
    return f"{type(original).__name__}: {text_}"[:200]


_BY_URL: dict[tuple[str, float], JobStore] = {}


def job_store(settings: "Settings") -> JobStore:
    """The job store of ``settings`` (``jobs.database``), one per process and database (it
    reconnects after a fork). It never creates a missing SQLite file: the server does that
    when it starts."""
    key = (settings.database_url, settings.jobs.store_retry_s)
    store = _BY_URL.get(key)
    if store is None:
        store = _BY_URL[key] = JobStore(key[0], create=False, retry_s=key[1])
    return store
