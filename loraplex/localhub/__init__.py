"""A Hub-compatible HTTP server over a folder of repos, for ``loraplex up --models`` and tests."""
