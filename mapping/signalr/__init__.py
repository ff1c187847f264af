"""SignalR: the trigger's payload, output messages and group actions, who hears a change, the HTTP send contract,
the REST client (liveness, listing) and its tokens. May import: rooms, presence, storage, errors, settings, keys."""
