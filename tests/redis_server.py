"""Placeholder: replaced by the redis-server fixtures (being written)."""
