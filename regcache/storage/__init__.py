"""Storage tiers: where verified objects live. Knows nothing of HTTP."""
