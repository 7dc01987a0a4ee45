"""Runners of the partition workers and the trainer, and what they report (``portrait workers``)."""
