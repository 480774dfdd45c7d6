"""Endpoints: anything that answers chat messages (HTTP servers, local models, task generators)."""
