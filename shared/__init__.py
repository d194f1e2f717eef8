"""Stratus shared library: settings, messaging, database, resilience, telemetry, events."""
