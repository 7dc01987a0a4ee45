"""Feast glue (definitions applied, rows read and written), the online writer child process, the
embedded Redis."""
