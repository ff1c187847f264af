"""Tests against the real Azurite the session starts (tests/conftest.py), some restarting or proxying their own."""
