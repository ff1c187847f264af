"""Rooms: the member index, joining and leaving, the roster's presence copies, and watching users. May import:
presence, storage, errors, settings, keys."""
