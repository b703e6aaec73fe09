"""Tests of publishing a day: staging directories, swapping in, and removing stale staging."""

from pipeline.publish import remove_stale_staging, staging_dir, swap_in

DATE = "2026-01-01"


def test_stale_staging_of_the_day_is_removed_and_nothing_else(tmp_path):
    stale = [staging_dir(str(tmp_path), DATE) for _ in range(2)]
    (tmp_path / stale[0].rsplit("/", 1)[-1] / "part-00000.tfrecord.gz").write_bytes(b"x")
    mine = staging_dir(str(tmp_path), DATE)
    other_day = staging_dir(str(tmp_path), "2026-01-02")
    published = tmp_path / f"dt={DATE}"
    published.mkdir()
    (published / "_MANIFEST.json").write_text("{}")
    (tmp_path / f".dt={DATE}.tmp").mkdir()  # not a staging name: no "-<id>"

    removed = remove_stale_staging(str(tmp_path), DATE, keep=[mine])

    assert removed == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [mine.rsplit("/", 1)[-1], other_day.rsplit("/", 1)[-1], f"dt={DATE}", f".dt={DATE}.tmp"])
    assert (published / "_MANIFEST.json").exists()
    assert remove_stale_staging(str(tmp_path), DATE, keep=[mine]) == []


def test_nothing_to_remove_under_a_missing_root(tmp_path):
    assert remove_stale_staging(str(tmp_path / "never-written"), DATE) == []


def test_swap_in_replaces_the_day(tmp_path):
    old = tmp_path / f"dt={DATE}"
    old.mkdir()
    (old / "_MANIFEST.json").write_text("{}")
    (old / "part-old").write_text("old")
    staged = staging_dir(str(tmp_path), DATE)
    (tmp_path / staged.rsplit("/", 1)[-1] / "part-new").write_text("new")
    swap_in(staged, str(old))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"dt={DATE}"]
    assert sorted(p.name for p in old.iterdir()) == ["part-new"]
