"""A local Azure SignalR Service emulator (serverless mode) for development and end-to-end tests."""
