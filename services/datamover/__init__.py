"""Stratus datamover service."""
