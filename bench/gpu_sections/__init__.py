"""The sections of ``bench/gpu.py`` (its docstring lists each section and the keys it reports):
``gpu.py`` imports them (``make bench`` runs ``bench/*.py`` only, not these)."""
