"""The OpenAI-compatible HTTP server over the engine: protocol (fields, errors, shapes) -> limits (what a client
may send: sizes, queue depth, API key, timeouts) -> schema (the request bodies for OpenAPI) -> middleware (body
limit, API key) -> async_engine (the engine on its thread) -> app (FastAPI routes) -> prom (Prometheus metrics)
-> connections (uvicorn's h11 with a request-head timeout and a keep-alive limit) -> serve (build and run)."""
