"""``portrait training-set``: a point-in-time correct training set from Feast's offline store.

    portrait training-set ENTITIES --out FILE [--features user_profile_v1]

* ``ENTITIES`` is a CSV (``.csv``, ``.csv.gz``) or Parquet file with the columns
  ``user_id`` and ``event_timestamp`` plus any others (labels, ids, ...), which are
  passed through unchanged, in the input's row order. ``event_timestamp`` is ISO-8601
  (a naive time is UTC), unix seconds, or a Parquet timestamp.
* For each row Feast's ``get_historical_features`` returns the user's profile **as of
  that timestamp**: the newest offline row whose time (the profile's as-of event time)
  is at or before it; never a later one. No such row: the features are null (NaN).
* ``--features`` is a feature service (default ``user_profile_v1``) or a comma-separated
  list of feature references (``user_profile:views_1h,user_profile:spend_30d``).
* ``--out`` is written as Parquet for ``.parquet``, else CSV (``.csv``, ``.csv.gz``);
  in CSV, list features (``tags``, ``top_categories``) are JSON arrays and times
  ISO-8601 UTC. The file is written to a temporary name and renamed.
* Environment (as for every Feast client of Portrait, see the README's Feast section):
  ``PORTRAIT_DATA_DIR`` (the server's data dir: registry + offline parquet) and
  ``PORTRAIT_FEAST_REDIS`` (``host:port,db=N``; else derived from ``PORTRAIT_REDIS_URL``
  and ``PORTRAIT_REDIS_CLUSTER``; neither set: the embedded Redis,
  ``127.0.0.1:$PORTRAIT_EMBEDDED_REDIS_PORT,db=0``), and ``PORTRAIT_FEATURE_REPO``. The command
  exports them for Feast like the server, with ``PORTRAIT_FEAST_REDIS_TYPE`` (redis or redis_cluster).
* Exit codes: 0 written, 2 bad input (file, columns, timestamps, features, no registry).

>>> import pandas as pd
>>> df = pd.DataFrame({"user_id": [7, "u2"], "event_timestamp": ["2026-01-01T01:00:00+01:00", 1767225600],
...                    "label": [1, 0]})
>>> clean_entities(df)["event_timestamp"].tolist() == [pd.Timestamp("2026-01-01", tz="UTC")] * 2
True
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from server.log.atomic import atomic_file

HELP = "build a point-in-time correct training set (features as of each row's time) from Feast"
DEFAULT_FEATURES = "user_profile_v1"
_ROW = "__portrait_row"


class TrainingSetError(Exception):
    """Bad input (exit code 2)."""


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".parquet", ".csv.gz", ".csv"):
        if name.endswith(s):
            return s
    raise TrainingSetError(f"{path}: unknown suffix (use .csv, .csv.gz or .parquet)")


def read_entities(path: str | os.PathLike[str]) -> Any:
    """The entities file as a DataFrame (unchecked; see :func:`clean_entities`)."""
    import pandas as pd

    p = Path(path)
    suffix = _suffix(p)
    try:
        if suffix == ".parquet":
            return pd.read_parquet(p)
        return pd.read_csv(p, dtype={"user_id": str})
    except (OSError, ValueError) as exc:
        raise TrainingSetError(f"cannot read {p}: {exc}") from None


def clean_entities(df: Any) -> Any:
    """Check the two key columns; ``user_id`` as string, ``event_timestamp`` as UTC datetimes (copy)."""
    import pandas as pd

    for col in ("user_id", "event_timestamp"):
        if col not in df.columns:
            raise TrainingSetError(f"the entities file needs a {col!r} column (has {list(df.columns)})")
    df = df.copy()
    missing = df.index[df["user_id"].isna()].tolist()
    if missing:
        raise TrainingSetError(f"user_id is empty in rows {_rows(missing)}")
    df["user_id"] = df["user_id"].astype(str)
    df["event_timestamp"] = _to_utc(df["event_timestamp"])
    missing = df.index[df["event_timestamp"].isna()].tolist()
    if missing:
        raise TrainingSetError(f"event_timestamp is empty in rows {_rows(missing)}")
    assert isinstance(df, pd.DataFrame)
    return df


def _rows(index: list[Any]) -> str:
    shown = ", ".join(str(int(i) + 1) for i in index[:10])
    return shown + (f" and {len(index) - 10} more" if len(index) > 10 else "") + " (1-based data rows)"


def _to_utc(col: Any) -> Any:
    """A column of times (datetimes, unix seconds, ISO-8601 strings, or a mix) as UTC timestamps."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(col):
        return col.dt.tz_localize("UTC") if col.dt.tz is None else col.dt.tz_convert("UTC")
    if pd.api.types.is_numeric_dtype(col):
        return pd.to_datetime(col, unit="s", utc=True)
    out = []
    for i, v in enumerate(col.tolist()):
        try:
            if v is None or (isinstance(v, float) and v != v):
                out.append(pd.NaT)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append(pd.Timestamp(v, unit="s", tz="UTC"))
            elif isinstance(v, str) and _is_number(v):
                out.append(pd.Timestamp(float(v), unit="s", tz="UTC"))
            else:
                t = pd.Timestamp(v)
                out.append(t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC"))
        except (ValueError, TypeError, OverflowError):
            raise TrainingSetError(f"event_timestamp in row {i + 1} is not a time: {v!r}") from None
    return pd.Series(pd.to_datetime(out, utc=True), index=col.index)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def feast_redis(settings: Any) -> str:
    """Feast's Redis connection: PORTRAIT_FEAST_REDIS, else from PORTRAIT_REDIS_URL, else the embedded Redis."""
    if not settings.feast_redis and not settings.redis_url:
        return f"127.0.0.1:{settings.embedded_redis_port},db=0"
    return str(settings.feast_redis_connection())


def _features(store: Any, spec: str) -> tuple[Any, list[str]]:
    """What to pass to Feast (a FeatureService or a list of refs) and the output feature column names."""
    if ":" in spec:
        refs = [r.strip() for r in spec.split(",") if r.strip()]
        bad = [r for r in refs if r.count(":") != 1 or not all(r.split(":"))]
        if bad:
            raise TrainingSetError(f"feature references look like view:feature, got {bad}")
        return refs, [r.split(":")[1] for r in refs]
    try:
        service = store.get_feature_service(spec)
    except Exception as exc:  # Feast raises its own FeatureServiceNotFoundException
        raise TrainingSetError(f"no feature service {spec!r} in the registry: {exc}") from None
    names = [f.name for p in service.feature_view_projections for f in p.features]
    return service, names


def build_training_set(store: Any, entities: Any, features: str = DEFAULT_FEATURES, ids: Any = None) -> Any:
    """Entities (after :func:`clean_entities`) joined point-in-time with ``features``; input row order.
    With ``ids`` (a ``Pseudonymizer``) the raw user ids are looked up under their pseudonyms; the output
    keeps the raw ids."""
    what, names = _features(store, features)
    clash = sorted(set(names) & (set(entities.columns) - {"user_id", "event_timestamp"}))
    if clash:
        raise TrainingSetError(f"entity columns {clash} have the names of features; rename them")
    df = entities.copy()
    df[_ROW] = range(len(df))
    if ids is not None and ids.enabled:
        df["user_id"] = [ids.map(u) for u in df["user_id"]]
    # Feast's DuckDB path casts to microseconds and refuses to drop nanoseconds ("would lose data").
    # Feature rows have microsecond times, so flooring is exact: row time <= t  <=>  row time <= floor_us(t).
    df["event_timestamp"] = df["event_timestamp"].dt.floor("us").astype("datetime64[us, UTC]")
    try:
        out = store.get_historical_features(entity_df=df, features=what).to_df()
    except (KeyError, ValueError) as exc:  # e.g. an unknown feature reference
        raise TrainingSetError(f"Feast could not build the training set: {exc}") from None
    if len(out) != len(df):
        raise TrainingSetError(f"Feast returned {len(out)} rows for {len(df)} entity rows")
    out = out.sort_values(_ROW, kind="stable").drop(columns=[_ROW]).reset_index(drop=True)
    out["event_timestamp"] = entities["event_timestamp"].reset_index(drop=True)  # the input's own values
    out["user_id"] = entities["user_id"].reset_index(drop=True)  # raw ids, also when looked up as pseudonyms
    front = [c for c in entities.columns if c in out.columns]
    return out[front + [c for c in out.columns if c not in front]]


def write_table(df: Any, path: str | os.PathLike[str]) -> None:
    """Parquet for ``.parquet``, else CSV (gzipped for ``.csv.gz``; lists as JSON, times ISO-8601 UTC);
    written atomically (``server.log.atomic``)."""
    p = Path(path)
    suffix = _suffix(p)
    if suffix != ".parquet":
        df = df.copy()
        for col in df.columns:
            if df[col].dtype == object and df[col].map(_is_list).any():
                df[col] = df[col].map(lambda v: json.dumps(list(v)) if _is_list(v) else v)
    with atomic_file(p) as fh:
        if suffix == ".parquet":
            df.to_parquet(fh, index=False)
        else:
            df.to_csv(fh, index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ",
                      compression="gzip" if suffix == ".csv.gz" else None)


def _is_list(v: Any) -> bool:
    return hasattr(v, "__len__") and not isinstance(v, (str, bytes, dict))


def open_feature_store() -> Any:
    """The FeatureStore of ``Settings()`` (exports PORTRAIT_DATA_DIR / PORTRAIT_FEAST_REDIS[_TYPE] for Feast)."""
    from server.config import Settings
    from server.store.feast import open_store, set_feast_env

    s = Settings()
    data_dir = Path(s.data_dir).resolve()
    if not (data_dir / "registry.db").exists():
        raise TrainingSetError(f"no Feast registry in {data_dir}: set PORTRAIT_DATA_DIR to the server's data "
                               f"directory (`portrait serve` applies the definitions there at start)")
    set_feast_env(data_dir, feast_redis(s), s.feast_redis_type())
    return open_store(s.feature_repo)


def _pseudonyms() -> Any:
    """The server's pseudonymizer (``PORTRAIT_PSEUDONYM_KEY_FILE``), so raw entity ids find their rows."""
    from server.config import Settings
    from server.domain.pseudonym import Pseudonymizer, PseudonymKeyError

    try:
        return Pseudonymizer.load(Settings().pseudonym_key_file)
    except PseudonymKeyError as exc:
        raise TrainingSetError(str(exc)) from None


# ------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``portrait training-set`` arguments."""
    parser.description = (__doc__ or "").split("\n\n", 1)[0].replace("``", "")
    parser.add_argument("entities", metavar="ENTITIES",
                        help="CSV/Parquet with user_id, event_timestamp (+ label columns, passed through)")
    parser.add_argument("--out", required=True, help="output file: .parquet, else CSV (.csv, .csv.gz)")
    parser.add_argument("--features", default=DEFAULT_FEATURES,
                        help="feature service (default user_profile_v1) or comma-separated view:feature references")


def run(args: argparse.Namespace) -> int:
    """``portrait training-set``: exit 0 written, 2 bad input."""
    try:
        _suffix(Path(args.out))
        entities = clean_entities(read_entities(args.entities))
        df = build_training_set(open_feature_store(), entities, args.features, _pseudonyms())
        write_table(df, args.out)
    except TrainingSetError as exc:
        print(f"portrait training-set: {exc}", file=sys.stderr)
        return 2
    feature_cols = [c for c in df.columns if c not in entities.columns]
    empty = int(df[feature_cols].isna().all(axis=1).sum()) if feature_cols else 0
    print(f"wrote {len(df)} rows x {len(df.columns)} columns to {args.out} "
          f"({empty} rows had no profile at or before their event_timestamp)")
    return 0
