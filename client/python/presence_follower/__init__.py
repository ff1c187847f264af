"""The Python presence follower's modules: names (the server's name rules), presence (the map), connection (SignalR)."""
