"""Where the workbench keeps things, and the checks that keep paths from the page inside them."""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.data import DataError, resolve_inputs

UPLOAD_LIMIT_MB = 200
_SAFE_STEM = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Project:
    """The project folder: dataset/, models/, studies/ and uploads/ live inside `root`.

    `allowed_roots` are extra folders whose files the Dataset tab may read by path (the project folder
    itself is always allowed, except its own dataset/ output).
    """

    root: Path
    storage: str = ""
    allowed_roots: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.allowed_roots = [Path(p).resolve() for p in self.allowed_roots]
        if not self.storage:
            self.storage = f"sqlite:///{self.root / 'studies' / 'gpt_tuning.db'}"

    @property
    def data_dir(self) -> Path:
        return self.root / "dataset"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def uploads_dir(self) -> Path:
        return self.root / "uploads"

    def has_dataset(self) -> bool:
        return (self.data_dir / "vocab.txt").is_file()

    def server_inputs(self, text: str) -> list[Path]:
        """Files named in `text` (one path a line, relative to the project or absolute), checked.

        Every file, after following symlinks, must lie inside the project folder or an allowed root, and
        outside dataset/ (the output of prepare).
        """
        lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
        if not lines:
            raise DataError("give a file or folder path (relative to the project folder), one per line")
        roots = [self.root, *self.allowed_roots]
        files: list[Path] = []
        for line in lines:
            if "\x00" in line:
                raise DataError("a path cannot contain a NUL character")
            path = Path(line).expanduser()
            path = path if path.is_absolute() else self.root / path
            resolved = path.resolve()
            if not any(resolved.is_relative_to(root) for root in roots):
                raise DataError(f"{line} is outside the project folder ({self.root}); copy it there or upload it")
            if not resolved.exists():
                raise DataError(f"{line} does not exist (looked for {resolved})")
            for file in resolve_inputs([resolved]):
                real = file.resolve()
                if not any(real.is_relative_to(root) for root in roots):
                    raise DataError(f"{file} points outside the project folder (a symlink to {real}); refused")
                if real.is_relative_to(self.data_dir):
                    raise DataError(f"{file} is inside dataset/, the folder prepare writes; choose your source text")
                files.append(real)
        return files

    def store_uploads(self, paths: list[str], limit_mb: int = UPLOAD_LIMIT_MB) -> list[Path]:
        """Copy uploaded temp files into uploads/ under generated names; refuse empty or oversized ones."""
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
        stored = []
        for index, path in enumerate(paths):
            stem = _SAFE_STEM.sub("_", Path(path).stem)[:40].strip("._") or "text"
            target = self.uploads_dir / f"{stamp}-{index}-{stem}.txt"
            shutil.copyfile(path, target)
            stored.append(target)
        return stored
