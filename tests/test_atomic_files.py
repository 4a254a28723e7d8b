"""feature_extraction/atomic_files.py: what the importers write is written whole or not at all."""

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("atomic_files", REPO / "feature_extraction" / "atomic_files.py")
atomic_files = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = atomic_files
spec.loader.exec_module(atomic_files)


def test_rows_are_written_with_their_header_and_counted(tmp_path):
    path = tmp_path / "d.inter"
    assert atomic_files.write_rows(str(path), atomic_files.INTER_HEADER, [("u1", "i1", 1.0), ("u1", "i2", 2)]) == 2
    assert path.read_text() == "user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1.0\nu1\ti2\t2\n"


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "d.item"
    atomic_files.write_rows(str(path), atomic_files.ITEM_HEADER, [("i1", "old text")])

    def rows():
        yield "i1", "new text"
        raise KeyboardInterrupt  # killed while writing

    with pytest.raises(KeyboardInterrupt):
        atomic_files.write_rows(str(path), atomic_files.ITEM_HEADER, rows())
    assert path.read_text() == "item_id:token\ttext:token_seq\ni1\told text\n"
    assert [p.name for p in tmp_path.iterdir()] == ["d.item"]


def test_the_prefix_is_the_single_matching_file_or_a_clear_error(tmp_path):
    (tmp_path / "Office.item2index").write_text("")
    assert atomic_files.infer_prefix(str(tmp_path), ".item2index") == "Office"
    (tmp_path / "Games.item2index").write_text("")
    with pytest.raises(atomic_files.SourceFormatError, match=r"exactly one '\*\.item2index'.*Games.*Office.*--prefix"):
        atomic_files.infer_prefix(str(tmp_path), ".item2index")
    with pytest.raises(atomic_files.SourceFormatError, match=r"nowhere\.csv: required file is missing"):
        atomic_files.require(str(tmp_path / "nowhere.csv"))
