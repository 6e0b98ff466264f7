"""Serving load over HTTP: OpenAI-compatible servers started or reached by the job's parent (server.py)
and the streaming client the measurement protocol drives as an engine (client.py)."""
