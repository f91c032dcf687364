from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.cluster import LocalCluster


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One 3-node, 4-partition cluster shared by a module's tests (starting one costs ~2 s).

    Tests that kill nodes come last in their module.
    """
    c = LocalCluster(tmp_path_factory.mktemp("live"), 3, partitions=4)
    try:
        c.start_all()
        c.wait_ready()
        yield c
    finally:
        c.close()
