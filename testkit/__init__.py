"""Helpers shared by the tests and the benchmarks: Azurite, the app's functions as the host calls them, stand-ins."""
