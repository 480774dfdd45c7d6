"""Endpoints: anything that answers a list of chat messages (HTTP servers, local models, task generators)."""
