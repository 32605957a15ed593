"""The embedded mode, ``loraplex up``: router, workers and a local Hub on one machine."""
