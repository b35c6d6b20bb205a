"""GPU tests: they run where ringflow.cuda_available() is True and skip cleanly elsewhere."""
