"""Pure per-user logic, no I/O and no transport: events and validation, windows, profiles and tags,
dedupe, pending labels, erasure bookkeeping, pseudonyms, domain errors."""
