"""Ollama's native API (``/api/*``) on our port, translated to and from llama-server's
OpenAI routes.

- :mod:`._requests`: Ollama request bodies to OpenAI ones (pure); :mod:`._keep_alive`
  parses ``keep_alive``.
- :mod:`._responses`: OpenAI answers and stream events to Ollama objects (pure).
- :mod:`._stream`: the NDJSON body over the relay of a streamed completion.
- :mod:`._models`: what ``/api/tags``, ``/api/ps`` and ``/api/show`` tell of a model,
  and which alias a model name means.
- :mod:`._pull`: ``/api/pull`` over the server's pull jobs (Hugging Face repos only).
- :mod:`._errors`: Ollama's error shape; a body's booleans and an answer's JSON checked.
- :mod:`._routes`: the handlers, and :func:`._routes.register_ollama_routes`.
- :mod:`._openapi`: their part of the OpenAPI document.
"""
