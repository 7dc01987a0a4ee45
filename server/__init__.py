"""Portrait: real-time e-commerce user profiles (ingest -> profile -> models -> features -> metrics)."""

__version__ = "0.1.0"
