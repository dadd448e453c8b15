"""Object scoring, loading from a local checkpoint, and the CLI."""

import subprocess
import sys

import pytest
import torch

from lalm_interp.errors import LoadError, ScoringError
from lalm_interp.inputs import build_inputs
from lalm_interp.scoring import next_token_logprobs, object_token_ids, score_objects


def test_first_token_matches_next_token_distribution(tiny, clip):
    model, processor, a = tiny
    batch = build_inputs(processor, a, [clip(1.5, 1), clip(2.5, 2)], instruction=["Say", "Complete the sentence."], sample_rate=16000)
    objs = ["Paris", "French"]
    sc = score_objects(model, a, batch, objs)
    lp = next_token_logprobs(model, batch)
    for b, o in enumerate(objs):
        ids = object_token_ids(processor.tokenizer, o)
        assert sc.token_ids[b] == ids
        torch.testing.assert_close(sc.first[b], lp[b, ids[0]], atol=1e-5, rtol=1e-5)


def test_total_is_teacher_forced_sum(tiny, clip):
    model, processor, a = tiny
    batch = build_inputs(processor, a, [clip(1.5, 5)], sample_rate=16000)
    obj = "Metropolitan France"
    sc = score_objects(model, a, batch, [obj])
    ids = sc.token_ids[0]
    assert len(ids) > 1
    # manual: grow the sequence one token at a time (no padding involved)
    total = 0.0
    mi = dict(batch.model_inputs)
    for t in ids:
        with torch.no_grad():
            logits = model(**mi, use_cache=False).logits[0, -1]
        total += torch.log_softmax(logits, -1)[t].item()
        mi["input_ids"] = torch.cat([mi["input_ids"], torch.tensor([[t]])], 1)
        mi["attention_mask"] = torch.cat([mi["attention_mask"], torch.ones(1, 1, dtype=mi["attention_mask"].dtype)], 1)
        mi["position_ids"] = torch.cat([mi["position_ids"], mi["position_ids"][:, -1:] + 1], 1)
    assert sc.total[0].item() == pytest.approx(total, abs=1e-4)
    assert sc.total[0] < sc.first[0]


def test_mixed_object_lengths_in_one_batch(tiny, clip):
    model, processor, a = tiny
    batch = build_inputs(processor, a, [clip(1.5, 1), clip(1.5, 1)], sample_rate=16000)
    both = score_objects(model, a, batch, ["Paris", "Metropolitan France"])
    one = score_objects(model, a, batch.select([1]), ["Metropolitan France"])
    torch.testing.assert_close(both.total[1], one.total[0], atol=1e-4, rtol=1e-4)


def test_leading_space_follows_style(tiny, clip):
    model, processor, a = tiny
    chat = build_inputs(processor, a, [clip(1.0)], sample_rate=16000)
    plain = build_inputs(processor, a, [clip(1.0)], style="plain", sample_rate=16000)
    tok = processor.tokenizer
    assert score_objects(model, a, chat, ["Paris"]).token_ids[0] == tok("Paris", add_special_tokens=False)["input_ids"]
    assert score_objects(model, a, plain, ["Paris"]).token_ids[0] == tok(" Paris", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("obj", ["", "   "])
def test_empty_object_is_a_clear_error(tiny, clip, obj):
    model, processor, a = tiny
    batch = build_inputs(processor, a, [clip(1.0)], sample_rate=16000)
    with pytest.raises(ScoringError, match="empty"):
        score_objects(model, a, batch, [obj])


def test_object_that_tokenizes_to_nothing():
    class NullTok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": []}

    with pytest.raises(ScoringError, match="tokenizes to nothing"):
        object_token_ids(NullTok(), "Paris")


def test_load_local_checkpoint_offline(tiny, tmp_path, clip, monkeypatch):
    import lalm_interp

    model, processor, _ = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m2, p2, a2 = lalm_interp.load(tmp_path)
    assert a2.name == "qwen2_audio" and a2.n_layers("text") == 2
    batch = build_inputs(p2, a2, [clip(1.0)], sample_rate=16000)
    with torch.no_grad():
        torch.testing.assert_close(m2(**batch.model_inputs).logits, model(**batch.model_inputs).logits)


def test_load_errors(tmp_path, monkeypatch):
    import lalm_interp

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LoadError, match="no config.json"):
        lalm_interp.load(tmp_path)
    with pytest.raises(LoadError, match="could not load"):
        lalm_interp.load("Qwen/Qwen2-Audio-7B-Instruct")


def test_cli_help_and_info():
    out = subprocess.run([sys.executable, "-m", "lalm_interp", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "info" in out.stdout
    out = subprocess.run([sys.executable, "-m", "lalm_interp", "info"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "transformers" in out.stdout and "qwen2_audio" in out.stdout and "cache root" in out.stdout
