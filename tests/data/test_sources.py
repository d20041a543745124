"""Sources: labels from folders, split folders, zips (never extracted) and CSVs."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from conveyor.data.sources import open_source
from conveyor.errors import SourceError
from tests.helpers import png_bytes, write


def listing(path: Path, **kwargs: object) -> list[tuple[str, str | None, str | None, tuple[str, str] | None]]:
    source = open_source(path, **kwargs)  # type: ignore[arg-type]
    return [(f.relpath, f.label, f.given_split, f.problem and f.problem[0]) for f in source.files]


def test_class_per_folder_tree(tmp_path: Path) -> None:
    write(tmp_path / "yes" / "a.png", png_bytes())
    write(tmp_path / "no" / "series 1" / "b.png", png_bytes())
    assert listing(tmp_path) == [("no/series 1/b.png", "no", None, None), ("yes/a.png", "yes", None, None)]


@pytest.mark.parametrize(("train", "test"), [("train", "test"), ("Training", "Testing"), ("TRAIN", "Test")])
def test_split_folders_in_any_capitalisation(tmp_path: Path, train: str, test: str) -> None:
    write(tmp_path / train / "glioma" / "a.png", png_bytes())
    write(tmp_path / test / "glioma" / "b.png", png_bytes())
    assert sorted((label, split) for _, label, split, _ in listing(tmp_path)) == [
        ("glioma", "test"),
        ("glioma", "train"),
    ]


def test_file_outside_a_class_folder_has_no_label(tmp_path: Path) -> None:
    write(tmp_path / "stray.png", png_bytes())
    write(tmp_path / "train" / "stray2.png", png_bytes())
    assert [(p, problem) for p, _, _, problem in listing(tmp_path)] == [
        ("stray.png", "no_label"),
        ("train/stray2.png", "no_label"),
    ]


def test_zip_with_a_wrapping_folder_is_looked_through(tmp_path: Path) -> None:
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("brain_set/yes/a.png", png_bytes())
        zf.writestr("brain_set/no/b.png", png_bytes(seed=1))
    source = open_source(archive)
    assert [(f.relpath, f.label) for f in source.files] == [("no/b.png", "no"), ("yes/a.png", "yes")]
    assert source.files[1].read() == png_bytes()
    source.close()


def test_zip_member_escaping_the_root_is_unsafe(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("yes/../../etc/evil.png", png_bytes())
        zf.writestr("yes/ok.png", png_bytes(seed=1))
    files = open_source(archive).files
    assert [(f.relpath, f.problem and f.problem[0]) for f in files] == [
        ("yes/../../etc/evil.png", "unsafe_path"),
        ("yes/ok.png", None),
    ]
    assert not (tmp_path.parent / "etc").exists()


def test_labels_csv_gives_labels_and_splits(tmp_path: Path) -> None:
    write(tmp_path / "images" / "a.png", png_bytes())
    write(tmp_path / "images" / "b.png", png_bytes(seed=1))
    write(tmp_path / "images" / "c.png", png_bytes(seed=2))
    csv_path = write(tmp_path / "labels.csv", b"path,label,split\nimages/a.png,tumour,test\nimages/b.png,normal,\n")
    source = open_source(tmp_path / "images", labels_csv=None)
    assert source.files[0].problem is not None  # without the CSV, images/ is read as class folders: no label
    rows = listing(tmp_path, labels_csv=csv_path)
    assert rows == [
        ("images/a.png", "tumour", "test", None),
        ("images/b.png", "normal", None, None),
        ("images/c.png", None, None, "no_label"),
    ]


def test_labels_csv_at_the_top_is_used_and_not_ingested(tmp_path: Path) -> None:
    write(tmp_path / "x.png", png_bytes())
    write(tmp_path / "labels.csv", b"path,label\nx.png,normal\nmissing.png,normal\n")
    source = open_source(tmp_path)
    assert [(f.relpath, f.label) for f in source.files] == [("x.png", "normal")]
    assert source.missing == ["missing.png"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"file,class\na.png,x\n", "must name the columns 'path' and 'label'"),
        (b"path,label\na.png,\n", "line 2: both 'path' and 'label' must be filled"),
        (b"path,label,split\na.png,x,holdout\n", "line 2: split 'holdout' is not one of train, test"),
        (b"path,label\na.png,x\na.png,y\n", "line 3: a.png is listed twice"),
        (b"path,label\na.png,x,extra,more\n", "line 2: 4 fields where the header has 2"),
        (b"path,label\na.png,caf\xe9\n", "the labels file is not UTF-8 \\(byte 20 is 0xe9\\); save it as UTF-8"),
    ],
)
def test_malformed_labels_csv_says_what_and_where(tmp_path: Path, content: bytes, message: str) -> None:
    csv_path = write(tmp_path / "labels.csv", content)
    with pytest.raises(SourceError, match=message):
        open_source(tmp_path, labels_csv=csv_path)


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file or folder"):
        open_source(tmp_path / "nope")


def test_a_plain_file_is_not_a_source(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"not a folder or a \.zip archive"):
        open_source(write(tmp_path / "a.png", png_bytes()))


def test_a_missing_labels_file_is_a_clear_error(tmp_path: Path) -> None:
    write(tmp_path / "src" / "a.png", png_bytes())
    with pytest.raises(SourceError, match=f"{tmp_path / 'nope.csv'}: no such labels file"):
        open_source(tmp_path / "src", labels_csv=tmp_path / "nope.csv")


def test_a_quoted_label_with_a_line_break_is_kept_as_written(tmp_path: Path) -> None:
    write(tmp_path / "src" / "a.png", png_bytes())
    csv_path = write(tmp_path / "labels.csv", b'path,label\na.png,"two\nlines"\n')
    assert listing(tmp_path / "src", labels_csv=csv_path) == [("a.png", "two\nlines", None, None)]
