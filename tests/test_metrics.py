"""paxoskv/metrics.py: the disk gauges read the storage when scraped."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from paxoskv.core.acceptor import AcceptorState
from paxoskv.core.ballot import Ballot
from paxoskv.core.register import Value
from paxoskv.metrics import PromMetrics
from paxoskv.storage.sqlite import SqliteStorage


def test_disk_gauges_follow_the_data_directory_at_scrape_time(tmp_path: Path) -> None:
    """Goal: the data directory, volume and free-list gauges are the storage's numbers as
    of the scrape (no caller has to keep them up to date); without a source (or with a
    failing one) the families are still exposed and the scrape does not fail."""
    registry = CollectorRegistry()
    metrics = PromMetrics(registry)
    assert b"# TYPE paxoskv_data_dir_bytes gauge" in generate_latest(registry)
    assert registry.get_sample_value("paxoskv_data_dir_bytes") is None

    async def run() -> None:
        s = SqliteStorage(tmp_path, vacuum_threshold_bytes=1 << 40)
        metrics.disk_source(s.disk_usage)
        first = registry.get_sample_value("paxoskv_data_dir_bytes")
        await asyncio.gather(*(s.save(f"k{i}", AcceptorState(
            Ballot(1, 1), Ballot(1, 1), Value(1, b"x" * 10_000))) for i in range(100)))
        grown = registry.get_sample_value("paxoskv_data_dir_bytes")
        assert first is not None and grown is not None and grown >= first + 1_000_000
        assert registry.get_sample_value("paxoskv_storage_freelist_bytes") == 0
        await asyncio.gather(*(s.save(f"k{i}", AcceptorState(
            Ballot(2, 1), Ballot(2, 1), Value(2, None))) for i in range(100)))
        free = registry.get_sample_value("paxoskv_storage_freelist_bytes")
        assert free is not None and free > 500_000
        usage = s.disk_usage()
        size = registry.get_sample_value("paxoskv_volume_size_bytes")
        avail = registry.get_sample_value("paxoskv_volume_free_bytes")
        assert size == usage.volume_size_bytes
        assert avail is not None and 0 < avail <= size
        await s.close()
        # a closed storage: the gauges have no sample, the scrape still answers
        assert registry.get_sample_value("paxoskv_storage_freelist_bytes") is None
        assert b"paxoskv_volume_size_bytes" in generate_latest(registry)
    asyncio.run(run())
