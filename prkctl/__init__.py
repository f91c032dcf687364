"""prkctl: the PrkDB operator's tool."""
