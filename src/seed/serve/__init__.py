"""`seed serve`: the student behind an OpenAI-compatible API with a chat page."""
