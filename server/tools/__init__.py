"""Commands beside the server: replay (backfill), replay-log (rebuild), evaluate, simulate, event files,
segments, training sets."""
