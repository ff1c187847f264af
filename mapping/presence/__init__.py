"""Presence: a user's partition (connection rows, the presence row, memberships), leases, state and versions, the
expiry index, the one write loop, the store, the sweep's step on a user and the grace. May import: storage, errors,
settings, keys."""
