"""Developer tooling: run the Stratus services as local processes (``python -m tools.cluster``)."""
