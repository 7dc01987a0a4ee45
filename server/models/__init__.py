"""The shared online models: purchase propensity and segments, the item ranker and its statistics,
the risk detector, and rolling quality measures."""
