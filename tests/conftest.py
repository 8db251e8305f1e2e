"""Shared pytest fixtures."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weights Qwen2-Audio checkpoint folder with tiny shapes (see edgelalm.scaffold)."""
    from edgelalm.scaffold import tiny_checkpoint as build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_qwen2_audio"))
