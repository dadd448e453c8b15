"""The shipped organism: loads offline through the standard path, and reproduces its manifest."""

from __future__ import annotations

import json
import time

import pytest

from lalm_interp.known import first_token_scores, known_scorer
from lalm_interp.organism.recipe import Recipe


def test_loads_offline_quickly_through_the_standard_path(monkeypatch):
    from transformers import PreTrainedTokenizerFast, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor, \
        WhisperFeatureExtractor

    from lalm_interp import load
    from lalm_interp.loading import NAMED
    from lalm_interp.organism.export import size_bytes

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    model, processor, adapter = load("organism")
    assert time.time() - t0 < 15
    assert isinstance(model, Qwen2AudioForConditionalGeneration)
    assert isinstance(processor, Qwen2AudioProcessor)
    assert isinstance(processor.feature_extractor, WhisperFeatureExtractor)
    assert isinstance(processor.tokenizer, PreTrainedTokenizerFast)
    for t in ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"):
        assert processor.tokenizer.convert_tokens_to_ids(t) != processor.tokenizer.unk_token_id
    assert processor.chat_template  # the real chat-template path, not the plain format
    ac, tc = model.config.audio_config, model.config.text_config
    assert ac.encoder_layers >= 6 and tc.num_hidden_layers >= 6
    assert 64 <= ac.d_model <= 128 and 64 <= tc.hidden_size <= 128
    # the mel length the processor makes is exactly what the encoder needs
    assert processor.feature_extractor.nb_max_frames == 2 * ac.max_source_positions
    assert adapter.n_layers("audio") == ac.encoder_layers
    assert size_bytes(NAMED["organism"]) <= 10 * 2**20


def test_manifest_records_provenance(manifest):
    r = Recipe.from_json(manifest["recipe"])
    assert manifest["seed"] == r.seed
    assert len(manifest["data"]["fact_ids"]) >= 100
    assert set(manifest["data"]["train_renditions"]) == set(r.train_renditions)
    assert not set(r.train_renditions) & set(r.heldout_renditions)
    for key in ("train_edit", "train_neighbourhood", "paraphrase", "heldout_edit", "corruption"):
        assert key in manifest["metrics"]
    assert manifest["git_commit"]
    json.dumps(manifest)


def test_reproduces_the_manifest_on_its_fixed_subset(organism, manifest, subset_items):
    model, processor, adapter = organism
    r = Recipe.from_json(manifest["recipe"])
    s = first_token_scores(model, processor, adapter, subset_items, instruction=r.instruction)
    exp = manifest["eval_subset_expected"]
    assert len(s.correct) == len(exp["correct"]) >= 30
    # identical audio (bit-exact TTS) and weights: only float nondeterminism may differ
    assert sum(s.correct) == pytest.approx(sum(exp["correct"]), abs=1)
    assert max(abs(a - b) for a, b in zip(s.p_true, exp["p_true"])) < 0.02
    roles = [e["role"] for e in manifest["eval_subset"]]
    known = [ok for ok, role in zip(s.correct, roles) if role == "known"]
    assert len(known) == 20 and all(known)


def test_known_scorer_drives_filter_known(organism, manifest, subset_items):
    from lalm_interp.bench.select import filter_known

    model, processor, adapter = organism
    r = Recipe.from_json(manifest["recipe"])
    kf = filter_known(subset_items, known_scorer(model, processor, adapter, instruction=r.instruction),
                      forms=("prompt",), batch_size=16)
    roles = {e["item_id"]: e["role"] for e in manifest["eval_subset"]}
    for item_id, ok in kf.per_item.items():
        if roles[item_id] == "known":
            assert ok
        if roles[item_id] == "unknown":
            assert not ok


def test_cli_eval_subset_prints_json(organism_work, subset_items, capsys):
    from lalm_interp.apps.cli import main

    assert main(["organism", "eval", "--subset", "--work", str(organism_work)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["subset"]["n"] == len(subset_items)
    assert out["subset"]["top1"] == pytest.approx(out["subset"]["manifest_top1"], abs=1.5 / len(subset_items))
