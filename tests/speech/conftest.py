import pytest

from lalm_interp.speech.espeak import EspeakBackend


@pytest.fixture(scope="session")
def espeak() -> EspeakBackend:
    return EspeakBackend()
