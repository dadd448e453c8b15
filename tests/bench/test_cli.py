"""`lalm-interp bench build` / `show` through the real CLI entry point."""

from lalm_interp.apps.cli import main


def test_build_then_show(tmp_path, capsys):
    out = tmp_path / "b"
    rc = main(["bench", "build", "--source", "known1000", "--limit", "2", "--renditions", "2",
               "--out", str(out), "--workers", "2", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "12 items from 2 facts" in text and "0 rejected" in text
    assert main(["bench", "show", str(out), "-n", "1"]) == 0
    shown = capsys.readouterr().out
    assert "2 facts, 12 items, 0 rejected" in shown
    assert "items per form: prompt 4, relation 4, subject 4" in shown
    assert "subject words (0, 1)" in shown  # "Vinson Massif"


def test_show_of_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "show", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a built benchmark" in err and "docs/errors/benchmark.md" in err
