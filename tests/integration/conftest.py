from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cluster import LocalCluster


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path, 3)
    try:
        c.start_all()
        c.wait_ready()
        yield c
    finally:
        c.close()
