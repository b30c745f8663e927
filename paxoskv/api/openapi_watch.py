"""OpenAPI entries of the watch endpoints (``api/watch.py``), kept apart from the rest of
the document so that both grow without touching each other."""

from __future__ import annotations

from typing import Any

__all__ = ["LONG_POLL_PARAMETERS", "WATCH_PATH"]

LONG_POLL_PARAMETERS: list[dict[str, Any]] = [
    {"name": "index", "in": "query", "required": False,
     "description": "long-poll: answer as soon as the key's version is above this one (the "
                    "value then is one chosen at that version, not a linearizable read), "
                    "else at the end of `wait` with a linearizable read. The answer's "
                    "X-Paxoskv-Version header (also on a 404) is the next index to pass",
     "schema": {"type": "integer", "minimum": 0}},
    {"name": "wait", "in": "query", "required": False,
     "description": "long-poll: how long to wait, e.g. 30s, 500ms, 2m (default 30s, at most "
                    "5m)",
     "schema": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?(ms|s|m)?$"}},
]

_EVENT = {"type": "object", "required": ["key", "version", "deleted"], "properties": {
    "key": {"type": "string"}, "version": {"type": "integer"},
    "value": {"type": "string", "contentEncoding": "base64",
              "description": "absent when deleted"},
    "deleted": {"type": "boolean"}}}

WATCH_PATH: dict[str, Any] = {"get": {
    "summary": "Watch a key or a prefix: server-sent events",
    "description": (
        "text/event-stream. First `put`/`delete` events for the keys under `prefix` (or "
        "`key`) newer than `since`, then one `synced` event, then an event each time a "
        "version of a watched key is learned as chosen. A key's versions arrive "
        "increasing, each at most once; intermediate versions may be skipped; an event's "
        "value is the one chosen at its version. `error` (e.g. slow_consumer) ends the "
        "stream: reconnect with `since` to resume. Needs read on the prefix or key."),
    "parameters": [
        {"name": "prefix", "in": "query", "schema": {"type": "string"}},
        {"name": "key", "in": "query", "schema": {"type": "string"},
         "description": "watch this one key instead of a prefix"},
        {"name": "since", "in": "query", "schema": {"type": "string"},
         "description": "base64url of the JSON object {key: last version seen}; keys seen "
                        "and since deleted get their delete event"}],
    "responses": {
        "200": {"description": "the event stream; each `data:` line is an Event",
                "content": {"text/event-stream": {"schema": _EVENT}}},
        "400": {"description": "bad prefix, key or since"},
        "503": {"description": "overloaded: too many watchers on this node"}}}}
