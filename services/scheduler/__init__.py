"""Stratus scheduler service."""
