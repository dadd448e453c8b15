"""The command line reads like a tool: every (sub)command's ``--help`` has a one-line description
and a runnable example, ``--version`` exists, and libraries' progress bars stay out of normal output."""

import os
import re
import shlex
import subprocess
import sys

import pytest

from lalm_interp.apps.cli import HELP, build_parser, subcommands

PARSER = build_parser()
PATHS = {" ".join(path): sub for path, sub in subcommands(PARSER)}


def test_every_subcommand_is_listed():
    # the ones a user reads about in the README are all there
    for name in ("info", "smoke", "demo", "reproduce", "bench build", "bench show", "trace run", "edit run",
                 "eval table", "stats run", "cache ls", "cache gc", "organism train", "organism eval"):
        assert name in PATHS, name


@pytest.mark.parametrize("path", sorted(PATHS))
def test_help_has_a_one_line_description(path):
    sub = PATHS[path]
    text = sub.format_help()
    desc = (sub.description or "").strip()
    assert desc, f"`lalm-interp {path} --help` has no description"
    first = desc.splitlines()[0]
    assert len(first) > 15 and first in text, f"`lalm-interp {path} --help`: description not shown"


@pytest.mark.parametrize("path", sorted(PATHS))
def test_help_has_an_example_that_parses(path):
    text = PATHS[path].format_help()
    assert "example" in text.lower(), f"`lalm-interp {path} --help` shows no example"
    cmd = re.compile(rf"lalm-interp {re.escape(path)}(\s|$)")
    after = text[text.lower().index("example"):]  # not the usage line
    lines = [ln[cmd.search(ln).start():].split(" && ")[0].strip() for ln in after.splitlines() if cmd.search(ln)]
    assert lines, f"`lalm-interp {path} --help`: no example of 'lalm-interp {path} ...'"
    argv = shlex.split(lines[0])[1:]
    # the example is a real command line for this parser (arguments and choices exist)
    try:
        PARSER.parse_args(argv)
    except SystemExit as err:  # argparse exits on an unknown / missing argument
        pytest.fail(f"example {lines[0]!r} does not parse (exit {err.code})")


def test_help_table_has_no_stale_rows():
    assert set(HELP) <= set(PATHS), sorted(set(HELP) - set(PATHS))


def test_examples_keep_their_line_breaks():
    # RawDescriptionHelpFormatter: the example sits on its own line, not re-wrapped into prose
    text = PATHS["edit run"].format_help()
    i = text.index("example:")
    assert text[i:].splitlines()[1].strip().startswith("lalm-interp edit run")


def test_version():
    import lalm_interp

    r = subprocess.run([sys.executable, "-m", "lalm_interp", "--version"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0
    assert r.stdout.strip() == f"lalm-interp {lalm_interp.__version__}"


def test_top_level_help_lists_version_and_examples():
    text = PARSER.format_help()
    assert "--version" in text and "lalm-interp demo --quick" in text


LOAD = ("import sys; from lalm_interp.apps.cli import quiet_libraries\n"
        "if sys.argv[1] == 'quiet': quiet_libraries()\n"
        "import lalm_interp\n"
        "if sys.argv[1] == 'plain':  # transformers itself, on the organism's folder\n"
        "    from lalm_interp.loading import ASSETS\n"
        "    from transformers import Qwen2AudioForConditionalGeneration as M\n"
        "    M.from_pretrained(ASSETS / 'organism')\n"
        "else:\n"
        "    lalm_interp.load('organism')\n"
        "print('loaded')")


@pytest.mark.parametrize("mode", ["plain", "quiet", "api"])
def test_weight_loading_progress_bar_stays_out(mode, tmp_path):
    """The CLI (quiet) and the Python API (``load``, a local checkpoint) draw no weight-loading bar;
    transformers' own ``from_pretrained`` (plain) does, so the check can fail."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", LOAD, mode], capture_output=True, text=True, timeout=300,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "loaded" in r.stdout
    if mode in ("quiet", "api"):  # every lalm-interp command; lalm_interp.load on a local checkpoint
        assert "Loading weights" not in r.stderr + r.stdout
    else:  # the control: without it, transformers draws the bar (so the check above can fail)
        assert "Loading weights" in r.stderr


RAY_SCRIPT = """
from lalm_interp.executors.ray_executor import RayExecutor

def shard(state, payload):
    print("hello from worker", payload, flush=True)
    return payload * 2

ex = RayExecutor("tiny-random", 1, init={"num_cpus": 1})
try:
    print("result", ex.map(shard, [1]))
finally:
    ex.close()
"""


@pytest.mark.slow
def test_ray_start_keeps_banners_and_worker_logs_out(tmp_path):
    pytest.importorskip("ray")
    script = tmp_path / "ray_quiet.py"
    script.write_text(RAY_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env,
                       cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "result [2]" in r.stdout  # the work ran on the worker
    assert "Started a local Ray instance" not in out  # no INFO banner
    assert "hello from worker" not in out and "(_Worker pid=" not in out  # workers' output not copied
    assert "\x1b[" not in out  # no ANSI colour codes


# ------------------------------------------------------------------ errors suggest the closest name
@pytest.mark.parametrize("site, suggestion", [
    ("txt.layers.1.mlp", "'text.layers.1.mlp'"),
    ("audo.conv2", "'audio.conv2'"),
    ("text.layers.1.mlp@inn", "'in'"),
    ("text.layers.1.mlpdown", "'text.layers.1.mlp.down'"),
    ("text.layers.1.mpl", "'text.layers.1.mlp'"),
    ("audio.layers.0.atn", "'audio.layers.0.attn'"),
    ("text.layers.*.mlp.dwn@in", "'text.layers.*.mlp.down@in'"),
    ("audio.conv3", "'audio.conv2'"),
])
def test_site_errors_suggest_the_closest_valid_site(tiny, site, suggestion):
    from lalm_interp.errors import SiteError
    from lalm_interp.sites import expand

    with pytest.raises(SiteError) as err:
        expand(site, tiny[2])
    msg = str(err.value)
    assert "Did you mean" in msg and suggestion in msg.split("Did you mean")[1], msg
    assert "docs/errors/sites.md" in msg


def test_site_error_without_a_close_name_does_not_guess(tiny):
    from lalm_interp.errors import SiteError
    from lalm_interp.sites import expand

    with pytest.raises(SiteError) as err:
        expand("text.layers.1.zzzzzzzz", tiny[2])
    assert "Did you mean" not in str(err.value) and "text.layers.N.mlp" in str(err.value)


def test_adapter_error_suggests_the_registered_name():
    from lalm_interp import adapters
    from lalm_interp.errors import AdapterError

    with pytest.raises(AdapterError) as err:
        adapters.get("qwen2audio")
    assert "Did you mean 'qwen2_audio'?" in str(err.value) and "docs/errors/adapters.md" in str(err.value)
