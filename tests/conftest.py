"""Test-wide settings. Hypothesis: no per-example deadline (these 2-core machines are shared; a
deadline measures the machine's load, not the code)."""

from hypothesis import settings

settings.register_profile("mu", deadline=None)
settings.load_profile("mu")
