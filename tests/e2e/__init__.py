"""The local stack end to end: the SignalR emulator and the local host as processes (on Azurite), driven by real
`@microsoft/signalr` clients (signalr_driver.mjs), headless Chromium (browser_demo.mjs) or Python clients."""
