"""Worker throughput pieces: ``bench/worker_throughput.py`` imports them (``make bench``
runs ``bench/*.py`` only, not these)."""
