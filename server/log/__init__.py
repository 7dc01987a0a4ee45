"""Durability primitives: the checksummed event log, its record codec, checkpoint files, compaction."""
