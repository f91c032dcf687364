"""One module per noun: status, kv, leader, snapshot, wal, bench, dev."""
