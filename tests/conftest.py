"""Fixtures for every test; each fixture module documents what it builds."""
