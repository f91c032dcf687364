"""PrkDB: a partitioned key-value database replicated with Raft."""

__version__ = "0.1.0"
