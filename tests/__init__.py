"""The tests, in folders by what they need: unit/ (nothing), azurite/ (the Azurite the fixtures start), e2e/ (the
local stack: emulator and local host, with real clients), infra/ (the repository's files: Bicep, docs, fold data)."""
