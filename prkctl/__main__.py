"""`python -m prkctl ...` is the same as `prkctl ...`."""

from prkctl.cli import main

main()
