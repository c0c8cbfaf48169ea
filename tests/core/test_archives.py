"""`prepare` reads archives as streams: each kind prepares the same dataset as its texts unpacked."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zipfile
from pathlib import Path

import pytest

from core.data import DataError, prepare
from tests.conftest import VERSE

TEXTS = {"a.txt": VERSE * 30, "b.md": "Ünïcödé — and emoji 🎭\r\nsecond line without an end"}


def unpacked(tmp_path: Path) -> Path:
    folder = tmp_path / "plain"
    folder.mkdir()
    for name, text in TEXTS.items():
        (folder / name).write_text(text, encoding="utf-8", newline="")
    return folder


def tar_of(path: Path, mode: str, compress_member: bool = False) -> Path:
    with tarfile.open(path, mode) as tar:
        for name, text in TEXTS.items():
            data = text.encode("utf-8")
            if compress_member and name == "b.md":
                name, data = name + ".gz", gzip.compress(data)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("picture.png")  # not text: passed over
        info.size = 3
        tar.addfile(info, io.BytesIO(b"PNG"))
    return path


def zip_of(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in TEXTS.items():
            archive.writestr(name, text.encode("utf-8"))
    return path


def dataset_text(data_dir: str | Path) -> tuple[str, str, str]:
    data_dir = Path(data_dir)
    return tuple(
        (data_dir / f).read_text(encoding="utf-8") for f in ("output_train.txt", "output_val.txt", "vocab.txt")
    )


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "tar.xz", "tar.bz2", "tar, member .gz", "zip"])
def test_an_archive_prepares_the_same_dataset_as_its_texts_unpacked(tmp_path, kind):
    expected = dataset_text(prepare([unpacked(tmp_path)], tmp_path / "from-folder").data_dir)
    if kind == "zip":
        archive = zip_of(tmp_path / "texts.zip")
    else:
        suffix = kind.split(",")[0]
        archive = tar_of(tmp_path / f"texts.{suffix}", "w" + (f":{suffix[4:]}" if "." in suffix else ""),
                         compress_member="member" in kind)  # fmt: skip
    assert dataset_text(prepare([archive], tmp_path / "from-archive").data_dir) == expected


@pytest.mark.parametrize("suffix, compress", [(".gz", gzip.compress), (".xz", lzma.compress), (".bz2", bz2.compress)])
def test_a_compressed_file_prepares_as_its_text(tmp_path, suffix, compress):
    plain = tmp_path / "a.txt"
    plain.write_text(TEXTS["a.txt"], encoding="utf-8")
    packed = tmp_path / f"a.txt{suffix}"
    packed.write_bytes(compress(plain.read_bytes()))
    assert dataset_text(prepare([packed], tmp_path / "p").data_dir) == dataset_text(
        prepare([plain], tmp_path / "t").data_dir
    )


def test_a_folder_of_archives_and_texts_reads_both(tmp_path):
    folder = unpacked(tmp_path)
    zip_of(folder / "more.zip")
    stats = prepare([folder], tmp_path / "d")
    assert len(stats.sources) == 3 and stats.chars > 2 * len(TEXTS["a.txt"])


def test_a_truncated_xz_names_the_file_and_writes_nothing(tmp_path):
    packed = tmp_path / "books.txt.xz"
    packed.write_bytes(lzma.compress((VERSE * 200).encode())[:-200])
    with pytest.raises(DataError, match=r"books\.txt\.xz is corrupt or truncated after [\d,]+ bytes"):
        prepare([packed], tmp_path / "d")
    assert not (tmp_path / "d" / "vocab.txt").exists()


def test_an_archive_without_text_and_a_broken_zip_are_refused(tmp_path):
    empty = tmp_path / "pictures.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("a.png", b"PNG")
    with pytest.raises(DataError, match="holds no text files"):
        prepare([empty], tmp_path / "d")
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="broken.zip is corrupt or truncated"):
        prepare([broken], tmp_path / "d")
