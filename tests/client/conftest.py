from __future__ import annotations

import pytest
import trio

from tests.client.fake import FakeCluster


@pytest.fixture
async def cluster(nursery: trio.Nursery) -> FakeCluster:
    return FakeCluster(nursery)
