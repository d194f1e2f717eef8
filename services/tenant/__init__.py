"""Stratus tenant service."""
