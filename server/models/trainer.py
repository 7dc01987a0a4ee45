"""The trainer: the single writer of the shared models.

Partition workers own per-user state; every model that learns from all users lives here —
the propensity model, the item model, the KMeans segments, the risk detector, item and category
popularity, and the rolling quality of both supervised models. Workers never write them: they
send the trainer what it learns from (``feed``) and score with the version it publishes.

What a worker sends (nothing names a user):

- ``Labelled``: a decision whose label is now known, with the inputs frozen when it was made;
- ``UserVector``: a user's segment input after an event (the segments learn it);
- ``EventVector``: an event's risk input (the detector learns it);
- ``ItemStats``: one touch of an item (and its category) for the popularity statistics, with the items
  touched before it in the same session (co-visitation, for recommendations).

In one process the trainer publishes after every message: the version a worker reads is the live
object (``version`` counts the messages learnt, ``versions`` the messages each model learnt), so outputs
equal those of a single pipeline. Across
processes (the scale-out issue) the same messages travel over a log and versions are copies.

>>> from server.domain.profile import UserProfile
>>> t = Trainer(TrainerConfig(segments=2))
>>> f = UserProfile().features()
>>> x = t.propensity.vector(f, event_type=1, t=0.0)
>>> t.feed(Labelled(PROPENSITY, x, t.propensity.predict(x), True))
>>> t.feed(UserVector(t.segmenter.vector(f, 0, 0.0)))
>>> t.version, len(t.propensity_quality), t.versions["propensity"], t.versions["segments"], t.versions["risk"]
(2, 1, 1, 1, 0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from server.domain.units import DAY
from server.models.candidates import CoVisits, TopItems
from server.models.itemstats import Popularity
from server.models.next_item import NextItemRanker
from server.models.quality import RollingQuality
from server.models.ranking import ItemModel
from server.models.risk import RiskDetector
from server.models.user import Propensity, Segmenter

PROPENSITY = "propensity"
ITEM = "item"
MODELS = (PROPENSITY, ITEM)
RECOMMEND = "recommend"  # the recommendation ranker (``NextItemRanker``): learnt at purchases, no rolling quality
SEGMENTS, RISK, ITEM_STATS = "segments", "risk", "item_stats"
#: Every shared model with a version of its own (``Trainer.versions``; ``portrait_model_version{model}``).
VERSIONED = (PROPENSITY, ITEM, RECOMMEND, SEGMENTS, RISK, ITEM_STATS)
UNLEARNT = "unlearnt"
"""A trainer state's optional key: messages fed but not yet in its models, learnt in order on load
(``server.models.remote``: the state a worker checkpoints beside a trainer process)."""


@dataclass(frozen=True, slots=True)
class Labelled:
    """A resolved decision of ``model``: inputs ``x`` frozen at the decision, the prediction ``p`` made then."""

    model: str
    x: Sequence[float]
    p: float
    label: bool


@dataclass(frozen=True, slots=True)
class UserVector:
    """A user's segment input (``Segmenter.vector``) after one of its events."""

    x: Sequence[float]


@dataclass(frozen=True, slots=True)
class EventVector:
    """An event's risk input (``server.models.risk.inputs``)."""

    x: dict[str, float]


@dataclass(frozen=True, slots=True)
class ItemStats:
    """One touch (``slot``: view, cart, ... of ``server.models.itemstats``) of an item at event time ``t``."""

    item: str
    category: str
    t: float
    slot: int
    price: float
    before: tuple[tuple[str, str], ...] = ()
    """(item, category) touched earlier in the same session, most recent first (none of them is ``item``)."""
    offset: int = -1
    """The log offset of the event it comes from (-1: not logged): with several workers, the others fold each
    worker's touches once by it (``server.models.shared.fold_entry``)."""


#: How much a touch says about an item, by slot (views, clicks, carts, favorites, removes, purchases):
#: the weights of co-visitation and of the top items (recommendation candidates).
TOUCH_WEIGHT = (1.0, 1.0, 2.0, 2.0, 0.0, 4.0)


@dataclass(frozen=True)
class TrainerConfig:
    """The shared models' knobs (taken from ``Settings``)."""

    segments: int = 8
    quality_window: int = 10_000
    max_items: int = 200_000
    """Items with popularity/conversion statistics in memory (least recently seen dropped first)."""
    max_categories: int = 10_000
    popularity_half_life_s: float = 3 * DAY
    covisit_items: int = 100_000
    """Items with co-visited neighbours in memory (recommendation candidates; least recently touched dropped)."""
    covisit_neighbours: int = 20
    top_items_per_category: int = 30


class Trainer:
    """Holds and learns the shared models; one call per message, one writer."""

    def __init__(self, config: TrainerConfig) -> None:
        self.config = config
        self.propensity = Propensity()
        self.propensity_quality = RollingQuality(config.quality_window)
        self.item_model = ItemModel()
        self.item_quality = RollingQuality(config.quality_window)
        self.segmenter = Segmenter(k=config.segments)
        self.risk = RiskDetector()
        self.items = Popularity(config.popularity_half_life_s, config.max_items)
        self.categories = Popularity(config.popularity_half_life_s, config.max_categories)
        self.covisits, self.top_items = self._candidates(config)
        self.next_item = NextItemRanker()
        self.version = 0
        self.versions = dict.fromkeys(VERSIONED, 0)

    @staticmethod
    def _candidates(config: TrainerConfig) -> tuple[CoVisits, TopItems]:
        return (CoVisits(config.covisit_neighbours, config.covisit_items, config.popularity_half_life_s),
                TopItems(config.top_items_per_category, config.max_categories + 1, config.popularity_half_life_s))

    def feed(self, message: Labelled | UserVector | EventVector | ItemStats) -> None:
        """Learn one message, then publish (in one process: ``version`` moves on)."""
        if type(message) is Labelled:
            self.quality(message)
        self.learn(message)

    def quality(self, message: Labelled) -> None:
        """Record a resolved decision's prediction and label in its model's rolling quality window."""
        if message.model == PROPENSITY:
            self.propensity_quality.add(message.p, message.label)
        elif message.model == ITEM:
            self.item_quality.add(message.p, message.label)

    def learn(self, message: Labelled | UserVector | EventVector | ItemStats) -> None:
        """Learn one message (no quality bookkeeping: ``feed`` does both)."""
        if type(message) is ItemStats:
            self.items.add(message.item, message.t, message.slot, message.price)
            if message.category:
                self.categories.add(message.category, message.t, message.slot)
            w = TOUCH_WEIGHT[message.slot]
            if w:
                self.covisits.add(message.item, message.category, message.before, message.t, w)
                self.top_items.add("", message.item, message.t, w)
                if message.category:
                    self.top_items.add(message.category, message.item, message.t, w)
        elif type(message) is EventVector:
            self.risk.learn(message.x)
        elif type(message) is UserVector:
            self.segmenter.learn(message.x)
        elif type(message) is Labelled:
            if message.model == PROPENSITY:
                self.propensity.learn(message.x, message.label)
            elif message.model == RECOMMEND:
                self.next_item.learn(message.x, message.label)
            else:
                self.item_model.learn(message.x, message.label)
            self.versions[message.model] += 1
            self.version += 1
            return
        else:
            raise TypeError(f"the trainer learns no {type(message).__name__}")
        self.versions[_KIND[type(message)]] += 1
        self.version += 1

    def backlog(self) -> int:
        """Messages fed and not yet learnt: 0 in one process (``server.models.remote`` overrides it)."""
        return 0

    def staleness_s(self) -> float:
        """How long the oldest message the models do not cover yet has waited: 0 in one process (``feed``
        learns at once; ``server.models.remote`` overrides it)."""
        return 0.0

    # -- checkpoints ------------------------------------------------------------------------------
    FIELDS = ("propensity", "propensity_quality", "item_model", "item_quality", "segmenter", "risk", "items",
              "categories", "covisits", "top_items", "next_item", "version", "versions")
    #: Fields added after trainer state format 1: a state without them starts them empty.
    ADDED = ("covisits", "top_items", "next_item", "versions")

    def state(self) -> dict[str, Any]:
        """The trainer's state by name (``server.log.checkpoint`` writes it apart from the workers')."""
        return {k: getattr(self, k) for k in self.FIELDS}

    def load_state(self, state: dict[str, Any]) -> None:
        """Replace the models with a ``state()`` taken earlier."""
        missing = set(self.FIELDS) - set(state) - set(self.ADDED)
        if missing:
            raise ValueError(f"trainer state lacks {sorted(missing)}")
        self.covisits, self.top_items = self._candidates(self.config)
        self.next_item = NextItemRanker()
        self.versions = dict.fromkeys(VERSIONED, 0)
        for k in self.FIELDS:
            if k in state:
                setattr(self, k, state[k])
        for message in state.get(UNLEARNT, ()):  # taken beside a trainer process: what it had not learnt yet
            self.requeue(message)

    def requeue(self, message: Labelled | UserVector | EventVector | ItemStats) -> None:
        """A message a checkpoint held unlearnt: learnt now, except item statistics, which the worker that fed
        them learnt at once (they are among the unlearnt only to reach other workers: ``server.models.shared``)."""
        if type(message) is not ItemStats:
            self.learn(message)


_KIND: dict[type, str] = {ItemStats: ITEM_STATS, EventVector: RISK, UserVector: SEGMENTS}
