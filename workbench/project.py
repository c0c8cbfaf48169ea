"""Where the workbench keeps things, and the checks that keep paths from the page inside them."""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.config import STUDIES_DIR, STUDY_DATABASE
from core.data import DataError, has_dataset
from core.sources import resolve_inputs

UPLOAD_LIMIT_MB = 200
_SAFE_STEM = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Project:
    """The project folder: dataset/, models/, studies/, corpora/ and uploads/ live inside `root`.

    The Dataset tab reads files by path only where corpora belong: corpora/, uploads/ and the
    `allowed_roots` the operator names (`--allow-dir`); never a hidden file or folder, nor `private_files`
    (the login file), so a logged-in user cannot read the project's secrets through a prepare.
    """

    root: Path
    storage: str = ""
    allowed_roots: list[Path] = field(default_factory=list)
    private_files: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.allowed_roots = [Path(p).resolve() for p in self.allowed_roots]
        self.private_files = [Path(p).resolve() for p in self.private_files]
        if not self.storage:
            self.storage = f"sqlite:///{self.root / STUDIES_DIR / STUDY_DATABASE}"

    @property
    def data_dir(self) -> Path:
        return self.root / "dataset"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def uploads_dir(self) -> Path:
        return self.root / "uploads"

    @property
    def corpora_dir(self) -> Path:
        return self.root / "corpora"

    @property
    def input_roots(self) -> list[Path]:
        return [self.corpora_dir.resolve(), self.uploads_dir.resolve(), *self.allowed_roots]

    def has_dataset(self) -> bool:
        return has_dataset(self.data_dir)

    def server_inputs(self, text: str) -> list[Path]:
        """Files named in `text` (one path a line, relative to the project or absolute), checked.

        Every file, after following symlinks, must lie inside corpora/, uploads/ or an allowed root, with no
        hidden part in its path, and must not be a private file (the login file).
        """
        lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
        if not lines:
            raise DataError("give a file or folder path (inside corpora/ or uploads/), one per line")
        files: list[Path] = []
        for line in lines:
            if "\x00" in line:
                raise DataError("a path cannot contain a NUL character")
            path = Path(line).expanduser()
            path = path if path.is_absolute() else self.root / path
            resolved = path.resolve()
            self._check_readable(line, resolved)
            if not resolved.exists():
                raise DataError(f"{line} does not exist (looked for {resolved})")
            for file in resolve_inputs([resolved]):
                real = file.resolve()
                if real != file.absolute() and not self._inside_roots(real):
                    raise DataError(f"{file} points outside the corpus folders (a symlink to {real}); refused")
                self._check_readable(str(file), real)
                files.append(real)
        return files

    def _inside_roots(self, path: Path) -> Path | None:
        return next((root for root in self.input_roots if path.is_relative_to(root)), None)

    def _check_readable(self, shown: str, path: Path) -> None:
        root = self._inside_roots(path)
        if root is None:
            folders = ", ".join(str(r.relative_to(self.root)) + "/" if r.is_relative_to(self.root) else str(r)
                                for r in self.input_roots)  # fmt: skip
            raise DataError(
                f"{shown} is not in a corpus folder; put your text in {folders} (or upload it), or start the "
                "workbench with --allow-dir FOLDER"
            )
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            raise DataError(f"{shown} is a hidden file or inside a hidden folder; refused")
        if path in self.private_files:
            raise DataError(f"{shown} is the workbench's login file; refused")

    def store_uploads(self, paths: list[str], limit_mb: int = UPLOAD_LIMIT_MB) -> dict[Path, str]:
        """Copy uploaded temp files into uploads/ under generated names; refuse empty or oversized ones. Returns
        each stored file with the name it was uploaded as (what the dataset and the card call it)."""
        if not paths:
            raise DataError("no file uploaded; choose one or more UTF-8 text files first")
        total = 0
        for path in paths:
            size = Path(path).stat().st_size
            name = Path(path).name
            if size == 0:
                raise DataError(f"{name} is empty; upload a file with text in it")
            total += size
        if total > limit_mb * 1_000_000:
            raise DataError(f"the upload is {total / 1e6:.0f} MB, over the {limit_mb} MB limit")
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        stored = {}
        for index, path in enumerate(paths):
            stem = _SAFE_STEM.sub("_", Path(path).stem)[:40].strip("._") or "text"
            target = self.uploads_dir / f"{stamp}-{index}-{stem}.txt"
            shutil.copyfile(path, target)
            stored[target] = Path(path).name
        return stored
