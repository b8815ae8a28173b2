"""Test-wide settings and fixtures. Hypothesis: no per-example deadline (these 2-core machines are
shared; a deadline measures the machine's load, not the code). ``seed``: a random seed, or
``$TEST_SEED``, printed so that pytest shows it with a failing test."""

import os
import random

import pytest
from hypothesis import settings

settings.register_profile("mu", deadline=None)
settings.load_profile("mu")


@pytest.fixture
def seed() -> int:
    """A random seed (or ``$TEST_SEED``); printed, so pytest shows it with a failing test."""
    value = int(os.environ.get("TEST_SEED", random.randrange(2**32)))
    print(f"seed {value} (rerun with TEST_SEED={value})")
    return value
