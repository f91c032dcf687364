from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from tests.client.fake import FakeCluster
from tests.client.fronts import FRONTS, Front, TcpFake, fronts_fixture_iter


@pytest.fixture
async def cluster(nursery: trio.Nursery) -> FakeCluster:
    return FakeCluster(nursery)


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest) -> Iterator[Front]:
    """Each SDK front end in turn (trio, asyncio, sync) behind blocking calls."""
    yield from fronts_fixture_iter(request.param)


@pytest.fixture
def tcp_fake() -> Iterator[TcpFake]:
    """A fake 3-node cluster on 127.0.0.1 ports (tests/client/fronts.py)."""
    fake = TcpFake()
    try:
        yield fake
    finally:
        fake.close()
