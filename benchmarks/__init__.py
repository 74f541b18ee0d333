"""Benchmarks for regcache; CI runs them only to keep them working, never to assert speed."""
