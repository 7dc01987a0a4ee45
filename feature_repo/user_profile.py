"""Portrait's Feast definitions: one entity, two sources, one feature view, one service.

The columns (join key, timestamps, every feature and its type) come from ``server.store.schema``.

The server applies these itself at start (``feast apply`` works too). Paths come from
``PORTRAIT_DATA_DIR`` (made absolute here, so the registry records where the files are).
"""

import os
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, FileSource, PushSource
from feast.data_format import ParquetFormat

from server.store.schema import CREATED_TIMESTAMP, ENTITY, EVENT_TIMESTAMP, feast_fields

_DATA_DIR = os.path.abspath(os.environ.get("PORTRAIT_DATA_DIR", "var"))

# The user whose profile it is; join key user_id.
user = Entity(name="user", join_keys=[ENTITY.name], value_type=ENTITY.kind.feast_type().to_value_type(),
              description="A shop's user")

# Append-only parquet files the server rolls under $PORTRAIT_DATA_DIR/offline/user_profile (one row per flush per user).
user_profile_source = FileSource(
    name="user_profile_source",
    path=os.path.join(_DATA_DIR, "offline", "user_profile", "*.parquet"),
    file_format=ParquetFormat(),
    created_timestamp_column=CREATED_TIMESTAMP.name,
    timestamp_field=EVENT_TIMESTAMP.name,
)

# Push source over the same schema, for writers that push rows through Feast.
user_profile_push_source = PushSource(name="user_profile_push_source", batch_source=user_profile_source)

# Every profile feature; the row timestamp is the profile's as-of time (bumped to be strictly increasing per user).
user_profile_fv = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=timedelta(days=0),
    schema=feast_fields(),
    online=True,
    source=user_profile_push_source,
    tags={"owner": "portrait"},
)

# What services and training jobs ask for: the whole profile, version 1.
user_profile_v1 = FeatureService(name="user_profile_v1", features=[user_profile_fv])
