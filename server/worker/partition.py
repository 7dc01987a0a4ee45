"""The partition worker: applies events to the per-user state of the users it owns.

validate -> dedupe -> profile -> pending decisions -> item decisions -> risk inputs -> segment -> rows.

It owns, per user, the profile (windows, sessions, affinities), the recent items, the dedupe ids,
the pending decisions of both models and the risk inputs; the shared models are the trainer's
(``server.models.trainer``): the worker scores with the version it publishes and sends it what to
learn (resolved decisions with their frozen inputs, user and event vectors, item statistics).
Transport-agnostic and synchronous: the server calls it from its event loop only, so state has
exactly one writer and needs no locks.

>>> from prometheus_client import CollectorRegistry
>>> from server.domain.events import Event, EventType
>>> w = PartitionWorker(WorkerConfig(), Metrics(CollectorRegistry()))
>>> out = w.track(Event("e1", "u1", EventType.VIEW, 1_700_000_000.0, item_id="i1", category="c1"), now=1_700_000_000.0)
>>> out.duplicate, out.version
(False, 1)
>>> w.track(Event("e1", "u1", EventType.VIEW, 1_700_000_000.0, item_id="i1"), now=1_700_000_000.0).duplicate
True
>>> w.row("u1")["views_1h"], w.row("u1")["top_categories"], w.trainer.version > 0
(1.0, ['c1'], True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.domain.dedupe import Dedupe
from server.domain.erasure import Erasures
from server.domain.errors import FailedPrecondition, InvalidArgument
from server.domain.events import MAX_GENDER_LEN, MAX_ID_LEN, MAX_PRICE, Event, EventType, FieldError, validate
from server.domain.labels import DelayedLabels
from server.domain.profile import TagRules, UserProfile
from server.metrics import WORKER_STAGES, Metrics
from server.models.risk import UserRisk
from server.models.trainer import (
    ITEM,
    ITEM_STATS,
    PROPENSITY,
    RECOMMEND,
    EventVector,
    Labelled,
    Trainer,
    TrainerConfig,
    UserVector,
)
from server.models.user import Propensity, Segmenter
from server.worker.items import ItemDecisions
from server.worker.timers import Timers

__all__ = ["ITEM", "PROPENSITY", "Outcome", "PartitionWorker", "WorkerConfig"]

MAX_CANDIDATES = 500
DEFAULT_RECOMMEND, MAX_RECOMMEND = 10, 100
_COLD_START = UserProfile().features()  # an unknown user's features (all zero)
STATE_FORMAT = 1
"""Version of ``PartitionWorker.state()``'s layout (``server.worker.snapshot`` records it)."""


ROW_TIME_MARGIN_US = 1_000  # see PartitionWorker.guard_row_times


@dataclass(frozen=True)
class WorkerConfig:
    """The partition worker's knobs (taken from ``Settings``), with its in-process trainer's."""

    propensity_horizon_s: float = 3600.0
    decision_interval_s: float = 300.0
    allowed_lateness_s: float = 60.0
    max_pending_labels: int = 1_000_000
    dedupe_capacity: int = 1_000_000
    tag_rules: TagRules = field(default_factory=TagRules)
    item_horizon_s: float = 86_400.0
    """Item model horizon H_item: 'will the user buy this item within H_item after touching it?'."""
    item_decision_interval_s: float = 3600.0
    """At most one item decision per (user, item, action) per this many seconds."""
    max_pending_item_labels: int = 500_000
    """Hard cap on pending item decisions (~650 bytes each); beyond it new ones are not recorded."""
    item_decision_sample: float = 1.0
    """Share of (user, item) pairs whose decisions are recorded (deterministic); lower it at high traffic."""
    item_history: int = 20
    """Recently touched items remembered per user (history features of the item model)."""
    item_counts: int = 128
    """Distinct items per user whose touch counts the item model reads (``ItemCounts``; 36 bytes each)."""
    labels_per_event: int = 16
    """Overdue decisions resolved (and learnt) per event and model, at most: after a jump of event time
    (a replay, a paused producer) the backlog is spread over the next events instead of one long stall."""
    timers_per_event: int = 16
    """Timers fired (profiles recomputed because time alone changed them) per event, at most: a burst of
    expiries is spread over the next events (and the idle ticks) so that no event waits behind it."""
    risk_threshold: float = 0.94
    """A user whose decayed risk score is at least this gets the ``suspicious`` tag."""
    erasure_salt: bytes = b""
    """Key of the digests erased users are held by (``server.domain.erasure``; the server uses its data dir's)."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """The shared models' knobs (segments, quality window, items held)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one event."""

    duplicate: bool
    version: int
    propensity: float
    segment: int
    suppressed: bool = False


class PartitionWorker:
    """Owns its users' state; one call per event, one thread. ``trainer`` holds the shared models (a new
    one unless given: in one process every worker shares it)."""

    def __init__(self, config: WorkerConfig, metrics: Metrics, trainer: Trainer | None = None,
                 on_change: Callable[[str], Any] | None = None,
                 on_label: Callable[[str, Any, bool, float], Any] | None = None,
                 on_timer: Callable[[str], Any] | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.trainer = trainer if trainer is not None else Trainer(config.trainer)
        self.on_change = on_change
        self.on_label = on_label  # (model, decision, label, event time at resolution): for replays/evaluation
        self.on_timer = on_timer  # a user time alone changed (default: on_change)
        self.timers_held: Callable[[], bool] | None = None  # True: the rows of fired timers wait to be written,
        # so events fire none (the server: the materializer's timer queue holds a flush's worth)
        self.profiles: dict[str, UserProfile] = {}
        self.dedupe = Dedupe(config.dedupe_capacity)
        self.labels = DelayedLabels(config.propensity_horizon_s, config.decision_interval_s,
                                    config.allowed_lateness_s, config.max_pending_labels)
        self.items = ItemDecisions(config.item_horizon_s, config.item_decision_interval_s, config.allowed_lateness_s,
                                   config.max_pending_item_labels, config.item_history,
                                   sample=config.item_decision_sample, counted_items=config.item_counts)
        self.risk = UserRisk(threshold=config.risk_threshold)
        self.segment_sizes = [0] * config.trainer.segments
        self.offset = -1  # the log offset of the event being applied (set by the caller; item touches carry it)
        metrics.export_segments(config.trainer.segments)
        self.row_ts: dict[str, int] = {}
        self.erasures = Erasures(config.erasure_salt)
        self.timers = Timers()
        self.max_event_time = -math.inf
        self.wall_watermark = -math.inf  # moved by ``advance`` (the server's idle ticks)
        # the per-event counters, resolved once (a labels() lookup per event was measurable)
        self._counted = {(t, o): metrics.events.labels(event_type=t.name.lower(), outcome=o)
                         for t in EventType for o in ("accepted", "duplicate", "suppressed")}
        self._stage = {s: metrics.stage_duration.labels(stage=s) for s in WORKER_STAGES}
        self._labelled = {(m, y): metrics.labels.labels(model=m, label="positive" if y else "negative")
                          for m in (PROPENSITY, ITEM) for y in (True, False)}

    # -- ingest -------------------------------------------------------------------------------
    def check(self, e: Event, now: float | None = None) -> FieldError | None:
        """Validation only (changes nothing)."""
        t0 = time.perf_counter()
        err = validate(e, time.time() if now is None else now)
        self._stage["validate"].observe(time.perf_counter() - t0)
        if err:
            self.metrics.events.labels(event_type=_type_label(e.type), outcome="rejected").inc()
        return err

    def track(self, e: Event, now: float | None = None) -> Outcome:
        """Validate and apply one event; raise ``InvalidArgument`` naming the field if it is invalid."""
        err = self.check(e, now)
        if err:
            raise InvalidArgument(err.message, field=err.field)
        return self.apply(e)

    def apply(self, e: Event, score: bool = True) -> Outcome:
        """Apply one *validated* event (dedupe, profile, labels, models).

        With ``score=False`` (bulk ingest) the propensity is computed only when a labelled
        decision is recorded; otherwise it is left stale and scored when the row is built
        (``row``), with the model of that moment — the returned ``Outcome.propensity`` is NaN.
        """
        stage = self._stage
        etype = EventType(e.type)
        t0 = time.perf_counter()
        if self.erasures.suppressed and self.erasures.is_suppressed(e.user_id):
            self._counted[etype, "suppressed"].inc()  # an erased user: nothing is stored
            return Outcome(False, 0, math.nan, -1, suppressed=True)
        profile = self.profiles.get(e.user_id)
        if e.event_id in self.dedupe:
            stage["dedupe"].observe(time.perf_counter() - t0)
            self._counted[etype, "duplicate"].inc()
            if profile is None:
                return Outcome(True, 0, 0.0, -1)
            return Outcome(True, profile.version, self._score(e.user_id) if score else math.nan, profile.segment)
        if profile is None:
            profile = self.profiles[e.user_id] = UserProfile()
        self.dedupe.add(e.event_id, profile)  # owned by the profile: an erasure forgets the user's ids
        t1 = time.perf_counter()
        stage["dedupe"].observe(t1 - t0)
        t = float(e.event_time)  # type: ignore[arg-type]
        if etype == EventType.PURCHASE:
            self._learn(self.labels.on_purchase(e.user_id, t), t)
        if etype == EventType.PURCHASE and e.item_id:  # the recommendation ranker learns which item was chosen,
            feed = self.trainer.feed  # among the candidates as they were just before
            for example, bought in self.items.purchase_examples(e, profile.top_categories(), t, self.trainer):
                feed(Labelled(RECOMMEND, example, math.nan, bought))
        previous_t = profile.last_event
        profile.update(e)
        profile.version += 1
        features = profile.features()
        t2 = time.perf_counter()
        stage["profile"].observe(t2 - t1)
        models = self.trainer  # the published version (in one process: the live models)
        if score or self.labels.wants(e.user_id, t):
            x = Propensity.vector(features, int(etype), t)
            profile.propensity = models.propensity.predict(x)
            self.labels.decide(e.user_id, t, x, profile.propensity)
        else:
            profile.propensity = math.nan
        self._learn(self.labels.advance(t, self.config.labels_per_event), t)
        t3 = time.perf_counter()
        stage["labels"].observe(t3 - t2)
        if e.item_id:
            resolved, delta = self.items.observe(e, features, profile, t, models, self.offset)
            if delta is not None:
                models.feed(delta)
            self._learn(resolved, t, ITEM)
        self._learn(self.items.advance(t, self.config.labels_per_event), t, ITEM)
        t4 = time.perf_counter()
        stage["ranking"].observe(t4 - t3)
        x_risk = self.risk.vector(e, features, previous_t)
        risk = models.risk.score(x_risk)
        models.feed(EventVector(x_risk))
        self.risk.record(e, risk)
        self.metrics.risk_score.observe(risk)
        t5 = time.perf_counter()
        stage["risk"].observe(t5 - t4)
        x_segment = Segmenter.vector(features, profile.category_count(), t)
        models.feed(UserVector(x_segment))
        segment = models.segmenter.predict(x_segment)
        if segment != profile.segment:
            if profile.segment >= 0:
                self.segment_sizes[profile.segment] -= 1
            self.segment_sizes[segment] += 1
            profile.segment = segment
        stage["models"].observe(time.perf_counter() - t5)
        self._counted[etype, "accepted"].inc()
        self.timers.set(e.user_id, profile.next_change(self.config.tag_rules))
        if t > self.max_event_time:
            self.max_event_time = t
        if self.on_change:
            self.on_change(e.user_id)
        if self.timers_held is None or not self.timers_held():
            self.fire(self.config.timers_per_event)
        return Outcome(False, profile.version, profile.propensity, segment)

    # -- time ---------------------------------------------------------------------------------------
    @property
    def watermark(self) -> float:
        """Max event time seen minus the allowed lateness, or the wall clock's (``advance``) if later."""
        return max(self.max_event_time - self.config.allowed_lateness_s, self.wall_watermark)

    def advance(self, now: float, limit: int) -> int:
        """Let the wall clock ``now`` move the watermark (the server calls it while no event arrives: a replay
        of an old file moves it by event time only), then fire up to ``limit`` timers; returns how many."""
        self.wall_watermark = max(self.wall_watermark, now - self.config.allowed_lateness_s)
        return self.fire(limit)

    def fire(self, limit: int) -> int:
        """Recompute, as of the watermark, up to ``limit`` profiles whose timer it has passed (time alone changed
        a served value), hand each to ``on_timer`` (or ``on_change``: re-materialized online and offline) and set
        its next timer; returns how many fired."""
        w = self.watermark
        due = self.timers.due(w, limit)
        rules = self.config.tag_rules
        changed = self.on_timer or self.on_change
        for user in due:
            p = self.profiles[user]
            if w > p.as_of:
                p.as_of = w
            self.timers.set(user, p.next_change(rules))
            if changed:
                changed(user)
        if due:
            self.metrics.timers_fired.inc(len(due))
        return len(due)

    def _score(self, user_id: str) -> float:
        p = self.profiles[user_id]
        self._ensure_score(p)
        return p.propensity

    def _ensure_score(self, p: UserProfile) -> None:
        """Score a profile left stale by bulk ingest, with the current model, as of its latest event."""
        if not math.isnan(p.propensity):
            return
        if p.last_event is None:
            p.propensity = 0.0
            return
        p.propensity = self.trainer.propensity.predict(Propensity.vector(p.features(), p.last_type, p.updated_at))

    def _learn(self, resolved: list[Any], t: float, model: str = PROPENSITY) -> None:
        """Send ``model``'s resolved decisions to the trainer (their inputs as frozen at the decision)."""
        feed, counted = self.trainer.feed, self._labelled
        for decision, label in resolved:
            feed(Labelled(model, decision.x, decision.p, label))
            counted[model, label].inc()
            if self.on_label:
                self.on_label(model, decision, label, t)

    def update_attributes(self, user_id: str, age: int, gender: str, region: str) -> int:
        """Replace a user's basic attributes (creating the user); return the new version."""
        if not user_id or len(user_id) > MAX_ID_LEN:
            raise InvalidArgument(f"user_id must be 1..{MAX_ID_LEN} characters", field="user_id")
        if not 0 <= age <= 150:
            raise InvalidArgument("attributes.age must be within 0..150", field="attributes.age")
        if len(gender) > MAX_GENDER_LEN:
            raise InvalidArgument(f"attributes.gender is longer than {MAX_GENDER_LEN} characters",
                                  field="attributes.gender")
        if len(region) > MAX_ID_LEN:
            raise InvalidArgument(f"attributes.region is longer than {MAX_ID_LEN} characters",
                                  field="attributes.region")
        if self.erasures.is_suppressed(user_id):
            raise FailedPrecondition("the user was erased and is suppressed (an admin can lift it)", field="user_id")
        profile = self.profiles.get(user_id)
        if profile is None:
            profile = self.profiles[user_id] = UserProfile()
        profile.set_attributes(age, gender, region)
        profile.version += 1
        if self.on_change:
            self.on_change(user_id)
        return profile.version

    # -- erasure ------------------------------------------------------------------------------------
    def erase(self, user_id: str, offset: int = -1, at: float | None = None) -> bool:
        """Drop everything held for ``user_id`` (profile, pending labels, item history, risk, dedupe ids)
        and suppress its later events; ``offset``/``at`` locate the erasure record (for compaction).
        True if anything was held."""
        self.erasures.add(self.erasures.digest(user_id), offset, at)
        return self._drop(user_id)

    def erase_digest(self, digest: str, offset: int = -1, at: float | None = None) -> str | None:
        """``erase`` by digest (log replay and compaction, which never see the id): O(users) scan;
        returns the user found, if any."""
        self.erasures.add(digest, offset, at)
        for user_id in self.profiles:
            if self.erasures.digest(user_id) == digest:
                self._drop(user_id)
                return user_id
        return None

    def unsuppress(self, digest: str, at: float | None = None) -> bool:
        """Accept the user's events again; True if they were suppressed."""
        return self.erasures.unsuppress(digest, at)

    def _drop(self, user_id: str) -> bool:
        profile = self.profiles.pop(user_id, None)
        held = profile is not None
        if profile is not None:
            if profile.segment >= 0:
                self.segment_sizes[profile.segment] -= 1
            self.dedupe.forget(profile)
        held = self.labels.drop_user(user_id) or held
        held = self.items.drop_user(user_id) or held
        held = self.risk.drop_user(user_id) or held
        self.row_ts.pop(user_id, None)
        self.timers.cancel(user_id)
        return held

    # -- checkpoints --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The per-user state by name (``server.log.checkpoint`` writes it apart from the trainer's). Dedupe
        ids are listed with the user owning them (in memory they point at the profile object)."""
        owner = {id(p): u for u, p in self.profiles.items()}
        return {
            "format": STATE_FORMAT, "profiles": self.profiles,
            "dedupe": [(k, owner.get(id(v))) for k, v in self.dedupe.owners()],
            "labels": self.labels, "item_history": self.items.history, "item_labels": self.items.labels,
            "risk": self.risk, "segment_sizes": self.segment_sizes, "row_ts": self.row_ts,
            "erasures": self.erasures, "watermark": (self.max_event_time, self.wall_watermark),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Replace the per-user state with a ``state()`` taken earlier (the wiring and the trainer stay)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"worker state format {state.get('format')!r}, expected {STATE_FORMAT}")
        self.profiles = state["profiles"]
        self.dedupe = Dedupe(self.config.dedupe_capacity)
        for event_id, user in state["dedupe"]:
            self.dedupe.add(event_id, self.profiles.get(user) if user is not None else None)
        self.labels = state["labels"]
        self.items.history, self.items.labels = state["item_history"], state["item_labels"]
        self.risk = state["risk"]
        self.segment_sizes = state["segment_sizes"]
        self.row_ts = state["row_ts"]
        self.erasures = state["erasures"]
        self.max_event_time, self.wall_watermark = state["watermark"]
        self.timers = Timers()  # derived from the profiles: recovered exactly
        rules = self.config.tag_rules
        for user, p in self.profiles.items():
            self.timers.set(user, p.next_change(rules))

    def guard_row_times(self) -> None:
        """After a recovery: start every user's next row time above any time a row may have been stored with
        since the checkpoint (those times are not in it). A row's time is its as-of time, bumped 1 µs past the
        previous row's when the as-of time did not move (a late event, a rewrite after a recovery), so a stored
        time is at most the as-of time + the user's version + the recoveries since: ``ROW_TIME_MARGIN_US`` covers
        a thousand. Without this a late event right after a crash built a row no newer than the stored one, and
        Feast's Redis writer skipped it (measured: a 3-worker kill left a user at version 21 of 31 online)."""
        for user, p in self.profiles.items():
            floor = int(p.current * 1_000_000) + p.version + ROW_TIME_MARGIN_US
            if self.row_ts.get(user, 0) < floor:
                self.row_ts[user] = floor

    # -- reads --------------------------------------------------------------------------------
    def row(self, user_id: str) -> dict[str, Any]:
        """The user's current profile as one feature row.

        Values are as of ``as_of_ts`` (``UserProfile.current``: the latest event, or the later watermark a timer
        brought the profile to); ``event_timestamp_us`` is that time, bumped so that it strictly increases per
        user (Feast's Redis writer silently skips a row whose timestamp is <= the stored one, e.g. after a late
        event that left the as-of time unchanged).
        """
        p = self.profiles[user_id]
        self._ensure_score(p)
        asof = p.current
        features = p.features(asof)
        ts = max(int(asof * 1_000_000), self.row_ts.get(user_id, 0) + 1)
        self.row_ts[user_id] = ts
        row: dict[str, Any] = dict(features)
        row.update(
            user_id=user_id, event_timestamp_us=ts, updated_at_ts=p.updated_at, as_of_ts=asof,
            purchase_propensity=p.propensity, segment=p.segment, profile_version=p.version,
            tags=p.tags(features, self.config.tag_rules, asof), top_categories=p.top_categories(),
            age=p.age, gender=p.gender, region=p.region, risk_score=self.risk.user_risk(user_id, asof),
        )
        if row["risk_score"] >= self.risk.threshold:
            row["tags"] = sorted([*row["tags"], "suspicious"])
        return row

    def score(self, user_id: str, candidates: Sequence[tuple[str, str, float]]) -> list[tuple[str, float]]:
        """Rank ``(item_id, category, price)`` candidates for a user, best first: (item_id, P(bought within
        ``item_horizon_s`` if viewed now)). An unknown user gets cold-start scores (an empty profile).

        "Now" is the latest event time seen (event time, like every feature). Ties keep the request order.
        """
        if not user_id or len(user_id) > MAX_ID_LEN:
            raise InvalidArgument(f"user_id must be 1..{MAX_ID_LEN} characters", field="user_id")
        if len(candidates) > MAX_CANDIDATES:
            raise InvalidArgument(f"at most {MAX_CANDIDATES} candidates, got {len(candidates)}", field="candidates")
        for i, (item, category, price) in enumerate(candidates):
            if not item or len(item) > MAX_ID_LEN:
                raise InvalidArgument(f"item_id must be 1..{MAX_ID_LEN} characters", field=f"candidates[{i}].item_id")
            if len(category) > MAX_ID_LEN:
                raise InvalidArgument(f"category is longer than {MAX_ID_LEN} characters",
                                      field=f"candidates[{i}].category")
            if not math.isfinite(price) or not 0 <= price <= MAX_PRICE:
                raise InvalidArgument(f"price must be a finite number in 0..{MAX_PRICE:g}",
                                      field=f"candidates[{i}].price")
        p = self.profiles.get(user_id)
        t = max(self.items.labels.max_time, 0.0)
        if p is None or p.last_event is None:
            features, top = _COLD_START, []
        else:
            features, top, t = p.features(), p.top_categories(), max(t, p.updated_at)
        scores = self.items.score(user_id, features, top, candidates, t, self.trainer)
        order = sorted(range(len(candidates)), key=lambda i: -scores[i])
        return [(candidates[i][0], scores[i]) for i in order]

    def recommend(self, user_id: str, k: int = DEFAULT_RECOMMEND) -> list[tuple[str, float]]:
        """The top ``k`` (1..``MAX_RECOMMEND``) items for a user, best first, from candidates generated online
        (``ItemDecisions.candidates``) ranked by the item model like ``score``; an unknown user gets the most
        touched items, ranked as for a new user (cold start)."""
        if not user_id or len(user_id) > MAX_ID_LEN:
            raise InvalidArgument(f"user_id must be 1..{MAX_ID_LEN} characters", field="user_id")
        if not 1 <= k <= MAX_RECOMMEND:
            raise InvalidArgument(f"k must be 1..{MAX_RECOMMEND}, got {k}", field="k")
        p = self.profiles.get(user_id)
        t = max(self.items.labels.max_time, 0.0)
        top = [] if p is None or p.last_event is None else p.top_categories()
        if p is not None and p.last_event is not None:
            t = max(t, p.updated_at)
        return self.items.recommend(user_id, top, k, t, self.trainer)

    def refresh_gauges(self, quality: bool = True) -> None:
        """Update the gauges that summarise state (called periodically, not per event); ``quality``
        also recomputes the exact rolling AUC / log loss (O(window log window): not every second)."""
        m = self.metrics
        m.users.set(len(self.profiles))
        m.timers_pending.set(len(self.timers))
        if self.watermark > -math.inf:
            m.watermark.set(self.watermark)
        m.suppressed_users.set(len(self.erasures.suppressed))
        m.erasures_pending_compaction.set(len(self.erasures.pending))
        m.pending_labels.labels(model=PROPENSITY).set(len(self.labels))
        m.pending_labels.labels(model=ITEM).set(len(self.items.labels))
        for i, n in enumerate(self.segment_sizes):
            m.segment_users.labels(segment=str(i)).set(n)
        stale = self.trainer.staleness_s()  # 0 in one process (the live models); a trainer process: its lag
        for model, version in self.trainer.versions.items():
            m.model_version.labels(model=model).set(version)
            m.model_staleness.labels(model=model).set(0.0 if model == ITEM_STATS else stale)
        if not quality:
            return
        trainer = self.trainer
        m.model_roc_auc.labels(model=PROPENSITY).set(trainer.propensity_quality.roc_auc())
        m.model_log_loss.labels(model=PROPENSITY).set(trainer.propensity_quality.log_loss())
        m.model_roc_auc.labels(model=ITEM).set(trainer.item_quality.roc_auc())
        m.model_log_loss.labels(model=ITEM).set(trainer.item_quality.log_loss())


def _type_label(t: int) -> str:
    try:
        return EventType(t).name.lower()
    except ValueError:
        return "unknown"
