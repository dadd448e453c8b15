"""Fixtures for the organism tests: the shipped checkpoint and its manifest's evaluation subset,
spoken with espeak-ng (bit-exact, forked) into a temporary folder once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def organism():
    from lalm_interp import load

    return load("organism")


@pytest.fixture(scope="session")
def manifest():
    from lalm_interp.loading import NAMED
    from lalm_interp.organism.export import read_manifest

    m = read_manifest(NAMED["organism"])
    assert m, "the shipped organism has no manifest.json"
    return m


@pytest.fixture(scope="session")
def organism_work(tmp_path_factory):
    return tmp_path_factory.mktemp("organism-work")


@pytest.fixture(scope="session")
def subset_items(manifest, organism_work):
    """The manifest's fixed evaluation subset as benchmark items (audio synthesised here)."""
    from lalm_interp.organism.pipeline import subset_items as speak
    from lalm_interp.organism.recipe import Recipe

    return speak(manifest["eval_subset"], organism_work / "subset", Recipe.from_json(manifest["recipe"]))
