"""The profile explorer: web pages served beside gRPC (``server.ui.http``), built from ``server.ui.data``."""
