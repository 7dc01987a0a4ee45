"""Portrait's Feast definitions: one entity, two sources, one feature view, one service.

The server applies these itself at start (``feast apply`` works too). Paths come from
``PORTRAIT_DATA_DIR`` (made absolute here, so the registry records where the files are).
"""

import os
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Array, Float64, Int64, String

_DATA_DIR = os.path.abspath(os.environ.get("PORTRAIT_DATA_DIR", "var"))

_COUNTS = ("views", "clicks", "carts", "remove_from_carts", "favorites", "purchases", "searches")
_WINDOWS = ("1h", "24h", "7d", "30d")
_SCALARS = (
    "spend_7d", "spend_30d", "lifetime_events", "lifetime_purchases", "lifetime_spend", "avg_order_value",
    "first_seen_ts", "last_event_ts", "last_purchase_ts", "sessions_7d", "conversion_rate_30d",
    "preferred_hour", "avg_viewed_price_30d", "avg_purchased_price_30d",
    "updated_at_ts", "purchase_propensity", "risk_score",
)

# The user whose profile it is; join key user_id.
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A shop's user")

# Append-only parquet files the server rolls under $PORTRAIT_DATA_DIR/offline/user_profile (one row per flush per user).
user_profile_source = FileSource(
    name="user_profile_source",
    path=os.path.join(_DATA_DIR, "offline", "user_profile", "*.parquet"),
    file_format=ParquetFormat(),
    created_timestamp_column="created_timestamp",
    timestamp_field="event_timestamp",
)

# Push source over the same schema, for writers that push rows through Feast.
user_profile_push_source = PushSource(name="user_profile_push_source", batch_source=user_profile_source)

# Every profile feature; the row timestamp is the profile's as-of time (bumped to be strictly increasing per user).
user_profile_fv = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=timedelta(days=0),
    schema=[
        *(Field(name=f"{c}_{w}", dtype=Float64) for c in _COUNTS for w in _WINDOWS),
        *(Field(name=n, dtype=Float64) for n in _SCALARS),
        Field(name="profile_version", dtype=Int64),
        Field(name="segment", dtype=Int64),
        Field(name="tags", dtype=Array(String)),
        Field(name="top_categories", dtype=Array(String)),
        Field(name="age", dtype=Int64),
        Field(name="gender", dtype=String),
        Field(name="region", dtype=String),
    ],
    online=True,
    source=user_profile_push_source,
    tags={"owner": "portrait"},
)

# What services and training jobs ask for: the whole profile, version 1.
user_profile_v1 = FeatureService(name="user_profile_v1", features=[user_profile_fv])
