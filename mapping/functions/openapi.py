"""The OpenAPI 3.1 description of the app's HTTP API, built as a plain dict (served at `GET /api/openapi.json`).

Schemas are JSON Schema 2020-12. Answers are closed (`additionalProperties: false`) except negotiate's, which
passes the SignalR extension's connection info through as it is. Request bodies are open: the app ignores
properties it does not know.
"""

from __future__ import annotations

from typing import Any

from mapping.keys import MAX_NAME_LENGTH
from mapping.signalr.messages import RESERVED_TARGETS
from mapping.signalr.send import DEFAULT_TARGET, MAX_BODY_BYTES, MAX_TARGET_LENGTH

OPENAPI_VERSION = "3.1.0"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SERVER_URL = "/api"
JSON = "application/json"
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_STATUS_LENGTH = 64
ROOM_PATTERN = "^[A-Za-z0-9._-]{1,64}$"

Schema = dict[str, Any]


def document() -> dict[str, Any]:
    """Return the OpenAPI 3.1.0 document describing every HTTP route of the app."""
    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": JSON_SCHEMA_DIALECT,
        "info": {
            "title": "SignalR connection mapper",
            "version": "0.1.0",
            "summary": "Send to a user's SignalR connections and tell who is online.",
            "description": (
                "HTTP API of the Azure Functions app that maps users to their Azure SignalR Service connections. "
                "Routes with a function key take it in the `x-functions-key` header or the `code` query parameter. "
                "The SignalR hub itself (client methods and the messages clients receive) is summarised under "
                "`x-signalr`; it is not an HTTP route."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": SERVER_URL}],
        "security": [{"functionKeyHeader": []}, {"functionKeyQuery": []}],  # either one
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "functionKeyHeader": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-functions-key",
                    "description": "A function key (or the host key).",
                },
                "functionKeyQuery": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "code",
                    "description": "The same key as a query parameter.",
                },
            },
            "parameters": _parameters(),
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before trying again.",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 1},
                },
            },
            "responses": _responses(),
            "schemas": _schemas(),
        },
        "x-signalr": {
            "description": "Realtime traffic goes through SignalR Service: negotiate, then connect to the hub.",
            "hub": "%SIGNALR_HUB% (an app setting)",
            "clientMethods": {"send": "send(to, message): deliver `message` to every live connection of user `to`"},
            "clientTargets": {
                "newMessage": "{from, to, message} (or the `target` an HTTP send named)",
                "presence": "{user, online, version}: keep the highest version per user",
                "error": "{error, to?}: to the calling connection only",
            },
        },
    }


def _paths() -> dict[str, Any]:
    return {
        "/negotiate": {
            "post": {
                "operationId": "negotiate",
                "summary": "Hand a signed-in client its SignalR URL and access token.",
                "description": (
                    "The user is the `x-ms-client-principal-name` header, which App Service Authentication sets. "
                    "Deployed, App Service Authentication answers first, before any function runs: 401 with none of "
                    "the app's JSON when there is no bearer token or one it cannot validate, 403 for a client "
                    "application it does not allow; the statuses below are then the app's and the Functions "
                    "host's. Without the header (locally, any call that does not send it) the "
                    "`signalRConnectionInfo` binding fails before the function runs: 500 with no body."
                ),
                "security": [],
                "parameters": [
                    {
                        "name": "x-ms-client-principal-name",
                        "in": "header",
                        "required": False,
                        "description": "The authenticated user (set by the platform, never by clients).",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _answer("The SignalR connection info.", "ConnectionInfo"),
                    "400": _answer("The signed-in user name is not a usable user name.", "Error"),
                    "401": _answer(
                        "No authenticated principal: the header is present but blank (the app's own check). "
                        "Deployed, App Service Authentication answers 401 first, without the app's JSON, to a call "
                        "without a valid bearer token.",
                        "Error",
                    ),
                    "403": _answer("The user is blocked (`PUT /api/users/{user}/block`).", "Error"),
                    "500": {
                        "description": (
                            "No principal: the `x-ms-client-principal-name` header is absent, so the "
                            "`signalRConnectionInfo` binding (`{headers.x-ms-client-principal-name}`) fails before "
                            "the function runs and the Functions host answers, with no body. Locally: any call "
                            "without the header. Deployed: a token App Service Authentication accepts but that names "
                            "no principal (without a valid token it answers 401 first)."
                        )
                    },
                    "503": {"$ref": "#/components/responses/StorageUnavailable"},
                },
            }
        },
        "/send": {
            "post": {
                "operationId": "send",
                "summary": "Send a message to every live connection of a user.",
                "requestBody": _body("SendRequest"),
                "responses": {
                    "200": _answer("Delivered to each live connection of the user.", "SendResult"),
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "401": {"$ref": "#/components/responses/NoKey"},
                    "404": _answer("The user has no live connection; nothing was sent.", "Error"),
                    "413": {"$ref": "#/components/responses/PayloadTooLarge"},
                    "503": {"$ref": "#/components/responses/StorageUnavailable"},
                },
            }
        },
        "/users": {
            "get": {
                "operationId": "onlineUsers",
                "summary": "List users with at least one live connection, a page at a time, in key order.",
                "parameters": [{"$ref": "#/components/parameters/Limit"}, {"$ref": "#/components/parameters/Next"}],
                "responses": {
                    "200": _answer("One page of online users.", "UsersPage"),
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "401": {"$ref": "#/components/responses/NoKey"},
                    "503": {"$ref": "#/components/responses/StorageUnavailable"},
                },
            }
        },
        "/users/{user}": {
            "get": {
                "operationId": "userPresence",
                "summary": "Tell whether a user is online, with their status, rooms and live connections.",
                "parameters": [{"$ref": "#/components/parameters/User"}],
                "responses": {
                    "200": _answer("The user's presence (an unknown user is offline).", "UserPresence"),
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "401": {"$ref": "#/components/responses/NoKey"},
                    "503": {"$ref": "#/components/responses/StorageUnavailable"},
                },
            }
        },
        "/users/{user}/block": {
            "put": {
                "operationId": "blockUser",
                "summary": "Block a user: negotiate answers 403, a connection that reaches `connected` is closed and "
                "not mapped, and their connections are closed now (as `disconnect`). Idempotent.",
                "parameters": [{"$ref": "#/components/parameters/User"}],
                "responses": {
                    "200": _answer("Blocked; how many live connections were closed.", "Blocked"),
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "401": {"$ref": "#/components/responses/NoKey"},
                    "503": {"$ref": "#/components/responses/SignalRUnavailable"},
                },
            },
            "delete": {
                "operationId": "unblockUser",
                "summary": "Unblock a user. Idempotent.",
                "parameters": [{"$ref": "#/components/parameters/User"}],
                "responses": {
                    "200": _answer("Not blocked.", "Blocked"),
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "401": {"$ref": "#/components/responses/NoKey"},
                    "503": {"$ref": "#/components/responses/StorageUnavailable"},
                },
            },
        },
        "/rooms/{room}/occupancy": {
            "get": {
                "operationId": "roomOccupancy",
                "summary": "Tell how many members a room has and how many of them are online, in one table request "
                "(no member list). An unknown room has no members.",
                "parameters": [{"$ref": "#/components/parameters/Room"}],
                "responses": {
                    "200": _answer("The room's occupancy now.", "Occupancy"),
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "401": {"$ref": "#/components/responses/NoKey"},
                    "503": {"$ref": "#/components/responses/StorageUnavailable"},
                },
            }
        },
        "/rooms/{room}/members/{user}": {
            "put": {
                "operationId": "grantRoom",
                "summary": "Grant a room to a user and make them a member at once: their live connections join the "
                "room's group, the room hears the join and their presence, their connections hear it and a snapshot. "
                "Later joins of the room by the user are admitted. Idempotent.",
                "parameters": [{"$ref": "#/components/parameters/Room"}, {"$ref": "#/components/parameters/User"}],
                "responses": {
                    "200": _answer("A member, with the grant.", "RoomAccess"),
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "401": {"$ref": "#/components/responses/NoKey"},
                    "503": {"$ref": "#/components/responses/StorageUnavailable"},
                },
            },
            "delete": {
                "operationId": "revokeRoom",
                "summary": "Revoke a user's grant of a room and end their membership: their connections leave the "
                "room's group before this answers (they hear nothing more from the room), the room hears them "
                "leave, and later joins are refused unless the room is open. Idempotent.",
                "parameters": [{"$ref": "#/components/parameters/Room"}, {"$ref": "#/components/parameters/User"}],
                "responses": {
                    "200": _answer("No member, no grant.", "RoomAccess"),
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "401": {"$ref": "#/components/responses/NoKey"},
                    "503": {"$ref": "#/components/responses/SignalRUnavailable"},
                },
            },
        },
        "/users/{user}/disconnect": {
            "post": {
                "operationId": "disconnectUser",
                "summary": "Close every connection of a user through SignalR Service (an operator's disconnect); their "
                "rows leave presence as a disconnect does.",
                "parameters": [{"$ref": "#/components/parameters/User"}],
                "responses": {
                    "200": _answer("How many live connections of the user were closed.", "Disconnected"),
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "401": {"$ref": "#/components/responses/NoKey"},
                    "503": {"$ref": "#/components/responses/SignalRUnavailable"},
                },
            }
        },
        "/rooms/{room}": {
            "get": {
                "operationId": "roomMembers",
                "summary": "List a room's members, a page at a time.",
                "parameters": [
                    {"$ref": "#/components/parameters/Room"},
                    {"$ref": "#/components/parameters/Limit"},
                    {"$ref": "#/components/parameters/Next"},
                ],
                "responses": {
                    "200": _answer("One page of the room's members.", "RoomPage"),
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "401": {"$ref": "#/components/responses/NoKey"},
                    "503": {"$ref": "#/components/responses/StorageUnavailable"},
                },
            }
        },
        "/rooms/{room}/send": {
            "post": {
                "operationId": "sendToRoom",
                "summary": "Send a message to everyone in a room.",
                "parameters": [{"$ref": "#/components/parameters/Room"}],
                "requestBody": _body("RoomSendRequest"),
                "responses": {
                    "200": _answer("Sent to the room.", "RoomSendResult"),
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "401": {"$ref": "#/components/responses/NoKey"},
                    "413": {"$ref": "#/components/responses/PayloadTooLarge"},
                    "503": {"$ref": "#/components/responses/StorageUnavailable"},
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "security": [],
                "responses": {"200": _answer("The OpenAPI 3.1 document.", "OpenApiDocument")},
            }
        },
    }


def _parameters() -> dict[str, Any]:
    return {
        "Limit": {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": "Page size.",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        },
        "Next": {
            "name": "next",
            "in": "query",
            "required": False,
            "description": "The `next` cursor of the previous page (opaque; a cursor the API did not issue is a 400).",
            "schema": {"type": "string"},
        },
        "User": {
            "name": "user",
            "in": "path",
            "required": True,
            "description": "The user name (case-insensitive; trimmed and NFC-normalised).",
            "schema": _name(),
        },
        "Room": {
            "name": "room",
            "in": "path",
            "required": True,
            "description": "The room name.",
            "schema": {"type": "string", "pattern": ROOM_PATTERN},
        },
    }


def _responses() -> dict[str, Any]:
    return {
        "BadRequest": _answer("The request is malformed (body, query or name); nothing was done.", "Error"),
        "PayloadTooLarge": _answer(f"The body is over {MAX_BODY_BYTES // 1024} KiB; nothing was sent.", "Error"),
        "StorageUnavailable": {
            **_answer("The connection store is unavailable; nothing was done.", "Error"),
            "headers": {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}},
        },
        "NoKey": {"description": "No valid function key (answered by the Functions host in Azure, with no body)."},
        "SignalRUnavailable": {
            **_answer(
                "SignalR Service could not close the connections (not configured, unreachable, or refused), or the "
                "connection store is unavailable. A block holds once written: send it again to close them.",
                "Error",
            ),
            "headers": {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}},
        },
    }


def _schemas() -> dict[str, Schema]:
    return {
        "Error": _closed({"error": {"type": "string", "minLength": 1}}),
        "ConnectionInfo": {
            "type": "object",
            "description": "What the SignalR extension's `signalRConnectionInfo` binding gives; passed through as is.",
            "required": ["url", "accessToken"],
            "properties": {"url": {"type": "string"}, "accessToken": {"type": "string"}},
            "additionalProperties": True,
        },
        "Message": {"description": "Any JSON value, `null` included (at most 64 levels deep)."},
        "Target": {
            "type": "string",
            "description": f"The client method to invoke (default `{DEFAULT_TARGET}`); the app's own are refused "
            f"(400): {', '.join(RESERVED_TARGETS)}, in any case.",
            "minLength": 1,
            "maxLength": MAX_TARGET_LENGTH,
            "pattern": r"\S",
        },
        "SendRequest": {
            "type": "object",
            "required": ["to", "message"],
            "properties": {"to": _name(), "message": _ref("Message"), "target": _ref("Target")},
        },
        "Disconnected": _closed({"user": {"type": "string"}, "closed": {"type": "integer", "minimum": 0}}),
        "SendResult": _closed({"to": {"type": "string"}, "delivered": {"type": "integer", "minimum": 1}}),
        "Cursor": {
            "type": ["string", "null"],
            "description": "Pass it back as `next` for the following page; `null` on the last page.",
        },
        "Timestamp": {
            "type": "string",
            "format": "date-time",
            "pattern": "Z$",
            "description": "ISO 8601 / RFC 3339, UTC.",
        },
        "TimestampOrNull": {
            "type": ["string", "null"],
            "format": "date-time",
            "pattern": "Z$",
            "description": "ISO 8601 / RFC 3339, UTC; `null` when unknown.",
        },
        "Status": {"type": ["string", "null"], "maxLength": MAX_STATUS_LENGTH, "description": "A user-set status."},
        "OnlineUser": _closed({"user": {"type": "string"}, "connections": {"type": "integer", "minimum": 1}}),
        "UsersPage": _closed({"users": {"type": "array", "items": _ref("OnlineUser")}, "next": _ref("Cursor")}),
        "Connection": _closed(
            {
                "connectionId": {"type": "string"},
                "hub": {"type": "string"},
                "connectedAt": _ref("Timestamp"),
                "lastSeen": _ref("Timestamp"),
                "userAgent": {"type": "string"},
                "status": _ref("Status"),
            }
        ),
        "UserPresence": _closed(
            {
                "user": {"type": "string"},
                "online": {"type": "boolean"},
                "status": _ref("Status"),
                "lastSeen": _ref("TimestampOrNull"),
                "rooms": {"type": "array", "items": {"type": "string"}},
                "blocked": {"type": "boolean", "description": "An operator blocked the user."},
                "grants": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Rooms a server granted the user (`PUT /api/rooms/{room}/members/{user}`).",
                },
                "connections": {"type": "array", "items": _ref("Connection")},
            }
        ),
        "Blocked": _closed(
            {
                "user": {"type": "string"},
                "blocked": {"type": "boolean"},
                "closed": {"type": "integer", "minimum": 0, "description": "PUT: the live connections closed."},
            },
            required=["user", "blocked"],
        ),
        "Occupancy": _closed(
            {
                "room": {"type": "string"},
                "members": {"type": "integer", "minimum": 0, "description": "Members (a join in flight counts)."},
                "online": {"type": "integer", "minimum": 0, "description": "Members online now."},
                "version": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Grows with every change of the counts (0: never counted); the `occupancy` "
                    "messages and feed messages carry the same version.",
                },
            },
            required=["room", "members", "online", "version"],
        ),
        "RoomAccess": _closed(
            {
                "room": {"type": "string"},
                "user": {"type": "string"},
                "member": {"type": "boolean", "description": "PUT: true (a member, granted); DELETE: false."},
            }
        ),
        "RoomMember": _closed(
            {
                "user": {"type": "string"},
                "online": {"type": "boolean"},
                "connections": {"type": "integer", "minimum": 0},
                "status": _ref("Status"),
                "lastSeen": _ref("TimestampOrNull"),
            }
        ),
        "RoomPage": _closed(
            {
                "room": {"type": "string"},
                "members": {"type": "array", "items": _ref("RoomMember")},
                "next": _ref("Cursor"),
            }
        ),
        "RoomSendRequest": {
            "type": "object",
            "required": ["message"],
            "properties": {"message": _ref("Message"), "target": _ref("Target")},
        },
        "RoomSendResult": _closed({"room": {"type": "string"}}),
        "OpenApiDocument": {"type": "object", "required": ["openapi", "info", "paths"]},
    }


def _name() -> Schema:
    return {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH, "pattern": r"\S"}


def _closed(properties: dict[str, Schema], *, required: list[str] | None = None) -> Schema:
    """An object of exactly `properties`, each required unless `required` names fewer."""
    return {
        "type": "object",
        "required": list(properties) if required is None else required,
        "properties": properties,
        "additionalProperties": False,
    }


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref(schema)}}}


def _body(schema: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": f"UTF-8 JSON, at most {MAX_BODY_BYTES} bytes; strict (no NaN or Infinity).",
        "content": {JSON: {"schema": _ref(schema)}},
    }
