"""Blob and manifest services: cache lookups, single-flight downloads, what may be stored."""
