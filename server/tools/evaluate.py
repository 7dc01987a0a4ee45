"""``portrait evaluate``: replay an event log through the server's own partition worker and compare learners.

The events are validated, sorted by event time and applied in-process, one by one, by the very
``PartitionWorker`` the server runs (profile, delayed labels, online models; no network). Every labelled
decision of the task's model is recorded when its label resolves: its frozen input ``x``, the
online model's prediction made at the decision (prequential: before the label was known), the
label, and the event time at which the label became known.

Then, on the decisions made after the first ``static_days`` days (the *evaluation period*):

* **online** - Portrait's per-event model with delayed labels (the predictions it actually made);
* **static** - ``StandardScaler | LogisticRegression`` (scikit-learn, batch) on the same inputs,
  fitted once on the decisions whose labels were known at the end of the first days, then frozen;
* **periodic** - the same batch model refitted from scratch at every midnight (UTC) on every
  decision resolved by then;
* **heuristic** - a rule, calibrated to probabilities (Platt) on the first days: for ``item``,
  "already carted / favorited this item (now included), then prior views of it, ties broken by the
  user's purchase rate"; for ``user``, "carted or favorited in the last hour, then views in the last
  hour, ties broken by the purchase rate".

Per learner: exact ROC AUC and PR AUC (average precision) and log loss (scikit-learn), F1 at the
threshold that maximised F1 on the first days, the positive rate and the number of decisions; per
day, the AUC of each; and paired 95 % bootstrap intervals, resampling users, of the online AUC
minus each other learner's.

>>> from server.tools.simulate import simulate
>>> rep = replay(simulate(users=60, days=5, seed=2), horizon_s=86_400.0)
>>> r = evaluate(rep, "item", static_days=2, bootstrap=20)
>>> sorted(r["models"]), r["task"], r["horizon_s"]
(['heuristic', 'online', 'periodic', 'static'], 'item', 86400.0)
>>> r["models"]["online"]["decisions"] == r["models"]["static"]["decisions"] > 0
True
>>> [d["day"] for d in r["per_day"]]    # the last day's decisions cannot settle within the log (24 h horizon)
['2026-01-03', '2026-01-04']
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from server.domain.events import Event, validate
from server.domain.labels import DelayedLabels
from server.domain.units import DAY, HOUR, MINUTE
from server.metrics import Metrics
from server.models.ranking import ITEM_INPUTS
from server.models.user import PROPENSITY_INPUTS
from server.worker.partition import ITEM, PROPENSITY, PartitionWorker, WorkerConfig

TASKS = {"item": ITEM, "user": PROPENSITY}
MODELS = ("online", "static", "periodic", "heuristic")


@dataclass
class Decisions:
    """The resolved decisions of one model, in resolution order (columns as lists)."""

    t: list[float] = field(default_factory=list)
    group: list[str] = field(default_factory=list)
    x: list[Sequence[float]] = field(default_factory=list)
    p: list[float] = field(default_factory=list)
    y: list[bool] = field(default_factory=list)
    known_at: list[float] = field(default_factory=list)

    def add(self, t: float, group: str, x: Sequence[float], p: float, y: bool, known_at: float) -> None:
        """Record one resolved decision."""
        self.t.append(t)
        self.group.append(group)
        self.x.append(x)
        self.p.append(p)
        self.y.append(y)
        self.known_at.append(known_at)


@dataclass
class Replay:
    """What a replay produced: resolved decisions per model and a few counts."""

    decisions: dict[str, Decisions]
    config: WorkerConfig
    events: int
    rejected: int
    duplicates: int
    first_time: float
    last_time: float
    unresolved: dict[str, int]
    worker: PartitionWorker


class _UserLabels(DelayedLabels):
    """``DelayedLabels`` that remembers the user of each decision (for bootstrapping over users)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.users: dict[tuple[float, tuple[float, ...]], str] = {}

    def decide(self, user: str, t: float, x: Sequence[float], p: float) -> bool:
        if super().decide(user, t, x, p):
            self.users[(t, tuple(x))] = user
            return True
        return False


def replay(events: Iterable[Event], config: WorkerConfig | None = None, horizon_s: float | None = None,
           task: str = "item", progress: bool = False, total: int | None = None) -> Replay:
    """Validate, sort by event time and apply ``events`` through a fresh ``PartitionWorker``.

    ``horizon_s`` (if given) replaces the horizon of ``task``'s model in ``config``.
    """
    cfg = config or WorkerConfig()
    if horizon_s is not None:
        if task == "item":
            cfg = replace(cfg, item_horizon_s=horizon_s)
        else:
            cfg = replace(cfg, propensity_horizon_s=horizon_s)
    out = {PROPENSITY: Decisions(), ITEM: Decisions()}
    users = _UserLabels(cfg.propensity_horizon_s, cfg.decision_interval_s, cfg.allowed_lateness_s,
                        cfg.max_pending_labels)

    def on_label(model: str, d: Any, y: bool, t: float) -> None:
        if model == ITEM:
            out[ITEM].add(d.t, d.user, d.x, d.p, y, t)
        else:
            out[PROPENSITY].add(d.t, users.users.pop((d.t, tuple(d.x)), ""), d.x, d.p, y, t)

    worker = PartitionWorker(cfg, Metrics(), on_label=on_label)
    worker.labels = users
    n, rejected, duplicates, first, last = apply_events(worker, events, progress)
    return Replay(out, cfg, n, rejected, duplicates, first, last,
                  {PROPENSITY: len(worker.labels), ITEM: len(worker.items.labels)}, worker)


def apply_events(worker: PartitionWorker, events: Iterable[Event],
                 progress: bool = False) -> tuple[int, int, int, float, float]:
    """Validate (any time is fine), sort by event time and apply ``events`` in bulk mode, one by one.

    Returns (valid events, invalid ones, duplicates, first and last event time). Holds the valid
    events in memory to sort them.
    """
    valid: list[Event] = []
    rejected = 0
    for e in events:
        if validate(e, now=math.inf) is None:
            valid.append(e)
        else:
            rejected += 1
    valid.sort(key=lambda e: e.event_time)  # type: ignore[arg-type,return-value]
    duplicates = 0
    for e in _progress(valid, progress, "replay"):
        duplicates += worker.apply(e, score=False).duplicate
    first = float(valid[0].event_time) if valid else 0.0  # type: ignore[arg-type]
    last = float(valid[-1].event_time) if valid else 0.0  # type: ignore[arg-type]
    return len(valid), rejected, duplicates, first, last


def _progress(items: Sequence[Event], enabled: bool, desc: str) -> Iterable[Event]:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="ev", unit_scale=True, file=sys.stderr, leave=False)


# -- learners ---------------------------------------------------------------------------------
def _batch_model(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Fit ``StandardScaler | LogisticRegression`` (scikit-learn); a constant rate if y has one class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(y) == 0 or y.min() == y.max():
        rate = float(y.mean()) if len(y) else 0.5
        return lambda xs: np.full(len(xs), min(max(rate, 1e-4), 1 - 1e-4))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x, y)
    return lambda xs: model.predict_proba(xs)[:, 1] if len(xs) else np.zeros(0)


def heuristic_scores(task: str, x: np.ndarray) -> np.ndarray:
    """The rule's ranking score for decisions with inputs ``x`` (rows of ``ITEM_INPUTS`` or ``PROPENSITY_INPUTS``)."""
    if task == "item":
        c = {n: x[:, i] for i, n in enumerate(ITEM_INPUTS)}
        strong = (c["log_item_carts"] + c["log_item_favorites"] + c["is_add_to_cart"] + c["is_favorite"]) > 0
        views = np.minimum(np.expm1(c["log_item_views"]), 999.0)
        return 2000.0 * strong + views + c["conversion_rate_30d"] / 2
    c = {n: x[:, i] for i, n in enumerate(PROPENSITY_INPUTS)}
    strong = (c["log_carts_1h"] + c["log_favorites_1h"] + c["is_add_to_cart"] + c["is_favorite"]) > 0
    views = np.minimum(np.expm1(c["log_views_1h"]), 999.0)
    return 2000.0 * strong + views + c["conversion_rate_30d"] / 2


def _platt(scores: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Map rule scores to probabilities with a 1-D logistic regression fitted on (scores, y)."""
    fit = _batch_model(scores.reshape(-1, 1), y)
    return lambda s: fit(s.reshape(-1, 1))


# -- metrics ----------------------------------------------------------------------------------
def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None


def _best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import precision_recall_curve

    if y.sum() == 0:
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def _scores(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score, f1_score, log_loss

    both = 0 < y.sum() < len(y)
    return {
        "roc_auc": _auc(y, p),
        "log_loss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[False, True])) if len(y) else None,
        "pr_auc": float(average_precision_score(y, p)) if both else None,
        "f1": float(f1_score(y, p >= threshold, zero_division=0.0)) if len(y) else None,
        "threshold": threshold,
        "positive_rate": float(y.mean()) if len(y) else None,
        "decisions": len(y),
    }


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Calibration of probabilities ``p`` against outcomes ``y``: ``bins`` equal-count bins of the predictions
    (equal width would leave rare events' high bins empty), each with its mean prediction, observed rate and
    size, and the expected calibration error ``ece`` = Σ size/N × |observed − predicted|.

    >>> import numpy as np
    >>> r = reliability(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.7, 0.9]), bins=2)
    >>> [(round(b["predicted"], 2), b["observed"], b["n"]) for b in r["bins"]], round(r["ece"], 3)
    ([(0.15, 0.0, 2), (0.8, 1.0, 2)], 0.175)
    """
    if len(y) == 0:
        return {"bins": [], "ece": None}
    order = np.argsort(p, kind="stable")
    out, ece = [], 0.0
    for part in np.array_split(order, min(bins, len(order))):
        predicted, observed = float(p[part].mean()), float(y[part].mean())
        out.append({"predicted": predicted, "observed": observed, "n": len(part)})
        ece += len(part) / len(y) * abs(observed - predicted)
    return {"bins": out, "ece": ece}


def _weighted_auc(order: np.ndarray, y: np.ndarray, ties: np.ndarray, w: np.ndarray) -> float:
    """AUC with integer sample weights ``w``; ``order`` sorts the scores ascending, ``ties`` marks tie groups."""
    wo, yo = w[order], y[order]
    wpos = np.where(yo, wo, 0.0)
    wneg = wo - wpos
    # negatives strictly below each tie group + half of the negatives inside it
    group_neg = np.bincount(ties, weights=wneg)
    below = np.concatenate(([0.0], np.cumsum(group_neg)[:-1]))
    group_pos = np.bincount(ties, weights=wpos)
    total_pos, total_neg = group_pos.sum(), group_neg.sum()
    if total_pos == 0 or total_neg == 0:
        return math.nan
    return float((group_pos * (below + group_neg / 2)).sum() / (total_pos * total_neg))


def _bootstrap(groups: np.ndarray, y: np.ndarray, preds: dict[str, np.ndarray], n: int,
               seed: int) -> dict[str, dict[str, Any]]:
    """Paired bootstrap over groups (users) of AUC(online) - AUC(other): mean and 95 % interval."""
    if n <= 0 or not 0 < y.sum() < len(y):
        return {}
    codes, inverse = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    prepared = {}
    for name, p in preds.items():
        order = np.argsort(p, kind="mergesort")
        sp = p[order]
        ties = np.concatenate(([0], np.cumsum(sp[1:] != sp[:-1])))
        prepared[name] = (order, ties)
    diffs: dict[str, list[float]] = {name: [] for name in preds if name != "online"}
    for _ in range(n):
        counts = rng.multinomial(len(codes), np.full(len(codes), 1.0 / len(codes))).astype(float)
        w = counts[inverse]
        order, ties = prepared["online"]
        online = _weighted_auc(order, y, ties, w)
        for name in diffs:
            order, ties = prepared[name]
            diffs[name].append(online - _weighted_auc(order, y, ties, w))
    out = {}
    for name, d in diffs.items():
        arr = np.array([v for v in d if not math.isnan(v)])
        if len(arr):
            out[name] = {"auc_diff": float(arr.mean()),
                         "ci95": [float(np.percentile(arr, 2.5)), float(np.percentile(arr, 97.5))]}
    return out


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``24h`` or ``7d``.

    >>> parse_duration("24h"), parse_duration("30m"), parse_duration("1.5d"), parse_duration("600")
    (86400.0, 1800.0, 129600.0, 600.0)
    """
    text = text.strip().lower()
    unit = {"s": 1.0, "m": MINUTE, "h": HOUR, "d": DAY}.get(text[-1:])
    value = float(text[:-1] if unit else text) * (unit or 1.0)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"a duration must be positive, got {text!r}")
    return value


def _day(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d")


# -- the evaluation ---------------------------------------------------------------------------
def evaluate(rep: Replay, task: str = "item", static_days: float = 3.0, bootstrap: int = 200, seed: int = 0,
             split_days: float | None = None) -> dict[str, Any]:
    """Compare online / static / periodic / heuristic on the decisions after the first ``static_days`` days.

    With ``split_days`` (e.g. the day a change happened, counted like ``static_days`` from the first
    midnight), ``periods`` also holds the scores of the evaluation decisions before and after it.
    """
    model = TASKS[task]
    d = rep.decisions[model]
    day0 = float(math.floor(rep.first_time / DAY) * DAY)
    cutoff = day0 + static_days * DAY
    t = np.array(d.t, dtype=float)
    x = np.array([list(v) for v in d.x], dtype=float).reshape(len(t), -1)
    y = np.array(d.y, dtype=bool)
    p_online = np.array(d.p, dtype=float)
    groups = np.array(d.group, dtype=object)
    horizon = rep.config.item_horizon_s if task == "item" else rep.config.propensity_horizon_s
    settle = horizon + rep.config.allowed_lateness_s  # a decision's label is final this long after it

    def final_by(when: float) -> np.ndarray:
        # labels known *and* final (a negative could not turn up later): an unbiased training sample
        return t + settle <= when

    train = final_by(cutoff)
    ev = (t >= cutoff) & final_by(rep.last_time)
    # static: fitted once on what was known at the cutoff
    static = _batch_model(x[train], y[train])
    p_static = static(x[ev])
    # periodic: refitted at each midnight on everything known by then
    p_periodic = np.zeros(int(ev.sum()))
    t_ev = t[ev]
    x_ev = x[ev]
    day_index = np.floor((t_ev - day0) / DAY).astype(int)
    for k in np.unique(day_index):
        seen = final_by(day0 + k * DAY)
        fit = _batch_model(x[seen], y[seen])
        sel = day_index == k
        p_periodic[sel] = fit(x_ev[sel])
    # heuristic, calibrated on the first days
    h_all = heuristic_scores(task, x)
    calib = _platt(h_all[train], y[train])
    p_heuristic = calib(h_all[ev])
    preds = {"online": p_online[ev], "static": p_static, "periodic": p_periodic, "heuristic": p_heuristic}
    # F1 thresholds: each learner's best on the first days
    first = {"online": p_online[train], "static": static(x[train]), "periodic": static(x[train]),
             "heuristic": calib(h_all[train])}
    y_ev, y_train = y[ev], y[train]
    thresholds = {name: _best_threshold(y_train, first[name]) for name in MODELS}
    models = {name: _scores(y_ev, preds[name], thresholds[name]) for name in MODELS}
    calibration = {name: reliability(y_ev, preds[name]) for name in MODELS}
    views: dict[str, Any] = {}
    if task == "item":  # the decisions made at views: what Score answers (it ranks as if the user viewed now)
        at_view = x_ev[:, ITEM_INPUTS.index("is_view")] == 1.0
        views = {name: _scores(y_ev[at_view], preds[name][at_view], thresholds[name]) for name in MODELS}
    periods = {}
    if split_days is not None:
        after = t_ev >= day0 + split_days * DAY
        for period, sel in (("before", ~after), ("after", after)):
            periods[period] = {name: _scores(y_ev[sel], preds[name][sel], thresholds[name]) for name in MODELS}
    per_day = []
    for k in np.unique(day_index):
        sel = day_index == k
        row: dict[str, Any] = {"day": _day(day0 + k * DAY), "decisions": int(sel.sum()),
                               "positives": int(y_ev[sel].sum())}
        for name in MODELS:
            row[f"{name}_auc"] = _auc(y_ev[sel], preds[name][sel])
        per_day.append(row)
    return {
        "task": task,
        "horizon_s": horizon,
        "static_days": static_days,
        "events": rep.events,
        "rejected_events": rep.rejected,
        "duplicate_events": rep.duplicates,
        "train_decisions": int(train.sum()),
        "unresolved_decisions": rep.unresolved[model],
        "models": models,
        "calibration": calibration,
        **({"views": views} if views else {}),
        "per_day": per_day,
        "bootstrap": _bootstrap(groups[ev], y_ev, preds, bootstrap, seed),
        **({"split_days": split_days, "split_day": _day(day0 + split_days * DAY), "periods": periods}
           if split_days is not None else {}),
    }


def evaluate_file(path: str, task: str = "item", horizon_s: float | None = None, static_days: float = 3.0,
                  bootstrap: int = 200, progress: bool = False, split_days: float | None = None) -> dict[str, Any]:
    """Read an event file (CSV or Parquet, see ``server.tools.eventfile``), replay it and evaluate ``task``."""
    from server.tools.eventfile import read_events

    return evaluate(replay(read_events(path), horizon_s=horizon_s, task=task, progress=progress), task,
                    static_days, bootstrap, split_days=split_days)


# -- output -----------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def format_table(result: dict[str, Any]) -> str:
    """The result as markdown tables: learners, then per-day AUC."""
    lines = [f"task {result['task']}, horizon {result['horizon_s']:g} s, evaluated after the first "
             f"{result['static_days']:g} days ({result['events']} events, {result['train_decisions']} "
             f"decisions known at the cutoff)", "",
             "| learner | ROC AUC | PR AUC | log loss | ECE | F1 | positive rate | decisions | "
             "AUC online - this (95% CI) |",
             "|---|---|---|---|---|---|---|---|---|"]
    boot = result.get("bootstrap", {})
    for name in MODELS:
        m = result["models"][name]
        b = boot.get(name)
        ci = f"{b['auc_diff']:+.3f} [{b['ci95'][0]:+.3f}, {b['ci95'][1]:+.3f}]" if b else "-"
        ece = result["calibration"][name]["ece"]
        lines.append(f"| {name} | {_fmt(m['roc_auc'])} | {_fmt(m['pr_auc'])} | {_fmt(m['log_loss'], 4)} | "
                     f"{_fmt(ece, 4)} | {_fmt(m['f1'])} | {_fmt(m['positive_rate'], 4)} | {m['decisions']} | {ci} |")
    if result.get("views"):
        v = result["views"]
        n = v["online"]["decisions"]
        lines += ["", f"decisions at views only (what Score answers): {n} — ROC AUC "
                  + ", ".join(f"{name} {_fmt(v[name]['roc_auc'])}" for name in MODELS)]
    if result.get("periods"):
        lines += ["", "| ROC AUC | decisions | positives | online | static | periodic | heuristic |",
                  "|---|---|---|---|---|---|---|"]
        for period, scores in result["periods"].items():
            n = scores["online"]["decisions"]
            pos = round(n * (scores["online"]["positive_rate"] or 0.0))
            lines.append(f"| {period} {result['split_day']} | {n} | {pos} | "
                         + " | ".join(_fmt(scores[name]["roc_auc"]) for name in MODELS) + " |")
    lines += ["", "| day | decisions | positives | online | static | periodic | heuristic |",
              "|---|---|---|---|---|---|---|"]
    for r in result["per_day"]:
        lines.append(f"| {r['day']} | {r['decisions']} | {r['positives']} | {_fmt(r['online_auc'])} | "
                     f"{_fmt(r['static_auc'])} | {_fmt(r['periodic_auc'])} | {_fmt(r['heuristic_auc'])} |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str) -> None:
    """Write a PNG of the per-day ROC AUC of every learner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [r["day"][5:] for r in result["per_day"]]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    styles = {"online": ("tab:blue", "-", "o"), "static": ("tab:red", "--", "s"),
              "periodic": ("tab:green", ":", "^"), "heuristic": ("tab:gray", "-.", "x")}
    for name, (color, ls, marker) in styles.items():
        ys = [math.nan if r[f"{name}_auc"] is None else r[f"{name}_auc"] for r in result["per_day"]]
        ax.plot(days, ys, label=name, color=color, linestyle=ls, marker=marker)
    split = result.get("split_day")
    if split and split[5:] in days:
        ax.axvline(days.index(split[5:]), color="black", alpha=0.4, linewidth=1)
        ax.annotate(f" split: {split}", (days.index(split[5:]), ax.get_ylim()[0]), va="bottom", fontsize=8)
    ax.set_xlabel("day (UTC)")
    ax.set_ylabel("ROC AUC")
    ax.set_title(f"portrait evaluate --task {result['task']}: per-day ROC AUC after the first "
                 f"{result['static_days']:g} days")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_reliability(result: dict[str, Any], path: str) -> None:
    """Write a PNG reliability diagram (observed rate against mean prediction per bin) of every learner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=120)
    styles = {"online": ("tab:blue", "-", "o"), "static": ("tab:red", "--", "s"),
              "periodic": ("tab:green", ":", "^"), "heuristic": ("tab:gray", "-.", "x")}
    top = 0.0
    for name, (color, ls, marker) in styles.items():
        cal = result["calibration"][name]
        xs = [b["predicted"] for b in cal["bins"]]
        ys = [b["observed"] for b in cal["bins"]]
        top = max(top, *xs, *ys)
        ax.plot(xs, ys, label=f"{name} (ECE {cal['ece']:.4f})", color=color, linestyle=ls, marker=marker)
    top = min(1.0, top * 1.1 or 1.0)
    ax.plot([0, top], [0, top], color="black", alpha=0.4, linewidth=1, label="perfectly calibrated")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("mean predicted probability (10 equal-count bins)")
    ax.set_ylabel("observed rate")
    ax.set_title(f"portrait evaluate --task {result['task']}: reliability after day {result['static_days']:g}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
