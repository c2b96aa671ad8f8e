"""Artifact metadata, lineage and workflow versions in the shared database.

Blobs live in the artifact blob store (local folder or S3, content-addressed by sha256);
this module keeps what they are: which job and workflow produced them, with which models
and seeds, from which parent artifacts, their C2PA manifest, and the ComfyUI-visible name
(``type/subfolder/filename``) that ``/view`` and ``/history`` use.

An artifact row is written only after its blob is stored, so a failed upload never leaves
a "complete" record pointing at nothing.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, Integer, String, UniqueConstraint, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from serve.stores.jobs import make_engine


class _Base(DeclarativeBase):
    pass


class ArtifactRow(_Base):
    __tablename__ = "artifacts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    blob_key: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)  # output | temp | input
    filename: Mapped[str] = mapped_column(String(512))
    subfolder: Mapped[str] = mapped_column(String(512), default="")
    mime: Mapped[str] = mapped_column(String(64), default="image/png")
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    prompt_id: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    node_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    workflow_hash: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    workflow_ref: Mapped[str | None] = mapped_column(String(256), nullable=True)
    models: Mapped[list] = mapped_column(JSON, default=list)
    seeds: Mapped[list] = mapped_column(JSON, default=list)
    parents: Mapped[list] = mapped_column(JSON, default=list)
    manifest: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    watermark_payload: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    submitted_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("kind", "subfolder", "filename", name="uq_artifact_name"),)


class WorkflowVersionRow(_Base):
    __tablename__ = "workflow_versions"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    workflow: Mapped[dict] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(String(2000), default="")
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class ModelHashRow(_Base):
    """sha256 of a model file or folder, valid while its size and modification time are unchanged."""

    __tablename__ = "model_hashes"

    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    computed_at: Mapped[float] = mapped_column(Float)


@dataclass
class Artifact:
    id: str
    blob_key: str
    kind: str
    filename: str
    subfolder: str
    mime: str
    size_bytes: int
    prompt_id: str | None
    node_id: str | None
    workflow_hash: str | None
    workflow_ref: str | None
    models: list[dict[str, Any]]
    seeds: list[int]
    parents: list[str]
    manifest: dict[str, Any] | None
    watermark_payload: str | None
    submitted_by: str | None
    created_at: float

    @classmethod
    def from_row(cls, r: ArtifactRow) -> "Artifact":
        return cls(r.id, r.blob_key, r.kind, r.filename, r.subfolder, r.mime, r.size_bytes, r.prompt_id, r.node_id,
                   r.workflow_hash, r.workflow_ref, list(r.models or []), list(r.seeds or []), list(r.parents or []),
                   r.manifest, r.watermark_payload, r.submitted_by, r.created_at)

    def public(self) -> dict[str, Any]:
        from urllib.parse import urlencode

        return {
            "id": self.id, "sha256": self.blob_key, "kind": self.kind, "filename": self.filename, "subfolder": self.subfolder,
            "mime": self.mime, "size_bytes": self.size_bytes, "prompt_id": self.prompt_id, "node_id": self.node_id,
            "workflow_hash": self.workflow_hash, "workflow_ref": self.workflow_ref, "models": self.models,
            "seeds": self.seeds, "parents": self.parents, "submitted_by": self.submitted_by, "created_at": self.created_at,
            "url": "/view?" + urlencode({"filename": self.filename, "subfolder": self.subfolder, "type": self.kind}),
        }


@dataclass
class WorkflowVersion:
    name: str
    version: int
    content_hash: str
    workflow: dict[str, Any]
    description: str
    created_at: float

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def new_artifact_id() -> str:
    return "art_" + uuid.uuid4().hex


class RecordStore:
    """Keyword-only interface over artifact and workflow-version rows (``None`` when not found)."""

    def __init__(self, url: str):
        self.engine = make_engine(url)
        _Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    # -- model hashes ---------------------------------------------------------------------
    def get_model_hash(self, *, path: str, size_bytes: int, mtime_ns: int) -> str | None:
        """The recorded sha256 of ``path`` if it was hashed at this size and modification time."""
        with self._session() as s:
            row = s.get(ModelHashRow, path)
            if row is None or row.size_bytes != size_bytes or row.mtime_ns != mtime_ns:
                return None
            return row.sha256

    def put_model_hash(self, *, path: str, size_bytes: int, mtime_ns: int, sha256: str) -> None:
        """Records (or replaces) the sha256 of ``path`` at this size and modification time."""
        with self._session() as s, s.begin():
            s.merge(ModelHashRow(path=path, size_bytes=size_bytes, mtime_ns=mtime_ns, sha256=sha256,
                                 computed_at=time.time()))

    # -- artifacts ------------------------------------------------------------------------
    def add_artifact(self, *, artifact_id: str, blob_key: str, kind: str, filename: str, subfolder: str = "",
                     mime: str = "image/png", size_bytes: int = 0, prompt_id: str | None = None, node_id: str | None = None,
                     workflow_hash: str | None = None, workflow_ref: str | None = None,
                     models: list[dict[str, Any]] | None = None, seeds: list[int] | None = None,
                     parents: list[str] | None = None, manifest: dict[str, Any] | None = None,
                     watermark_payload: str | None = None, submitted_by: str | None = None) -> Artifact:
        """Insert one artifact; raises ``FileExistsError`` when its (kind, subfolder, filename) is taken."""
        row = ArtifactRow(
            id=artifact_id, blob_key=blob_key, kind=kind, filename=filename, subfolder=subfolder, mime=mime,
            size_bytes=size_bytes, prompt_id=prompt_id, node_id=node_id, workflow_hash=workflow_hash,
            workflow_ref=workflow_ref, models=models or [], seeds=seeds or [], parents=parents or [], manifest=manifest,
            watermark_payload=watermark_payload, submitted_by=submitted_by, created_at=time.time(),
        )
        try:
            with self._session() as s, s.begin():
                s.add(row)
        except IntegrityError as exc:
            raise FileExistsError(f"{kind}/{subfolder}/{filename} already exists") from exc
        return Artifact.from_row(row)

    def next_filename(self, *, kind: str, subfolder: str, base: str, suffix: str = ".png") -> str:
        """ComfyUI-style ``base_00001_.png``: one past the highest counter recorded for this prefix."""
        with self._session() as s:
            names = s.execute(select(ArtifactRow.filename).where(
                ArtifactRow.kind == kind, ArtifactRow.subfolder == subfolder,
                ArtifactRow.filename.like(f"{base}\\_%\\_{suffix}", escape="\\"))).scalars().all()
        counter = 0
        for n in names:
            middle = n[len(base) + 1 : -(len(suffix) + 1)]
            if middle.isdigit():
                counter = max(counter, int(middle))
        return f"{base}_{counter + 1:05d}_{suffix}"

    def rename_artifact(self, artifact_id: str, filename: str) -> None:
        with self._session() as s, s.begin():
            row = s.get(ArtifactRow, artifact_id)
            if row is not None:
                row.filename = filename

    def get(self, artifact_id: str) -> Artifact | None:
        with self._session() as s:
            row = s.get(ArtifactRow, artifact_id)
            return Artifact.from_row(row) if row else None

    def by_name(self, *, kind: str, subfolder: str, filename: str) -> Artifact | None:
        with self._session() as s:
            row = s.execute(select(ArtifactRow).where(ArtifactRow.kind == kind, ArtifactRow.subfolder == subfolder,
                                                      ArtifactRow.filename == filename)).scalar()
            return Artifact.from_row(row) if row else None

    def by_blob(self, blob_key: str, *, kind: str | None = None) -> Artifact | None:
        with self._session() as s:
            q = select(ArtifactRow).where(ArtifactRow.blob_key == blob_key)
            if kind:
                q = q.where(ArtifactRow.kind == kind)
            row = s.execute(q.order_by(ArtifactRow.created_at)).scalars().first()
            return Artifact.from_row(row) if row else None

    def by_watermark(self, payload: str) -> Artifact | None:
        with self._session() as s:
            row = s.execute(select(ArtifactRow).where(ArtifactRow.watermark_payload == payload)).scalars().first()
            return Artifact.from_row(row) if row else None

    def children(self, artifact_id: str) -> list[Artifact]:
        with self._session() as s:
            # JSON containment differs per database; filter in Python after a LIKE prefilter.
            rows = s.execute(select(ArtifactRow).where(ArtifactRow.parents.cast(String).like(f"%{artifact_id}%"))).scalars().all()
            return [Artifact.from_row(r) for r in rows if artifact_id in (r.parents or [])]

    def list(self, *, workflow_hash: str | None = None, prompt_id: str | None = None, kind: str | None = None,
             limit: int = 100, offset: int = 0) -> tuple[list[Artifact], int]:
        with self._session() as s:
            conds = []
            if workflow_hash:
                conds.append(ArtifactRow.workflow_hash == workflow_hash)
            if prompt_id:
                conds.append(ArtifactRow.prompt_id == prompt_id)
            if kind:
                conds.append(ArtifactRow.kind == kind)
            total = s.execute(select(func.count()).select_from(ArtifactRow).where(*conds)).scalar_one()
            rows = s.execute(select(ArtifactRow).where(*conds).order_by(ArtifactRow.created_at.desc())
                             .offset(offset).limit(limit)).scalars().all()
            return [Artifact.from_row(r) for r in rows], int(total)

    # -- workflow versions ----------------------------------------------------------------
    def register_workflow(self, *, name: str, workflow: dict[str, Any], content_hash: str, description: str = "",
                          created_by: str | None = None) -> tuple[WorkflowVersion, bool]:
        """Register a version; re-registering identical content returns the existing version (created=False)."""
        for _ in range(5):
            with self._session() as s:
                existing = s.execute(select(WorkflowVersionRow).where(
                    WorkflowVersionRow.name == name, WorkflowVersionRow.content_hash == content_hash)).scalar()
                if existing:
                    return self._wv(existing), False
                latest = s.execute(select(func.max(WorkflowVersionRow.version)).where(WorkflowVersionRow.name == name)).scalar() or 0
                row = WorkflowVersionRow(name=name, version=latest + 1, content_hash=content_hash, workflow=workflow,
                                         description=description, created_at=time.time(), created_by=created_by)
                try:
                    s.add(row)
                    s.commit()
                    return self._wv(row), True
                except IntegrityError:
                    s.rollback()
                    continue  # another replica took that version number; retry
        raise RuntimeError(f"could not register workflow {name!r}: too much contention")

    def get_workflow(self, name: str, version: int | None = None) -> WorkflowVersion | None:
        with self._session() as s:
            q = select(WorkflowVersionRow).where(WorkflowVersionRow.name == name)
            q = q.where(WorkflowVersionRow.version == version) if version is not None else q.order_by(WorkflowVersionRow.version.desc())
            row = s.execute(q).scalars().first()
            return self._wv(row) if row else None

    def list_workflows(self, name: str | None = None) -> list[WorkflowVersion]:
        with self._session() as s:
            q = select(WorkflowVersionRow).order_by(WorkflowVersionRow.name, WorkflowVersionRow.version)
            if name:
                q = q.where(WorkflowVersionRow.name == name)
            return [self._wv(r) for r in s.execute(q).scalars()]

    @staticmethod
    def _wv(r: WorkflowVersionRow) -> WorkflowVersion:
        return WorkflowVersion(r.name, r.version, r.content_hash, r.workflow, r.description, r.created_at)
