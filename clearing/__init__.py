"""Citizen-card clearing and settlement engine."""

__version__ = "0.1.0"
