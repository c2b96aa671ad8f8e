"""The shared agent store: runs and their steps (trajectories), in the same database as the jobs.

Each step is committed as the run progresses (`AgentStore.add_step` also updates the run's
totals in the same transaction), so a crash mid-run leaves every step recorded so far and
totals that match them. Several ingress replicas read the same rows, so a trajectory can be
viewed or streamed from any replica. A run whose runner died stays ``running`` until its
deadline passes; `AgentStore.fail_orphaned_runs` then ends it with status ``error``.

Usage::

    store = AgentStore("sqlite:///data/genserve.db")
    run = store.create_run(profile="default", input="What is 2+2?")
    store.add_step(run_id=run.id, index=0, kind="tool", thought="...", tool="calculator", ...)
    store.finish_run(run_id=run.id, status="succeeded", final_answer="4")
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Index, Integer, String, Text, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from serve.stores.jobs import make_engine

QUEUED, RUNNING = "queued", "running"
ACTIVE = (QUEUED, RUNNING)


class AgentBase(DeclarativeBase):
    pass


class AgentRunRow(AgentBase):
    __tablename__ = "agent_runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    profile: Mapped[str] = mapped_column(String(64), index=True)
    input: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(24), index=True)
    final_answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    profile_snapshot: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    tools: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    steps: Mapped[int] = mapped_column(Integer, default=0)
    tokens_in: Mapped[int] = mapped_column(Integer, default=0)
    tokens_out: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    deadline_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class AgentStepRow(AgentBase):
    __tablename__ = "agent_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64))
    index: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(24))
    thought: Mapped[str] = mapped_column(Text, default="")
    tool: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tool_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    arguments: Mapped[Any] = mapped_column(JSON, nullable=True)
    observation: Mapped[Any] = mapped_column(JSON, nullable=True)
    raw_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    tokens_in: Mapped[int] = mapped_column(Integer, default=0)
    tokens_out: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    llm_latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    tool_latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ux_agent_steps_run_index", "run_id", "index", unique=True),)


@dataclass
class AgentRun:
    id: str
    profile: str
    input: str
    status: str
    final_answer: str | None
    error: dict[str, Any] | None
    model: str | None
    profile_snapshot: dict[str, Any] | None
    tools: dict[str, str] | None
    steps: int
    tokens_in: int
    tokens_out: int
    cost_usd: float
    cancel_requested: bool
    created_at: float
    started_at: float | None
    deadline_at: float | None
    finished_at: float | None

    @classmethod
    def from_row(cls, r: AgentRunRow) -> "AgentRun":
        return cls(r.id, r.profile, r.input, r.status, r.final_answer, r.error, r.model, r.profile_snapshot,
                   r.tools, r.steps or 0, r.tokens_in or 0, r.tokens_out or 0, r.cost_usd or 0.0,
                   bool(r.cancel_requested), r.created_at, r.started_at, r.deadline_at, r.finished_at)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AgentStep:
    run_id: str
    index: int
    kind: str
    thought: str
    tool: str | None
    tool_version: str | None
    arguments: Any
    observation: Any
    raw_text: str | None
    tokens_in: int
    tokens_out: int
    cost_usd: float
    latency_ms: float
    llm_latency_ms: float | None
    tool_latency_ms: float | None
    created_at: float

    @classmethod
    def from_row(cls, r: AgentStepRow) -> "AgentStep":
        return cls(r.run_id, r.index, r.kind, r.thought or "", r.tool, r.tool_version, r.arguments, r.observation,
                   r.raw_text, r.tokens_in or 0, r.tokens_out or 0, r.cost_usd or 0.0, r.latency_ms or 0.0,
                   r.llm_latency_ms, r.tool_latency_ms, r.created_at)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so the database never sees a non-JSON type (tool output is arbitrary)."""
    return None if value is None else json.loads(json.dumps(value, default=str))


class AgentStore:
    """Keyword-only, small interface over the ``agent_runs`` / ``agent_steps`` tables (``None`` when not found).

    Args:
        url: SQLAlchemy database URL; the same one as `serve.stores.jobs.JobStore` (tables don't collide).
    """

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        AgentBase.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def _s(self) -> Session:
        return self._session()

    # -- runs ----------------------------------------------------------------------------------
    def create_run(self, *, profile: str, input: str, run_id: str | None = None, status: str = QUEUED,  # noqa: A002
                   model: str | None = None) -> AgentRun:
        """Insert a run (``queued`` by default) and commit before returning."""
        row = AgentRunRow(id=run_id or uuid.uuid4().hex, profile=profile, input=input, status=status, model=model,
                          steps=0, tokens_in=0, tokens_out=0, cost_usd=0.0, cancel_requested=False,
                          created_at=time.time())
        with self._s() as s, s.begin():
            s.add(row)
        return AgentRun.from_row(row)

    def start_run(self, *, run_id: str, model: str, profile_snapshot: dict[str, Any], tools: dict[str, str],
                  deadline_at: float) -> bool:
        """Mark a queued run running, recording the exact profile and tool versions it runs with."""
        with self._s() as s, s.begin():
            res = s.execute(update(AgentRunRow).where(AgentRunRow.id == run_id, AgentRunRow.status == QUEUED).values(
                status=RUNNING, model=model, profile_snapshot=_jsonable(profile_snapshot), tools=dict(tools),
                started_at=time.time(), deadline_at=deadline_at))
            return res.rowcount == 1

    def get_run(self, run_id: str) -> AgentRun | None:
        with self._s() as s:
            row = s.get(AgentRunRow, run_id)
            return AgentRun.from_row(row) if row else None

    def list_runs(self, *, limit: int = 50, offset: int = 0, status: str | None = None,
                  profile: str | None = None) -> list[AgentRun]:
        """Newest first."""
        with self._s() as s:
            q = select(AgentRunRow)
            if status:
                q = q.where(AgentRunRow.status == status)
            if profile:
                q = q.where(AgentRunRow.profile == profile)
            rows = s.execute(q.order_by(AgentRunRow.created_at.desc()).offset(offset).limit(limit)).scalars().all()
            return [AgentRun.from_row(r) for r in rows]

    def finish_run(self, *, run_id: str, status: str, final_answer: str | None = None,
                   error: dict[str, Any] | None = None) -> bool:
        """Record the final status once; ``False`` when the run is unknown or already finished."""
        with self._s() as s, s.begin():
            res = s.execute(update(AgentRunRow).where(AgentRunRow.id == run_id, AgentRunRow.status.in_(ACTIVE)).values(
                status=status, final_answer=final_answer, error=_jsonable(error), finished_at=time.time()))
            return res.rowcount == 1

    def request_cancel(self, *, run_id: str) -> AgentRun | None:
        """Flag an active run for cancellation (its runner checks the flag between and during steps)."""
        with self._s() as s, s.begin():
            s.execute(update(AgentRunRow).where(AgentRunRow.id == run_id, AgentRunRow.status.in_(ACTIVE))
                      .values(cancel_requested=True))
            row = s.get(AgentRunRow, run_id)
            return AgentRun.from_row(row) if row else None

    def cancel_requested(self, *, run_id: str) -> bool:
        with self._s() as s:
            return bool(s.execute(select(AgentRunRow.cancel_requested).where(AgentRunRow.id == run_id)).scalar())

    def fail_orphaned_runs(self, *, grace_s: float = 30.0, now: float | None = None) -> list[str]:
        """End active runs whose deadline passed ``grace_s`` ago (their runner is gone) with status ``error``."""
        now = time.time() if now is None else now
        with self._s() as s, s.begin():
            ids = list(s.execute(select(AgentRunRow.id).where(
                AgentRunRow.status == RUNNING, AgentRunRow.deadline_at < now - grace_s)).scalars())
            if ids:
                s.execute(update(AgentRunRow).where(AgentRunRow.id.in_(ids), AgentRunRow.status == RUNNING).values(
                    status="error", finished_at=now,
                    error={"type": "runner_lost", "message": "the runner stopped before finishing; steps so far are kept"}))
            return ids

    # -- steps ---------------------------------------------------------------------------------
    def add_step(self, *, run_id: str, index: int, kind: str, thought: str = "", tool: str | None = None,
                 tool_version: str | None = None, arguments: Any = None, observation: Any = None,
                 raw_text: str | None = None, tokens_in: int = 0, tokens_out: int = 0, cost_usd: float = 0.0,
                 latency_ms: float = 0.0, llm_latency_ms: float | None = None,
                 tool_latency_ms: float | None = None) -> AgentStep:
        """Commit one step and add it to the run's totals (one transaction).

        Raises:
            ValueError: a step with this index is already recorded for the run.
        """
        row = AgentStepRow(run_id=run_id, index=index, kind=kind, thought=thought or "", tool=tool,
                           tool_version=tool_version, arguments=_jsonable(arguments), observation=_jsonable(observation),
                           raw_text=raw_text, tokens_in=tokens_in, tokens_out=tokens_out, cost_usd=cost_usd,
                           latency_ms=latency_ms, llm_latency_ms=llm_latency_ms, tool_latency_ms=tool_latency_ms,
                           created_at=time.time())
        try:
            with self._s() as s, s.begin():
                s.add(row)
                s.execute(update(AgentRunRow).where(AgentRunRow.id == run_id).values(
                    steps=AgentRunRow.steps + 1, tokens_in=AgentRunRow.tokens_in + tokens_in,
                    tokens_out=AgentRunRow.tokens_out + tokens_out, cost_usd=AgentRunRow.cost_usd + cost_usd))
        except IntegrityError:
            raise ValueError(f"run {run_id} already has a step {index}") from None
        return AgentStep.from_row(row)

    def steps(self, run_id: str, *, after_index: int = -1) -> list[AgentStep]:
        """The run's steps in order (those with ``index > after_index``)."""
        with self._s() as s:
            rows = s.execute(select(AgentStepRow).where(AgentStepRow.run_id == run_id, AgentStepRow.index > after_index)
                             .order_by(AgentStepRow.index)).scalars().all()
            return [AgentStep.from_row(r) for r in rows]

    def count_runs(self, *, status: str | None = None) -> int:
        with self._s() as s:
            q = select(func.count()).select_from(AgentRunRow)
            if status:
                q = q.where(AgentRunRow.status == status)
            return int(s.execute(q).scalar_one())
