"""The expiry index's shards: writes spread over S partitions per bucket, and any S's entries are still read."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from mapping.keys import INDEX_PREFIX, SHARDED_PREFIX, user_key
from mapping.presence.expiry import ExpiryIndex, bucket_start, shard_of
from mapping.sweep import sweep
from testkit.azurite import Azurite
from testkit.tables import index_rows, make_settings, stores_on_one_table, table_rows

TTL = timedelta(seconds=600)
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.mark.parametrize("shards", [4, 8, 16])
def test_users_spread_over_the_shards_within_five_points(shards: int) -> None:
    """1,000 users' entries of one bucket land in S partitions, the busiest holding at most 1/S + 5% of them."""
    index = ExpiryIndex(table=None, width=timedelta(seconds=60), shards=shards)  # type: ignore[arg-type]
    partitions = Counter(index.bucket(NOW, user_key(f"user{number}")) for number in range(1000))
    assert len(partitions) == shards
    assert max(partitions.values()) / 1000 <= 1 / shards + 0.05, partitions.most_common(3)
    assert {bucket_start(partition) for partition in partitions} == {bucket_start(index.bucket(NOW, "x"))}


def test_one_shard_keeps_the_layout_before_shards() -> None:
    """With S = 1 the bucket is `%~x<bucket>`, as every index written before shards existed."""
    index = ExpiryIndex(table=None, width=timedelta(seconds=60), shards=1)  # type: ignore[arg-type]
    assert index.bucket(NOW, "anyone").startswith(INDEX_PREFIX)
    sharded = ExpiryIndex(table=None, width=timedelta(seconds=60), shards=8)  # type: ignore[arg-type]
    assert sharded.bucket(NOW, "anyone").startswith(SHARDED_PREFIX)
    assert shard_of("anyone", 8) == shard_of("anyone", 8)  # the same on every instance


@pytest.mark.parametrize(("written_with", "swept_with"), [(1, 8), (16, 2), (3, 5), (8, 1)])
async def test_an_index_written_with_another_shard_count_is_still_swept(
    azurite: Azurite, written_with: int, swept_with: int
) -> None:
    """Rows indexed under one S are found and removed by a sweep under another: nothing is orphaned."""
    async with stores_on_one_table(
        azurite, dict(index_shards=written_with), dict(index_shards=swept_with), store_options={"retry_total": 1}
    ) as (writer, sweeper):
        table = writer.settings.table_name
        users = [f"u{number}" for number in range(30)]
        for user in users:
            await writer.connect(user, f"{user}-tab", now=NOW - TTL * 3)
        written = {row["PartitionKey"] for row in await index_rows(azurite, table)}
        assert len(written) == len({shard_of(user_key(user), written_with) for user in users})
        result = await sweep(sweeper, now=NOW)
        assert sorted(result.offline_users) == sorted(users)
        assert await index_rows(azurite, table) == []
        assert [row for row in await table_rows(azurite, table) if row["RowKey"] != "%~p"] == []


async def test_a_row_refreshed_under_another_shard_count_survives_its_old_entry(azurite: Azurite) -> None:
    """E2 across layouts: a row refreshed into a later bucket under S = 8 makes its S = 1 entry spent (by time)."""
    async with stores_on_one_table(
        azurite, dict(index_shards=1), dict(index_shards=8), store_options={"retry_total": 1}
    ) as (old, new):
        table = old.settings.table_name
        await old.connect("ann", "a1", now=NOW - TTL * 2)
        await new.touch("ann", "a1", now=NOW - timedelta(seconds=30))
        result = await sweep(new, now=NOW)
        assert result.deleted == 0
        assert all(change.state.online for change in result.presence)  # at most P5's repeat of the recorded online
        remaining = await index_rows(azurite, table)
        assert [str(row["PartitionKey"]).startswith(SHARDED_PREFIX) for row in remaining] == [True]
        assert (await new.presence_of("ann", now=NOW)).state.online is True


def test_the_shard_count_is_bounded() -> None:
    """An index of 0 or 1,000 shards is a configuration mistake."""
    for shards in (0, 1000):
        with pytest.raises(ValueError, match="between 1 and 999"):
            ExpiryIndex(table=None, width=timedelta(seconds=60), shards=shards)  # type: ignore[arg-type]
    assert dataclasses.is_dataclass(make_settings("UseDevelopmentStorage=true", "T"))
