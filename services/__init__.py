"""Stratus services: one folder each, the same small set of modules."""
