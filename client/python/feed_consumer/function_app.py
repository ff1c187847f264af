"""A presence-feed consumer: a function app of its own that hears the mapper's `PRESENCE_FEED_QUEUE`.

- `presence_feed` (queue trigger on `%PRESENCE_FEED_QUEUE%` of the storage account `FEED_STORAGE` names): keeps the
  highest version per subject in its own table (`FEED_STATE_TABLE`), whatever order the messages come in and however
  often one comes (the feed delivers at least once).
- `notify` (`POST /api/notify` `{"to": user, "message": text}`): what a backend asks before it sends a direct
  message: a recipient the feed last said is online gets it through SignalR as usual (`{"push": false}`); one
  offline, or never seen, gets a push instead (here a row in `FEED_PUSH_TABLE`, where a real app calls its push
  service), answered `{"push": true}`.
- `GET /api/rooms/{room}/attended`: whether anyone is in a room, as the feed last said (`occupied` or `vacated`):
  `{"room", "attended", "online", "since"}`, `attended: false` for a room never heard of (say, a support room whose
  last agent left: the ticket is unattended).
- `GET /api/subject?subject=...`: the state kept for one subject (404 if none), to look at.

It imports nothing of the mapper: it reads the feed's JSON only (docs/feed.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import unicodedata
from typing import Any

import azure.functions as func
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import EdmType, EntityProperty
from azure.data.tables.aio import TableClient

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
logger = logging.getLogger(__name__)

_TRIES = 5  # a write that meets another consumer's write reads again


def _table(name: str) -> TableClient:
    return TableClient.from_connection_string(os.environ["FEED_STORAGE"], os.environ[name])


def fold(name: str) -> str:
    """Fold a user name as the feed's subjects do: stripped, NFC, casefolded (the client's `foldUserName`)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).strip().casefold())


def _row_key(subject: str) -> str:
    # Table keys may not hold / \ # ? or control characters and are at most 1 KiB: a subject is kept under its
    # SHA-256 (the subject itself is in the row's Body).
    return hashlib.sha256(subject.encode("utf-8")).hexdigest()


async def keep_if_newer(table: TableClient, message: dict[str, Any]) -> bool:
    """Store `message` as its subject's state unless a version as high is stored; return whether it was stored."""
    key = _row_key(str(message["subject"]))
    for _ in range(_TRIES):
        try:
            held = await table.get_entity("feed", key)
        except ResourceNotFoundError:
            held = None
        if held is not None and _version(held["Version"]) >= int(message["version"]):
            return False  # a repeat, or older than what is kept
        entity = {
            "PartitionKey": "feed",
            "RowKey": key,
            "Version": EntityProperty(int(message["version"]), EdmType.INT64),  # milliseconds: past Int32
            "Body": json.dumps(message),
        }
        try:
            if held is None:
                await table.create_entity(entity)
            else:
                await table.update_entity(
                    entity, etag=held.metadata["etag"], match_condition=MatchConditions.IfNotModified
                )
            return True
        except (ResourceExistsError, HttpResponseError) as error:
            if isinstance(error, HttpResponseError) and error.status_code not in (409, 412):
                raise
    raise RuntimeError(f"subject {message['subject']} kept changing")


def _version(value: Any) -> int:
    # An Int64 property comes back as an EntityProperty.
    return int(value.value if isinstance(value, EntityProperty) else value)


async def state_of(table: TableClient, subject: str) -> dict[str, Any] | None:
    """Return the message kept for `subject`, or None."""
    try:
        held = await table.get_entity("feed", _row_key(subject))
    except ResourceNotFoundError:
        return None
    return dict(json.loads(held["Body"]))


@app.function_name("presence_feed")
@app.queue_trigger(arg_name="message", queue_name="%PRESENCE_FEED_QUEUE%", connection="FEED_STORAGE")
async def presence_feed(message: func.QueueMessage) -> None:
    """Keep the highest version per subject; a message that is no feed message is logged and dropped."""
    try:
        body = json.loads(message.get_body().decode("utf-8"))
        str(body["subject"]), int(body["version"]), str(body["kind"])
    except (ValueError, KeyError, TypeError):
        logger.error("dropped a message that is no feed message: %s", message.id)
        return
    async with _table("FEED_STATE_TABLE") as table:
        with contextlib.suppress(ResourceExistsError):
            await table.create_table()
        if await keep_if_newer(table, body):
            logger.info("feed: %s %s at version %s", body["kind"], body["subject"], body["version"])


@app.function_name("notify")
@app.route(route="notify", methods=["POST"])
async def notify(req: func.HttpRequest) -> func.HttpResponse:
    """Answer whether a direct message to `to` goes as a push: the feed's last word on them is offline, or none."""
    try:
        body = req.get_json()
        to, text = str(body["to"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        return _json(400, {"error": 'the body must be {"to": user, "message": text}'})
    async with _table("FEED_STATE_TABLE") as table:
        try:
            state = await state_of(table, f"user:{fold(to)}")
        except ResourceNotFoundError:  # no table yet: nothing heard
            state = None
    if state is not None and state.get("online") is True:
        return _json(200, {"push": False, "online": True})
    async with _table("FEED_PUSH_TABLE") as pushes:
        with contextlib.suppress(ResourceExistsError):
            await pushes.create_table()
        push = {"PartitionKey": fold(to), "RowKey": os.urandom(8).hex(), "Message": text}
        await pushes.create_entity(push)  # stands in for the push service's call
    return _json(200, {"push": True, "online": False, "lastSeen": (state or {}).get("lastSeen")})


@app.function_name("attended")
@app.route(route="rooms/{room}/attended", methods=["GET"])
async def attended(req: func.HttpRequest) -> func.HttpResponse:
    """Tell whether anyone is in a room, by the feed's last `occupied` or `vacated` of it (and since when)."""
    room = req.route_params.get("room", "")
    async with _table("FEED_STATE_TABLE") as table:
        try:
            state = await state_of(table, f"room:{room}")
        except ResourceNotFoundError:
            state = None
    if state is None:
        return _json(200, {"room": room, "attended": False, "online": 0, "since": None})
    occupied = state.get("kind") == "occupied"
    return _json(200, {"room": room, "attended": occupied, "online": state.get("online", 0), "since": state.get("at")})


@app.function_name("subject")
@app.route(route="subject", methods=["GET"])
async def subject(req: func.HttpRequest) -> func.HttpResponse:
    """Return the state kept for one subject (`?subject=`: subjects hold `/`, so not a route segment)."""
    name = req.params.get("subject")
    if not name:
        return _json(400, {"error": "the query parameter subject is required"})
    async with _table("FEED_STATE_TABLE") as table:
        try:
            state = await state_of(table, name)
        except ResourceNotFoundError:
            state = None
    return _json(404, {"error": "nothing heard of this subject"}) if state is None else _json(200, state)


def _json(status: int, body: dict[str, Any]) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")
