"""A local host for the function app: serves its HTTP, SignalR and timer triggers without Azure Functions Core Tools."""
