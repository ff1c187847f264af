"""The local stack: the SignalR emulator, the local Functions host, the demo page and the scripts that run them."""
