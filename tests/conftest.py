"""Shared fixtures. Models are embedded; nothing may reach a hub."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def text_engine():
    from trustgen.engines.generate import load_engine

    return load_engine("tiny-text", "text")


@pytest.fixture(scope="session")
def image_engine():
    from trustgen.engines.generate import load_engine

    return load_engine("tiny-image", "image")
