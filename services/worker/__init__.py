"""Stratus worker service."""
