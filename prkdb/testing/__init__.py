"""Test support shared by the test suite and scripts (no runtime code depends on it)."""
