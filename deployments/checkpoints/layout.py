"""The models folder: ComfyUI's layout, listing, and safe name resolution.

Workflows name model files relative to a kind folder, exactly as ComfyUI does
(``"sd15/dreamshaper.safetensors"`` inside ``models/checkpoints``). Those names arrive
over HTTP, so :meth:`ModelsDir.resolve` treats them as untrusted: absolute paths, ``..``
components and symlinks that lead outside the models root are rejected before any file
is opened.

Usage::

    models = ModelsDir.from_env()          # $GENSERVE_MODELS_DIR or ./models
    models.ensure()                        # create checkpoints/, controlnet/, ...
    models.list("checkpoints")             # ['genserve-demo-sd15', 'genserve-demo-sd15.safetensors']
    path = models.resolve("checkpoints", "genserve-demo-sd15.safetensors")
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath

from deployments import constants

logger = logging.getLogger(__name__)

#: How many available names an error message lists before eliding the rest.
_MAX_LISTED = 20


class ModelNotFoundError(FileNotFoundError):
    """A model name does not exist in its kind folder.

    Attributes:
        kind: The kind folder searched (``"checkpoints"``, ``"loras"``, ...).
        name: The name that was asked for.
        available: The names that do exist in that folder.
    """

    def __init__(self, kind: str, name: str, available: list[str], folder: Path, hint: str = "") -> None:
        self.kind = kind
        self.name = name
        self.available = list(available)
        self.folder = folder
        if available:
            shown = ", ".join(repr(n) for n in available[:_MAX_LISTED])
            more = f" (and {len(available) - _MAX_LISTED} more)" if len(available) > _MAX_LISTED else ""
            listing = f"Available in {folder}: {shown}{more}."
        else:
            listing = f"{folder} holds no {kind} models."
        demo = (
            " Run `python -m deployments.checkpoints.demo` to create the demo bundle."
            if kind
            in (
                "checkpoints",
                "controlnet",
                "loras",
            )
            else ""
        )
        message = f"{kind} model {name!r} not found. {hint}{listing}{demo}"
        super().__init__(message)


class InvalidModelNameError(ValueError):
    """A model name tries to leave its folder (absolute path, ``..``, escaping symlink)."""


def default_models_dir() -> Path:
    """Returns the models root from ``$GENSERVE_MODELS_DIR``, else ``./models``."""
    return Path(os.environ.get(constants.ENV_MODELS_DIR) or constants.DEFAULT_MODELS_DIR)


def is_weight_file(path: Path, kind: str) -> bool:
    """Whether ``path`` has a weight-file suffix accepted for ``kind``."""
    suffixes = constants.WEIGHT_SUFFIXES + constants.EXTRA_SUFFIXES.get(kind, ())
    return path.name.lower().endswith(suffixes)


def is_diffusers_folder(path: Path, kind: str) -> bool:
    """Whether ``path`` is a diffusers/transformers model folder for ``kind``."""
    marker = constants.DIFFUSERS_MARKERS.get(kind)
    return marker is not None and path.is_dir() and (path / marker).is_file()


class ModelsDir:
    """The models root, laid out like ComfyUI's ``models/`` folder.

    Construct with the root folder (``ModelsDir(Path("models"))``) or from the
    environment (:meth:`from_env`). Nothing is created until :meth:`ensure`.

    Args:
        root (`Path`): The models root; need not exist yet.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()

    @classmethod
    def from_env(cls) -> ModelsDir:
        """Builds a :class:`ModelsDir` for ``$GENSERVE_MODELS_DIR`` (default ``./models``)."""
        return cls(default_models_dir())

    def __repr__(self) -> str:
        return f"ModelsDir({str(self.root)!r})"

    def folder(self, kind: str) -> Path:
        """Returns the folder of one kind.

        Args:
            kind (`str`): One of :data:`deployments.constants.MODEL_KINDS`.

        Returns:
            The folder path (it may not exist yet).

        Raises:
            ValueError: ``kind`` is not a known kind.
        """
        if kind not in constants.MODEL_KINDS:
            raise ValueError(f"Unknown model kind {kind!r}; expected one of {', '.join(constants.MODEL_KINDS)}.")
        return self.root / kind

    def ensure(self) -> ModelsDir:
        """Creates the root and every kind folder (idempotent). Returns ``self``."""
        for kind in constants.MODEL_KINDS:
            self.folder(kind).mkdir(parents=True, exist_ok=True)
        return self

    def list(self, kind: str) -> list[str]:
        """Lists the models of one kind, as names :meth:`resolve` accepts.

        Single files with a weight suffix are listed at any depth (``"sd15/a.safetensors"``);
        a diffusers folder is listed by its own name and not descended into. Hidden entries
        and symlinks leading outside the models root are skipped.

        Args:
            kind (`str`): One of :data:`deployments.constants.MODEL_KINDS`.

        Returns:
            Sorted names with ``/`` separators; empty when the folder does not exist.
        """
        base = self.folder(kind)
        if not base.is_dir():
            return []
        root = self.root.resolve()
        names: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
            current = Path(dirpath)
            if not _inside(current.resolve(), root):
                dirnames[:] = []
                continue
            keep_dirs = []
            for d in sorted(dirnames):
                if d.startswith("."):
                    continue
                sub = current / d
                if not _inside(sub.resolve(), root):
                    continue
                if is_diffusers_folder(sub, kind):
                    names.append(sub.relative_to(base).as_posix())
                else:
                    keep_dirs.append(d)
            dirnames[:] = keep_dirs
            for f in filenames:
                path = current / f
                if f.startswith(".") or not is_weight_file(path, kind):
                    continue
                if _inside(path.resolve(), root):
                    names.append(path.relative_to(base).as_posix())
        return sorted(names)

    def resolve(self, kind: str, name: str) -> Path:
        """Turns a workflow's model name into a path inside the models root.

        Args:
            kind (`str`): One of :data:`deployments.constants.MODEL_KINDS`.
            name (`str`): A name relative to the kind folder, ``/`` (or ``\\``) separated.

        Returns:
            The resolved path: a weight file or a diffusers folder.

        Raises:
            InvalidModelNameError: ``name`` is empty, absolute, contains ``..``, or resolves
                (through symlinks) outside the models root.
            ModelNotFoundError: nothing usable by that name exists; the message lists what
                is available.
        """
        base = self.folder(kind)
        rel = _check_name(name)
        candidate = base.joinpath(*rel.parts)
        resolved = candidate.resolve()
        if not _inside(resolved, self.root.resolve()):
            raise InvalidModelNameError(
                f"{kind} model name {name!r} resolves to {resolved}, outside the models folder "
                f"{self.root.resolve()}; symlinks must stay inside it."
            )
        if resolved.is_file() and is_weight_file(candidate, kind):
            return candidate
        if is_diffusers_folder(resolved, kind):
            return candidate
        hint = ""
        if resolved.is_file():
            hint = f"{candidate} exists but is not a weight file ({', '.join(constants.WEIGHT_SUFFIXES)}). "
        elif resolved.is_dir():
            marker = constants.DIFFUSERS_MARKERS.get(kind, "config.json")
            hint = f"{candidate} is a folder without {marker}, so it is not a diffusers model. "
        raise ModelNotFoundError(kind, name, self.list(kind), base, hint)


def _check_name(name: str) -> PurePosixPath:
    """Validates a model name's syntax and returns it as a relative path."""
    if not isinstance(name, str):
        raise InvalidModelNameError(f"Model name must be a string, got {type(name).__name__}.")
    if not name or not name.strip():
        raise InvalidModelNameError("Model name is empty.")
    if "\x00" in name:
        raise InvalidModelNameError(f"Model name {name!r} contains a NUL byte.")
    # NOTE: ComfyUI on Windows lists sub-folders with backslashes; accept them as separators
    # so such workflows keep working, and so "..\\x" is caught by the ".." check below.
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        raise InvalidModelNameError(f"Model name {name!r} is absolute; use a name relative to the models folder.")
    rel = PurePosixPath(normalized)
    if any(part == ".." for part in rel.parts):
        raise InvalidModelNameError(f"Model name {name!r} contains '..'; names must stay inside the models folder.")
    if not rel.parts or all(part == "." for part in rel.parts):
        raise InvalidModelNameError(f"Model name {name!r} does not name a file.")
    return rel


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)
