"""Talking to upstream registries: the one HTTP client, authentication, redirects, proxies."""
