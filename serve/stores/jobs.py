"""The shared job store: jobs (queue + history) and events, in SQLite or any SQLAlchemy database.

Every ingress replica talks to the same database, so a prompt accepted by one replica can
be run by another, events reach a websocket held by any replica, and history survives
replica restarts. Accepted work is never lost: ``POST /prompt`` commits the job as
``queued`` before answering; runners claim jobs with a lease and heartbeat; a job whose
lease expires is re-queued (up to ``max_attempts``) or failed with a reason.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    Index,
    Integer,
    String,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

logger = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, INTERRUPTED = "queued", "running", "success", "error", "interrupted"
TERMINAL = (SUCCEEDED, FAILED, INTERRUPTED)


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "jobs"

    prompt_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    prompt: Mapped[dict] = mapped_column(JSON)
    output_ids: Mapped[list] = mapped_column(JSON)
    client_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    extra_data: Mapped[dict] = mapped_column(JSON, default=dict)
    outputs: Mapped[dict] = mapped_column(JSON, default=dict)
    messages: Mapped[list] = mapped_column(JSON, default=list)
    error: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    workflow_hash: Mapped[str] = mapped_column(String(64), index=True, default="")
    submitted_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    interrupt_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    hidden: Mapped[bool] = mapped_column(Boolean, default=False)


class EventRow(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prompt_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    client_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    type: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_events_client", "client_id", "id"),)


class CounterRow(Base):
    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


@dataclass
class Job:
    prompt_id: str
    number: int
    status: str
    prompt: dict[str, Any]
    output_ids: list[str]
    client_id: str | None
    extra_data: dict[str, Any]
    outputs: dict[str, Any]
    messages: list[Any]
    error: dict[str, Any] | None
    workflow_hash: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    interrupt_requested: bool
    lease_owner: str | None
    submitted_by: str | None = None

    @classmethod
    def from_row(cls, row: JobRow) -> "Job":
        return cls(
            row.prompt_id, row.number, row.status, row.prompt, list(row.output_ids or []), row.client_id,
            dict(row.extra_data or {}), dict(row.outputs or {}), list(row.messages or []), row.error,
            row.workflow_hash, row.created_at, row.started_at, row.finished_at, row.attempts,
            row.interrupt_requested, row.lease_owner, row.submitted_by,
        )


@dataclass
class Event:
    id: int
    prompt_id: str | None
    client_id: str | None
    type: str
    data: dict[str, Any]


def make_engine(url: str) -> Engine:
    """An engine with SQLite tuned for several processes (WAL, busy timeout)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_pre_ping=True)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class JobStore:
    """Keyword-only, small interface over the jobs/events tables (``None`` when nothing is found).

    Args:
        url: SQLAlchemy database URL (``sqlite:///path/genserve.db``, ``postgresql://...``).
    """

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        # NOTE: create the prompt counter up front; creating it lazily raced between concurrent
        # first submissions (UNIQUE constraint failed: counters.name).
        try:
            with self._s() as s, s.begin():
                if s.get(CounterRow, "prompt_number") is None:
                    s.add(CounterRow(name="prompt_number", value=0))
        except IntegrityError:
            pass  # another replica created it first

    def _s(self) -> Session:
        return self._session()

    # -- jobs -----------------------------------------------------------------------------
    def create_job(
        self, *, prompt: dict[str, Any], output_ids: list[str], client_id: str | None = None,
        extra_data: dict[str, Any] | None = None, prompt_id: str | None = None, front: bool = False,
        workflow_hash: str = "", submitted_by: str | None = None,
    ) -> Job:
        """Insert a queued job and commit before returning (the accepted-work guarantee)."""
        pid = prompt_id or str(uuid.uuid4())
        with self._s() as s, s.begin():
            s.execute(update(CounterRow).where(CounterRow.name == "prompt_number").values(value=CounterRow.value + 1))
            number = s.execute(select(CounterRow.value).where(CounterRow.name == "prompt_number")).scalar_one()
            if front:
                lowest = s.execute(select(func.min(JobRow.number)).where(JobRow.status == QUEUED)).scalar()
                if lowest is not None:
                    number = lowest - 1
            row = JobRow(
                prompt_id=pid, number=number, status=QUEUED, prompt=prompt, output_ids=output_ids,
                client_id=client_id, extra_data=extra_data or {}, outputs={}, messages=[], error=None,
                workflow_hash=workflow_hash, submitted_by=submitted_by, created_at=time.time(), attempts=0,
                interrupt_requested=False, hidden=False,
            )
            s.add(row)
        return Job.from_row(row)

    def get(self, prompt_id: str) -> Job | None:
        with self._s() as s:
            row = s.get(JobRow, prompt_id)
            return Job.from_row(row) if row and not row.hidden else None

    def claim_next(self, *, owner: str, lease_s: float) -> Job | None:
        """Atomically move the oldest queued job to running under ``owner``'s lease."""
        with self._s() as s:
            for _ in range(5):
                pid = s.execute(
                    select(JobRow.prompt_id).where(JobRow.status == QUEUED).order_by(JobRow.number).limit(1)
                ).scalar()
                if pid is None:
                    return None
                now = time.time()
                res = s.execute(
                    update(JobRow)
                    .where(JobRow.prompt_id == pid, JobRow.status == QUEUED)
                    .values(status=RUNNING, lease_owner=owner, lease_expires=now + lease_s, started_at=now,
                            attempts=JobRow.attempts + 1)
                )
                s.commit()
                if res.rowcount == 1:
                    row = s.get(JobRow, pid)
                    s.refresh(row)
                    return Job.from_row(row)
            return None

    def heartbeat(self, *, prompt_ids: list[str], owner: str, lease_s: float) -> None:
        if not prompt_ids:
            return
        with self._s() as s, s.begin():
            s.execute(
                update(JobRow)
                .where(JobRow.prompt_id.in_(prompt_ids), JobRow.lease_owner == owner, JobRow.status == RUNNING)
                .values(lease_expires=time.time() + lease_s)
            )

    def finish(self, *, prompt_id: str, owner: str | None, status: str, outputs: dict[str, Any] | None = None,
               error: dict[str, Any] | None = None, messages: list[Any] | None = None) -> bool:
        """Record the final state; ``False`` when the lease was lost (another runner owns it now)."""
        with self._s() as s, s.begin():
            conds = [JobRow.prompt_id == prompt_id]
            if owner is not None:
                conds += [JobRow.lease_owner == owner, JobRow.status == RUNNING]
            values: dict[str, Any] = {"status": status, "finished_at": time.time(), "lease_expires": None}
            if outputs is not None:
                values["outputs"] = outputs
            if error is not None:
                values["error"] = error
            if messages is not None:
                values["messages"] = messages
            res = s.execute(update(JobRow).where(*conds).values(**values))
            return res.rowcount == 1

    def reap_expired(self, *, max_attempts: int) -> list[tuple[str, str]]:
        """Re-queue or fail running jobs whose lease expired. Returns ``(prompt_id, new_status)``."""
        now = time.time()
        changed: list[tuple[str, str]] = []
        with self._s() as s, s.begin():
            rows = s.execute(
                select(JobRow).where(JobRow.status == RUNNING, JobRow.lease_expires < now)
            ).scalars().all()
            for row in rows:
                if row.attempts >= max_attempts or row.interrupt_requested:
                    status = INTERRUPTED if row.interrupt_requested else FAILED
                    res = s.execute(update(JobRow).where(JobRow.prompt_id == row.prompt_id, JobRow.status == RUNNING).values(
                        status=status, finished_at=now, lease_expires=None,
                        error={"type": "runner_lost", "message": f"runner {row.lease_owner} stopped responding "
                               f"after {row.attempts} attempt(s); giving up"},
                    ))
                else:
                    status = QUEUED
                    res = s.execute(update(JobRow).where(JobRow.prompt_id == row.prompt_id, JobRow.status == RUNNING).values(
                        status=QUEUED, lease_owner=None, lease_expires=None,
                    ))
                if res.rowcount:
                    changed.append((row.prompt_id, status))
        return changed

    def request_interrupt(self, *, prompt_id: str | None = None) -> list[str]:
        """Flag running job(s) (all running when ``prompt_id`` is None) for interruption."""
        with self._s() as s, s.begin():
            conds = [JobRow.status == RUNNING]
            if prompt_id:
                conds.append(JobRow.prompt_id == prompt_id)
            ids = list(s.execute(select(JobRow.prompt_id).where(*conds)).scalars())
            if ids:
                s.execute(update(JobRow).where(JobRow.prompt_id.in_(ids)).values(interrupt_requested=True))
            return ids

    def interrupt_flags(self, prompt_ids: list[str]) -> set[str]:
        if not prompt_ids:
            return set()
        with self._s() as s:
            return set(s.execute(select(JobRow.prompt_id).where(
                JobRow.prompt_id.in_(prompt_ids), JobRow.interrupt_requested.is_(True))).scalars())

    def cancel_queued(self, *, prompt_ids: list[str] | None = None) -> list[str]:
        """Remove queued (not yet running) jobs: ``None`` clears the whole queue."""
        with self._s() as s, s.begin():
            conds = [JobRow.status == QUEUED]
            if prompt_ids is not None:
                conds.append(JobRow.prompt_id.in_(prompt_ids))
            ids = list(s.execute(select(JobRow.prompt_id).where(*conds)).scalars())
            if ids:
                s.execute(update(JobRow).where(JobRow.prompt_id.in_(ids), JobRow.status == QUEUED).values(
                    status=INTERRUPTED, finished_at=time.time(),
                    error={"type": "cancelled", "message": "removed from the queue before it ran"}))
            return ids

    def queue(self) -> tuple[list[Job], list[Job]]:
        """``(running, pending)`` in execution order."""
        with self._s() as s:
            running = s.execute(select(JobRow).where(JobRow.status == RUNNING).order_by(JobRow.number)).scalars().all()
            pending = s.execute(select(JobRow).where(JobRow.status == QUEUED).order_by(JobRow.number)).scalars().all()
            return [Job.from_row(r) for r in running], [Job.from_row(r) for r in pending]

    def count_queued(self) -> int:
        with self._s() as s:
            return int(s.execute(select(func.count()).select_from(JobRow).where(JobRow.status.in_((QUEUED, RUNNING)))).scalar_one())

    def history(self, *, max_items: int | None = None, offset: int = 0) -> list[Job]:
        """Finished jobs, newest last (ComfyUI order)."""
        with self._s() as s:
            q = select(JobRow).where(JobRow.status.in_(TERMINAL), JobRow.hidden.is_(False)).order_by(JobRow.number.desc())
            if offset:
                q = q.offset(offset)
            if max_items is not None:
                q = q.limit(max_items)
            rows = s.execute(q).scalars().all()
            return [Job.from_row(r) for r in reversed(rows)]

    def hide_history(self, *, prompt_ids: list[str] | None = None) -> int:
        """``POST /history`` delete/clear: hides rows from history; the records (and lineage) are kept."""
        with self._s() as s, s.begin():
            conds = [JobRow.status.in_(TERMINAL)]
            if prompt_ids is not None:
                conds.append(JobRow.prompt_id.in_(prompt_ids))
            return s.execute(update(JobRow).where(*conds).values(hidden=True)).rowcount

    # -- events ---------------------------------------------------------------------------
    def add_event(self, *, type: str, data: dict[str, Any], prompt_id: str | None = None, client_id: str | None = None) -> int:  # noqa: A002
        with self._s() as s, s.begin():
            row = EventRow(prompt_id=prompt_id, client_id=client_id, type=type, data=json.loads(json.dumps(data, default=str)), created_at=time.time())
            s.add(row)
            s.flush()
            return row.id

    def events_since(self, *, after_id: int, client_id: str | None, limit: int = 500) -> list[Event]:
        """Events for ``client_id`` plus broadcasts (``client_id`` NULL), oldest first."""
        with self._s() as s:
            conds = [EventRow.id > after_id]
            if client_id is not None:
                conds.append((EventRow.client_id == client_id) | (EventRow.client_id.is_(None)))
            rows = s.execute(select(EventRow).where(*conds).order_by(EventRow.id).limit(limit)).scalars().all()
            return [Event(r.id, r.prompt_id, r.client_id, r.type, r.data) for r in rows]

    def events_for_prompt(self, prompt_id: str) -> list[Event]:
        with self._s() as s:
            rows = s.execute(select(EventRow).where(EventRow.prompt_id == prompt_id).order_by(EventRow.id)).scalars().all()
            return [Event(r.id, r.prompt_id, r.client_id, r.type, r.data) for r in rows]

    def last_event_id(self) -> int:
        with self._s() as s:
            return int(s.execute(select(func.max(EventRow.id))).scalar() or 0)

    def prune_events(self, *, older_than_s: float = 3600) -> int:
        with self._s() as s, s.begin():
            return s.execute(delete(EventRow).where(EventRow.created_at < time.time() - older_than_s)).rowcount

    def iter_jobs(self, *, workflow_hash: str | None = None) -> Iterator[Job]:
        with self._s() as s:
            q = select(JobRow).order_by(JobRow.number)
            if workflow_hash:
                q = q.where(JobRow.workflow_hash == workflow_hash)
            for row in s.execute(q).scalars():
                yield Job.from_row(row)
