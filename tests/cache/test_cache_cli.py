"""`lalm-interp cache ls | show | gc` with --cache."""

from __future__ import annotations

import os

from cache_helpers import make_batch, provenance

from lalm_interp.cache import Store
from lalm_interp.atomic import temp_path
from lalm_interp.apps.cli import main


def test_ls_show_gc(tmp_path, capsys):
    store = Store(tmp_path)
    w = store.writer("e1", provenance=provenance())
    w.write(0, make_batch(0))
    w.write(1, make_batch(1))
    store.key_stats("text.layers.1.mlp.down@in", model="m", corpus="c", compute=lambda: [make_batch(0).values["text.layers.1.mlp"][0]])

    assert main(["cache", "ls", "--cache", str(tmp_path), "--stats"]) == 0
    out = capsys.readouterr().out
    assert "e1/clean: 2 shard(s), 6 example(s)" in out
    assert "text.layers.3.mlp" in out and "audio.layers.1.mlp.down@in" in out
    assert "stats text.layers.1.mlp.down@in model=m corpus=c n=4 d=8" in out

    assert main(["cache", "ls", "text.layers.2:4.mlp", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "text.layers.2.mlp" in out and "text.layers.1.mlp " not in out and "audio" not in out.split("\n", 2)[2]

    assert main(["cache", "show", "text.layers.*.mlp", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "text.layers.*.mlp  example=6 layer=4 position=5 hidden=8  float32" in out
    assert "layers: 0 1 2 3" in out and "model: tiny/qwen2-audio" in out

    assert main(["cache", "show", "text.layers.7.attn", "--cache", str(tmp_path)]) == 2
    assert "matches nothing" in capsys.readouterr().err

    orphan = temp_path(w.path(2))
    orphan = orphan.with_name(orphan.name.replace(f".{os.getpid()}.", ".999999999."))
    orphan.write_bytes(b"x")
    w.path(1).write_bytes(b"broken")
    assert main(["cache", "ls", "--cache", str(tmp_path)]) == 1  # corrupt shard → non-zero
    assert "CORRUPT" in capsys.readouterr().out
    assert main(["cache", "gc", "--cache", str(tmp_path), "--dry-run"]) == 0
    assert "would remove" in capsys.readouterr().out and orphan.exists()
    assert main(["cache", "gc", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 temp file(s) removed, 1 corrupt shard(s)" in out and not orphan.exists()
    assert w.path(0).exists() and w.path(1).exists()  # gc never deletes shard files by itself
