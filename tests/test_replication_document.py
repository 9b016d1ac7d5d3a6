"""scripts/replicate.py's document: sweeps without stores on this machine keep their last section,
with the date it was computed on and what that version's definitions were."""

import importlib.util
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def replicate():
    spec = importlib.util.spec_from_file_location("replicate", REPO / "scripts" / "replicate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_train_keeps_every_section_without_stores(tmp_path, replicate):
    doc = tmp_path / "replication.md"
    shutil.copy(REPO / "docs" / "replication.md", doc)
    before, _, dates = replicate.previous_document(doc)
    assert set(before) == {t for t, _, _ in replicate.PAPER.values()}  # the committed page has every sweep
    replicate.main(["--no-train", "--out", str(tmp_path / "no-runs"), "--doc", str(doc)])
    after, _, dates_after = replicate.previous_document(doc)
    assert set(after) == set(before) and dates_after == dates  # nothing dropped, nothing re-dated
    assert "## Not run yet" not in doc.read_text()
    text = doc.read_text()
    for title, lines in before.items():
        note = next(ln for ln in text.split(f"## {title}\n", 1)[1].splitlines() if ln.startswith("> Not re-run"))
        assert note.startswith(f"> Not re-run since {dates[title]} ")
        # a section with the criterion table was computed unclipped; only older ones say clipped
        unclipped = any("not clipped" in ln for ln in lines)
        assert ("then clipped" in note) is not unclipped, (title, note)
