import pytest

from lalm_interp.bench.builder import build
from lalm_interp.bench.datasets import load_facts
from lalm_interp.speech.espeak import EspeakBackend


class CountingBackend:
    """The real espeak-ng backend, counting how many utterances it was asked to synthesise."""

    name = "espeak-ng"

    def __init__(self):
        self.inner = EspeakBackend()
        self.calls = 0

    @property
    def version(self):
        return self.inner.version

    def synthesize(self, text, rendition):
        self.calls += 1
        return self.inner.synthesize(text, rendition)

    def synthesize_many(self, requests, *, workers=2):
        self.calls += len(requests)
        return self.inner.synthesize_many(requests, workers=workers)


@pytest.fixture
def counting_backend():
    return CountingBackend()


@pytest.fixture(scope="session")
def built20(tmp_path_factory):
    """A 20-item benchmark: 4 CounterFact facts × 5 forms × 1 rendition."""
    out = tmp_path_factory.mktemp("bench20")
    facts = load_facts("counterfact", limit=4)
    report = build(facts, out, renditions=1, progress=False, source="counterfact")
    return out, facts, report
