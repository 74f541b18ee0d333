"""Pure OCI vocabulary: digests, repository names, references, media types. No I/O."""
