"""Bad command-line inputs found by an independent audit: each was a traceback (rc 1) or a silent
different behaviour; each is now a clear error (rc 2) naming what was wrong and the fix."""

from __future__ import annotations

import pytest

from lalm_interp.apps.cli import main


@pytest.mark.parametrize("argv", [
    ["trace", "run", "tracing_specs/hidden_audio.py", "--model", "organism", "--bench", "b", "--out", "o", "--limit", "0"],
    ["edit", "run", "--model", "organism", "--bench", "b", "--out", "o", "--limit", "-1"],
    ["bench", "show", "b", "-n", "-1"],
    ["bench", "build", "--limit", "0", "--out", "o"],
    ["bench", "build", "--renditions", "0", "--out", "o"],
    ["edit", "run", "--model", "organism", "--bench", "b", "--out", "o", "--corpus-n", "0"],
    ["stats", "run", "--model", "organism", "--bench", "b", "--site", "text.layers.1", "--corpus-n", "zero"],
    ["reproduce", "table1", "--out", "o", "--k", "-3"],
    ["edit", "run", "--model", "organism", "--bench", "b", "--out", "o", "--workers", "0"],
], ids=["trace-limit-0", "edit-limit-neg", "show-n-neg", "build-limit-0", "renditions-0", "corpus-n-0",
        "corpus-n-word", "reproduce-k-neg", "workers-0"])
def test_counts_must_be_whole_and_positive(argv, capsys):
    """``--limit 0`` meant "no limit" in one command and "one" in another; -1 meant "all but one"."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "at least" in err or "not a whole number" in err


@pytest.mark.parametrize("kv, needle", [
    ("steps=abc", "steps takes an int, got 'abc'"),
    ("steps=2.5", "steps takes an int, got '2.5'"),
    ("steps", "expected KEY=VALUE"),
    ("=3", "expected KEY=VALUE"),
    ("lr=fast", "lr takes a float"),
])
def test_hparam_values_are_type_checked(kv, needle):
    """``--hparam steps=abc`` used to die in the editor's check with a TypeError traceback."""
    from types import SimpleNamespace

    from lalm_interp.apps.cli.edit import make_editor
    from lalm_interp.editors import EditorError

    args = SimpleNamespace(method="rome", site=["text.layers.1"], preset=None, hparam=[kv])
    with pytest.raises(EditorError) as e:
        make_editor(args)
    assert needle in str(e.value) and "docs/usage/evaluation.md" in str(e.value)


def test_trace_facts_file_must_exist(tmp_path, capsys):
    rc = main(["trace", "run", "tracing_specs/hidden_audio.py", "--model", "organism", "--bench", str(tmp_path),
               "--out", str(tmp_path / "o"), "--facts", str(tmp_path / "nope.txt")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_trace_facts_that_is_a_folder(tmp_path, capsys):
    rc = main(["trace", "run", "tracing_specs/hidden_audio.py", "--model", "organism", "--bench", str(tmp_path),
               "--out", str(tmp_path / "o"), "--facts", str(tmp_path)])
    assert rc == 2 and "is a folder, not a file" in capsys.readouterr().err


@pytest.mark.parametrize("root, needle", [("missing", "does not exist"), ("file", "is a file, not a folder")])
@pytest.mark.parametrize("cmd", [["cache", "ls"], ["cache", "gc", "--check"]])
def test_cache_commands_refuse_a_root_that_is_not_a_cache(tmp_path, capsys, root, needle, cmd):
    """A mistyped --cache used to report an empty, clean cache (rc 0)."""
    path = tmp_path / "nope"
    if root == "file":
        path.write_text("x")
    assert main([*cmd, "--cache", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "docs/errors/cache.md" in err


def test_a_corrupt_span_typo_fails_at_the_spec():
    """``Corrupt(span="subjct")`` used to skip every prompt one by one as 'cannot run'."""
    from lalm_interp.specs import Corrupt, SpecError

    with pytest.raises(SpecError, match="Did you mean 'subject'"):
        Corrupt(at="audio.conv2", span="subjct")
