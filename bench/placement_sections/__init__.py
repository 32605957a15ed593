"""Parts of ``bench/placement.py`` (``make bench`` runs ``bench/*.py`` only, not these)."""
