"""Checks of the repository's own files that need neither Azurite nor the stack: the Bicep template, the docs' links,
the client library's generated folding data."""
