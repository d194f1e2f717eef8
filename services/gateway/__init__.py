"""Stratus gateway service."""
