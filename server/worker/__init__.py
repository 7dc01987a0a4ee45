"""The partition worker: applies events in order to per-user state and the models
(``pipeline``), materializes rows (``materialize``), checkpoints and recovers (``durability``), and
the async face the API delegates to (``core``)."""
