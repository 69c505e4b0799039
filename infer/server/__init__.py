"""The OpenAI-compatible HTTP server over the engine: protocol (fields, errors, shapes) -> async_engine
(the engine on its thread) -> app (FastAPI routes) -> prom (Prometheus metrics) -> serve (build and run)."""
