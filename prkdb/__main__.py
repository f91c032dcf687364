"""`python -m prkdb ...` is the same as `prkdb ...`."""

from prkdb.server.main import main

main()
