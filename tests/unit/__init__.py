"""Pure logic: no Azurite, no server in another process (in-process aiohttp test servers at most); seconds in all."""
