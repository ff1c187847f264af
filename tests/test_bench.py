"""The benchmark's own parts against a real Azurite: the round-trip counter and the naive baseline's equivalence."""

from __future__ import annotations

import json
from datetime import timedelta

from bench.floor import Floor
from bench.naive import NaiveFunctions
from bench.proxy import CountingProxy, classify
from bench.workload import fresh_table
from conftest import Azurite
from mapping.entity import ConnectionEntity
from testkit.azurite import connection_string
from testkit.functions_host import Out, http, http_request


def test_classify_names_table_operations() -> None:
    """Requests are named by the Table operation they are, from method and path."""
    assert classify("POST", "/devstoreaccount1/Tables") == "create table"
    assert classify("MERGE", "/devstoreaccount1/t(PartitionKey='a',RowKey='b')") == "upsert/update (merge)"
    assert classify("DELETE", "/devstoreaccount1/t(PartitionKey='a',RowKey='b')") == "delete"
    assert classify("GET", "/devstoreaccount1/t()?$filter=PartitionKey%20eq%20'a'") == "query"
    assert classify("POST", "/devstoreaccount1/$batch") == "batch"


async def test_proxy_counts_each_request_on_the_wire(azurite: Azurite) -> None:
    """A first floor connect with presence is three requests (the user read, the index entry, the row and presence
    transaction); the proxy sees them, and the delete after."""
    async with fresh_table(azurite.connection_string) as table:
        with CountingProxy(azurite.port) as proxy:
            floor = Floor(connection_string(proxy.port), table, ttl=timedelta(minutes=10))
            try:
                with proxy.counting() as counts:
                    await floor.connect("alice", "conn-1")
                    await floor.disconnect("alice", "conn-1", presence=False)
            finally:
                await floor.close()
    assert counts == {"query": 1, "upsert/update (merge)": 1, "batch": 1, "delete": 1}


async def test_naive_send_delivers_what_the_app_delivers(azurite: Azurite, app_env: dict[str, str]) -> None:
    """For plain names the naive baseline does the same job as the app: one delivery per connection of the user."""
    table = app_env["MAPPING_TABLE"]
    naive = NaiveFunctions(azurite.connection_string, table)
    try:
        naive.client.create_table()
        for index in range(3):
            naive.client.upsert_entity(ConnectionEntity.new("bob", f"bob-c{index}", hub="chat").to_table())
        body = {"to": "bob", "message": {"text": "hi"}}
        naive_out, ours_out = Out(), Out()
        naive_response = naive.send(http_request("POST", "send", body=body), naive_out)
        status, ours_body, _ = await http("send", http_request("POST", "send", body=body), signalr=ours_out)
    finally:
        naive.close()
    assert (naive_response.status_code, json.loads(naive_response.get_body())) == (status, ours_body)
    assert sorted(naive_out.messages, key=json.dumps) == sorted(ours_out.messages, key=json.dumps)
    assert ours_body == {"to": "bob", "delivered": 3}
