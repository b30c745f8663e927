"""The OpenAPI 3.1 document served at /v1/openapi.json."""

from __future__ import annotations

from typing import Any

from paxoskv import __version__
from paxoskv.api.openapi_watch import LONG_POLL_PARAMETERS, WATCH_PATH

__all__ = ["openapi_document"]


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


_KEY = {"name": "key", "in": "path", "required": True,
        "description": "1-1024 bytes of UTF-8 (slashes allowed; percent-encode others); "
                       "keys starting with U+10FFFF are reserved",
        "schema": {"type": "string", "minLength": 1}}
_IF_MATCH = {"name": "If-Match", "in": "header", "required": False,
             "description": 'compare-and-set: apply only if the current version is this one, '
                            'e.g. "3"', "schema": {"type": "string"}}


_TTL = {"name": "ttl", "in": "query", "required": False,
        "description": "expire the key this long after the write is applied: 30s, 1500ms, "
                       "5m, 2h, 1d or bare seconds (100 ms .. 365 d). It counts on the "
                       "applying node's clock, so a key may expire up to the cluster's clock "
                       "skew early or late (docs/ttl.md). An expired key reads as absent "
                       "(404) and is left out of listings. A write without ttl clears one",
        "schema": {"type": "string", "pattern": "^[0-9]{1,12}(ms|s|m|h|d)?$"}}


_PREFIX = {"name": "prefix", "in": "query", "schema": {"type": "string"},
           "description": "keys starting with this (a token limited to prefixes must pass "
                          "one of them, or a longer one)"}
_CURSOR = {"name": "cursor", "in": "query", "schema": {"type": "string"},
           "description": "the `next` of the previous page"}
_NEXT = {"type": ["string", "null"],
         "description": "cursor of the next page; null at the end (a page may be short, even "
                        "empty, before it)"}


_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "apply at most once: a retry with the same key (on any node) within the "
                   "idempotency window (--idempotency-window, default 24 h) gets the first "
                   "request's outcome, marked Idempotent-Replayed: true. A request is method, "
                   "key, body and If-Match / If-None-Match; the key on another request is 422",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"}}
_IDEMPOTENCY_ERRORS = {
    "409": _error("idempotency_in_progress: the request with this Idempotency-Key is still "
                  "running; Retry-After says when to ask again"),
    "422": _error("idempotency_key_reused: the Idempotency-Key was used for a different "
                  "request (method, key, body or conditions)")}


_AUTH_ERRORS = {
    "401": _error("unauthorized: no bearer token, or one not in the token file (only with "
                  "--auth token; WWW-Authenticate: Bearer is set)"),
    "403": _error("forbidden: the token's role is too low (GET needs read; PUT and DELETE "
                  "need write; a range delete admin) or the key or listing prefix is "
                  "outside its prefixes"),
    "429": _error("rate_limited: the token is over its rate limit on this node (its own "
                  "rate in the token file, else --token-rate-limit); nothing was done. "
                  "Retry-After says in how many seconds to try again")}
_OPEN: list[dict[str, list[str]]] = []
"""``security: []``: the probes and /metrics answer without a token."""


def _with_auth(doc: dict[str, Any]) -> dict[str, Any]:
    """Every /v1/ operation may answer 401, 403 and 429; the others are open."""
    for path, ops in doc["paths"].items():
        for op in ops.values():
            if path.startswith("/v1/"):
                op["responses"].update(_AUTH_ERRORS)
            else:
                op["security"] = _OPEN
    return doc


def openapi_document() -> dict[str, Any]:
    common = {"400": _error("bad key, header or request"),
              "503": _error("no_quorum: no quorum of acceptors reachable, or overloaded: too "
                            "many requests in progress on this node (Retry-After is set)"),
              "504": _error("unknown outcome: the write may or may not have taken effect")}
    return _with_auth({
        "openapi": "3.1.0",
        "info": {"title": "paxoskv", "version": __version__,
                 "description": "Replicated key-value store; every key is a CASPaxos register."},
        "paths": {
            "/v1/kv/{key}": {
                "put": {
                    "summary": "Set, compare-and-set (If-Match) or create (If-None-Match: *)",
                    "parameters": [_KEY, _IF_MATCH, _TTL,
                                   {"name": "If-None-Match", "in": "header", "required": False,
                                    "description": "* = create only if absent",
                                    "schema": {"type": "string", "enum": ["*"]}},
                                   _IDEMPOTENCY_KEY],
                    "requestBody": {"required": True, "content": {
                        "application/octet-stream": {"schema": {"type": "string",
                                                                "format": "binary"}}}},
                    "responses": {
                        "200": {"description": "committed; ETag holds the new version",
                                "content": {"application/json": {"schema": {
                                    "$ref": "#/components/schemas/Written"}}}},
                        "412": _error("condition failed; current_version names the version"),
                        "413": _error("value too large"), **_IDEMPOTENCY_ERRORS, **common},
                },
                "get": {
                    "summary": "Read (linearizable by default)",
                    "parameters": [_KEY, {"name": "consistency", "in": "query",
                                          "schema": {"type": "string",
                                                     "enum": ["linearizable", "stale"]}},
                                   *LONG_POLL_PARAMETERS],
                    "responses": {
                        "200": {"description": "the value; ETag holds its version, and "
                                               "Expires-At-Ms, for a key with a TTL, when it "
                                               "expires (Unix ms, the writer's clock)",
                                "content": {"application/octet-stream": {
                                    "schema": {"type": "string", "format": "binary"}}}},
                        "404": _error("absent or deleted"), **common},
                },
                "delete": {
                    "summary": "Delete (writes a tombstone)",
                    "parameters": [_KEY, _IF_MATCH, _IDEMPOTENCY_KEY],
                    "responses": {"204": {"description": "deleted"},
                                  "404": _error("absent"),
                                  "412": _error("condition failed"), **_IDEMPOTENCY_ERRORS,
                                  **common},
                },
            },
            "/v1/kv/{key}/renew": {"post": {
                "summary": "Renew a TTL key: a new expiry, ttl from now, same value",
                "description": "A change like any other: the version bumps (watchers and "
                               "If-Match see it). Renew a key well before its expiry minus "
                               "the clock skew bound (docs/ttl.md)",
                "parameters": [_KEY, {**_TTL, "required": True,
                                      "description": "the new TTL, counted from now"},
                               _IF_MATCH, _IDEMPOTENCY_KEY],
                "responses": {
                    "200": {"description": "renewed; ETag holds the new version",
                            "content": {"application/json": {"schema": {
                                "$ref": "#/components/schemas/Written"}}}},
                    "404": _error("absent, deleted or already expired"),
                    "412": _error("If-Match did not hold"), **_IDEMPOTENCY_ERRORS, **common}}},
            "/v1/kv": {
                "get": {
                    "summary": "List live keys by prefix (union over a quorum; not "
                               "linearizable), or with values=true a range read: the keys "
                               "with their values and versions",
                    "description": "values=true reads each listed key on its own, "
                                   "linearizably unless consistency=stale; a key deleted "
                                   "between the listing and its read is left out. A range "
                                   "page holds at most `limit` keys (1-1000, default 100) and "
                                   "4 MiB of values (always at least one key), and stops "
                                   "early when half the request timeout is spent; `next` "
                                   "then continues after the last key returned. Each key is "
                                   "linearizable at its own read time: a page is not a "
                                   "snapshot across keys.",
                    "parameters": [
                        _PREFIX,
                        {"name": "values", "in": "query",
                         "schema": {"type": "boolean", "default": False},
                         "description": "true: return values and versions (a range read)"},
                        {"name": "consistency", "in": "query",
                         "schema": {"type": "string", "enum": ["linearizable", "stale"]},
                         "description": "with values=true: how each key is read, as for "
                                        "GET /v1/kv/{key}"},
                        {"name": "limit", "in": "query",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                         "description": "keys per page: 1-10000 (default 1000) for a "
                                        "listing, 1-1000 (default 100) with values=true"},
                        _CURSOR],
                    "responses": {"200": {
                        "description": "a page of keys, or of items with values=true",
                        "content": {"application/json": {"schema": {"oneOf": [
                            {"$ref": "#/components/schemas/KeyPage"},
                            {"$ref": "#/components/schemas/RangePage"}]}}}},
                        "400": common["400"], "503": common["503"]}},
                "delete": {
                    "summary": "Range delete: delete every live key under a prefix (admin)",
                    "description": "One Paxos delete per key, some at once: NOT atomic "
                                   "across keys (a reader may see some deleted and not "
                                   "others, and keys written meanwhile may survive). Needs "
                                   "an admin token with --auth token; an empty prefix needs "
                                   "all=true. Bounded: after 10000 keys or half the request "
                                   "timeout it answers complete: false and a cursor; a "
                                   "failed delete answers its 503/504 with deleted, "
                                   "complete: false and next. Running it again is safe.",
                    "parameters": [
                        _PREFIX,
                        {"name": "all", "in": "query",
                         "schema": {"type": "boolean", "default": False},
                         "description": "true: allow the empty prefix (every key)"},
                        _CURSOR],
                    "responses": {
                        "200": {"description": "deleted counts keys this call deleted",
                                "content": {"application/json": {"schema": {
                                    "$ref": "#/components/schemas/RangeDeleted"}}}},
                        "400": _error("bad request: an empty prefix without all=true, or "
                                      "an Idempotency-Key (running it again is safe)"),
                        "503": _error("no_quorum or overloaded: stopped part way; the body "
                                      "also has deleted, complete: false and next"),
                        "504": _error("unknown_outcome of one delete: stopped part way; the "
                                      "body also has deleted, complete: false and next")}},
            },
            "/v1/watch": WATCH_PATH,
            "/v1/status": {"get": {"summary": "Node id, peers and reachability, config",
                                   "description": "With --auth token, an admin token sees "
                                                  "everything; a read or write token sees only "
                                                  "node_id, ready and quorum (size, reachable)",
                                   "responses": {"200": {"description": "status"}}}},
            "/v1/openapi.json": {"get": {"summary": "This document",
                                         "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/healthz": {"get": {"summary": "Process alive",
                                 "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Ready: peers confirmed this node's identity, and a "
                                           "quorum of acceptors is reachable both ways",
                                "responses": {"200": {"description": "ready"},
                                              "503": _error("not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus text format (needs a token of any "
                                            "role when the server runs with --metrics-auth)",
                                 "responses": {"200": {"description": "metrics"}}}},
        },
        "security": [{"bearer": []}],
        "components": {"securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "Only when the server runs with --auth token: a token from "
                           "`paxoskv token new`, whose role (read < write < admin) and "
                           "optional key prefixes limit what it may do (docs/security.md)"}},
                       "schemas": {
            "Error": {"type": "object", "required": ["error", "message"],
                      "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                                     "current_version": {"type": ["integer", "null"]}}},
            "KeyPage": {"type": "object", "required": ["keys", "count", "next"],
                        "properties": {
                            "keys": {"type": "array", "items": {"type": "string"}},
                            "count": {"type": "integer"}, "next": _NEXT,
                            "consistency": {"type": "string", "enum": ["quorum-union"]}}},
            "RangePage": {"type": "object", "required": ["items", "count", "next"],
                          "properties": {
                              "items": {"type": "array", "items": {
                                  "type": "object",
                                  "required": ["key", "version", "value_base64"],
                                  "properties": {
                                      "key": {"type": "string"},
                                      "version": {"type": "integer"},
                                      "value_base64": {"type": "string",
                                                       "contentEncoding": "base64",
                                                       "description": "the value's bytes, "
                                                       "base64 (RFC 4648, padded)"},
                                      "expires_ms": {"type": "integer",
                                                     "description": "a TTL key only: "
                                                     "its expiry, Unix ms"}}}},
                              "count": {"type": "integer"}, "next": _NEXT,
                              "consistency": {"type": "string",
                                              "enum": ["linearizable", "stale"]}}},
            "RangeDeleted": {"type": "object", "required": ["deleted", "complete", "next"],
                             "properties": {
                                 "deleted": {"type": "integer"},
                                 "complete": {"type": "boolean"},
                                 "next": {"type": ["string", "null"],
                                          "description": "with complete: false, the cursor "
                                          "to continue with"},
                                 "message": {"type": "string"}}},
            "Written": {"type": "object", "required": ["key", "version"],
                        "properties": {"key": {"type": "string"},
                                       "version": {"type": "integer"}}},
        }},
    })
