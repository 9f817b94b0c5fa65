"""Retraining: the training window moved to the freshest labelled data, run with the run machinery, the new
model gated against the champion and made the challenger; and the rule that promotes the challenger.

Labelled months. In this project a month's flights carry their outcome (``arr_delay``) in the warehouse's
snapshot, so any month of the data could be trained on; a month counts as *labelled* once the service has
served flights of it and feedback for them arrived: the monitoring store (``monitoring.store``, read only)
holds a prediction whose inputs' ``month`` is that month and whose label resolved (feedback by request id,
else by key, as the monitor resolves it). ``labelled_months`` lists them; one labelled row is enough.

The window (``choose_months``): the newest ``retrain.train_span + valid_span + test_span`` labelled months,
in time order: train on the oldest of them, validate on the next ``valid_span``, test on the newest
``test_span`` (the gate scores the new model and the champion on those rows). Fewer labelled months is an
error naming what there is and what is needed; no monitoring store or no feedback is an error saying so.
The run's overrides are ``split.train_months`` / ``valid_months`` / ``test_months`` and ``data.months`` =
the union of the three spans (ingest keeps exactly the months the split uses; the snapshot is content
addressed, so the champion's snapshot stays as it was).

The run (``retrain``): ``run.transaction.run`` with those overrides (the same lock, journal, commit and
undo as `mlops-nb run`), its record's ``trigger`` naming what started it ('retrain: by hand', 'retrain:
alert ID', 'retrain: monitor on_alert, alerts ID ...'), and ``gate_alias='challenger'``: a model that
passes the gate becomes the challenger in the run's commit (audit action 'retrain', actor 'retrain', the
run id, a reason naming the trigger); the champion does not move. When the retrain's settings and data
are those of the last run, nothing is stale: an up-to-date run is recorded and nothing moves.

The rule (``promote_if_ready``): with ``retrain.auto_promote`` on and a challenger, pool the labelled rows
of every window since the challenger was set (the window containing that instant included), per arm, from
the store's predictions and feedback (the rows the monitor's windows are computed from): the challenger's
(arm 'challenger' in a canary, 'shadow' in a shadow rollout) and the champion's (arm 'champion'). The
challenger is promoted once it has ``retrain.promote_after`` labelled rows and its ROC AUC on its pooled
rows is at least the champion's on its pooled rows minus ``retrain.promote_tolerance``; the alias change
takes the run lock, its audit row has action 'promote', actor 'monitor' and the evidence as its reason.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from ..errors import DataError, MlopsNbError, NotFoundError, RunLockedError
from ..registry.gate import roc_auc

BY_HAND = "retrain: by hand"
ON_ALERT = "retrain: monitor on_alert"
ACTOR = "retrain"


# --------------------------------------------------------------------------------------------------
# labelled months and the window


# the label of each prediction row: its request id's last feedback, else its key's (as the monitor resolves)
_LABELLED_SQL = """
WITH lab_id AS (SELECT request_id, arg_max(late, (received_at, seq, file, line)) AS late FROM feedback
                WHERE request_id IS NOT NULL GROUP BY request_id),
     lab_key AS (SELECT key, arg_max(late, (received_at, seq, file, line)) AS late FROM feedback
                 WHERE request_id IS NULL AND key IS NOT NULL GROUP BY key)
"""


def _store(settings, con=None):
    """The monitoring store, read only (``con``: the caller's connection), or None when there is none yet."""
    from . import store

    if con is not None:
        return contextlib.nullcontext(con)
    if not store.store_path(settings).exists():
        return None
    return store.connect(settings, read_only=True)


def labelled_rows_by_month(settings, con=None) -> dict[int, int]:
    """month -> labelled prediction rows of flights of that month, from the monitoring store (read only);
    {} when there is no store yet."""
    opened = _store(settings, con)
    if opened is None:
        return {}
    with opened as c:
        rows = c.execute(_LABELLED_SQL + """
            SELECT CAST(p.month AS INTEGER) AS month, count(*) FROM predictions p
            LEFT JOIN lab_id li ON p.request_id = li.request_id LEFT JOIN lab_key lk ON p.key = lk.key
            WHERE coalesce(li.late, lk.late) IS NOT NULL AND p.month BETWEEN 1 AND 12
            GROUP BY 1 ORDER BY 1""").fetchall()
    return {int(m): int(n) for m, n in rows}


def labelled_months(settings, con=None) -> list[int]:
    """The months (1-12, ascending) for which the monitoring store holds labelled predictions: served flights
    of that month with feedback. [] when there is no store or no feedback yet."""
    return sorted(labelled_rows_by_month(settings, con))


def choose_months(settings, con=None) -> dict:
    """The retrain's window: {"train", "valid", "test"} (month lists, in time order, test the newest) and
    "labelled" (month -> labelled rows), from the newest labelled months; an error when there are too few."""
    r = settings.retrain
    need = r.train_span + r.valid_span + r.test_span
    by_month = labelled_rows_by_month(settings, con)
    spans = f"retrain.train_span={r.train_span} + valid_span={r.valid_span} + test_span={r.test_span}"
    if not by_month:
        from . import store

        where = store.store_path(settings)
        raise DataError(
            f"No feedback yet: the monitoring store {where} holds no labelled predictions"
            f"{'' if where.exists() else ' (it does not exist)'}, so there are no labelled months beyond the "
            f"training data to retrain on. Serve the model, add outcomes (`mlops-nb feedback FILE` or POST "
            f"/feedback), run `mlops-nb monitor`, then retrain; {spans} = {need} labelled month(s) are needed.")
    months = sorted(by_month)
    if len(months) < need:
        raise DataError(
            f"Not enough labelled months to retrain: {spans} needs {need}; the monitoring store has "
            f"{len(months)}: {_months_text(by_month)}. Wait for feedback on more months, or lower the spans in "
            "[retrain].")
    chosen = months[-need:]
    train, valid, test = (chosen[:r.train_span], chosen[r.train_span:r.train_span + r.valid_span],
                          chosen[r.train_span + r.valid_span:])
    return {"train": train, "valid": valid, "test": test, "labelled": by_month}


def overrides(choice: dict) -> dict:
    """The settings a retrain runs with: the split of ``choice`` and data.months covering it."""
    months = sorted(set(choice["train"]) | set(choice["valid"]) | set(choice["test"]))
    return {"split.train_months": list(choice["train"]), "split.valid_months": list(choice["valid"]),
            "split.test_months": list(choice["test"]), "data.months": months}


def _months_text(by_month: dict[int, int]) -> str:
    return ", ".join(f"{m} ({n} row{'s' if n != 1 else ''})" for m, n in sorted(by_month.items()))


def describe(choice: dict) -> str:
    """One line: the labelled months found and the window chosen."""
    def span(ms):
        return ",".join(str(m) for m in ms)

    return (f"labelled months in the monitoring store: {_months_text(choice['labelled'])}; training on "
            f"{span(choice['train'])}, validating on {span(choice['valid'])}, testing (the gate, against the "
            f"champion) on {span(choice['test'])}")


# --------------------------------------------------------------------------------------------------
# the run


@dataclass
class Retrained:
    """What a retrain did: the window, the run's outcome, the aliases after it, and what the run's model
    became ('challenger', 'champion' or None: refused by the gate, or no model)."""

    choice: dict
    outcome: object  # run.transaction.Outcome
    aliases: dict = field(default_factory=dict)
    became: str | None = None

    @property
    def record(self):
        return self.outcome.record

    @property
    def ok(self) -> bool:
        return self.outcome.error is None and self.record.status in ("succeeded", "up-to-date")

    def as_dict(self) -> dict:
        rec = self.record
        return {"trigger": rec.trigger, "run_id": rec.run_id, "status": rec.status,
                "months": {k: self.choice[k] for k in ("train", "valid", "test")},
                "labelled": {str(m): n for m, n in self.choice["labelled"].items()},
                "tasks": [{"task": t.name, "status": t.status, "seconds": t.seconds} for t in rec.tasks],
                "model_version": rec.model_version, "metrics": rec.metrics,
                "gate": rec.gate if rec.status != "up-to-date" else None,
                "became": self.became, "aliases": self.aliases,
                "error": str(self.outcome.error) if self.outcome.error is not None else None}


def retrain(settings, trigger: str = BY_HAND, progress=None, announce=None, choice: dict | None = None) -> Retrained:
    """Run the pipeline on the freshest labelled months (``choose_months``) with the run machinery; a model
    that passes the gate becomes the challenger. A failed task is in the outcome (the run was undone)."""
    from ..data import warehouse
    from .. import registry
    from ..run import transaction

    choice = choice if choice is not None else choose_months(settings)
    outcome = transaction.run(settings.replace(overrides(choice)), progress=progress, announce=announce,
                              trigger=trigger, gate_alias="challenger")
    done = Retrained(choice, outcome)
    if settings.path("warehouse").exists():
        with warehouse.connect(settings=settings) as con:
            done.aliases = registry.aliases(con)
    version = outcome.record.model_version
    if outcome.error is None and version is not None:
        done.became = next((a for a in ("challenger", "champion") if done.aliases.get(a) == version), None)
    return done


# --------------------------------------------------------------------------------------------------
# alerts


def find_alert(settings, alert_id: str):
    """The stored alert ``alert_id`` (or a unique prefix of it): an error when there is none."""
    from . import alerts

    opened = _store(settings)
    found = []
    if opened is not None:
        with opened as con:
            found = alerts.listing(con, "alert_id LIKE ?", [alert_id + "%"]) if alert_id else []
            known = [a.alert_id for a in alerts.listing(con)] if len(found) != 1 else []
    else:
        known = []
    if len(found) == 1:
        return found[0]
    if found:
        raise NotFoundError(f"{alert_id!r} matches {len(found)} alerts; give more of the id.")
    from ..errors import did_you_mean

    raise NotFoundError(f"No alert {alert_id!r} in the monitoring store; `mlops-nb alerts --all` lists them."
                        f"{did_you_mean(alert_id, known)}")


def acknowledge(settings, alert_ids, actor: str = ACTOR, con=None) -> list[str]:
    """Close the alerts (under the monitoring store's lock; ``con``: the caller's writable connection, the
    caller holding the lock); returns the ids closed by this call."""
    from . import alerts

    closed = []
    with (contextlib.nullcontext(con) if con is not None else _locked_store(settings)) as c:
        c.execute(alerts.DDL)
        for alert_id in alert_ids:
            before = alerts.listing(c, "alert_id = ?", [alert_id])
            a = alerts.acknowledge(c, alert_id, actor)
            if before and before[0].acked_at is None:
                closed.append(a.alert_id)
    return closed


@contextlib.contextmanager
def _locked_store(settings):
    from . import store

    with store.lock(settings), store.connect(settings) as con:
        yield con


def _alert_id(a) -> str:
    if isinstance(a, str):
        return a
    if isinstance(a, dict):
        return a["alert_id"]
    return a.alert_id


def _handled_alerts(settings, ids: list[str]) -> set[str]:
    """Of ``ids``: those a recorded run's trigger names already (whatever became of that run)."""
    from ..data import warehouse
    from ..run import records

    triggers = [r.trigger for r in records.pending(settings.path("data_dir")) if r.trigger]
    if settings.path("warehouse").exists():
        with warehouse.connect(settings=settings) as con:
            if warehouse.has_table(con, "runs") and "trigger" in {
                    r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                              "WHERE table_name = 'runs'").fetchall()}:
                triggers += [r[0] for r in con.execute("SELECT trigger FROM runs WHERE trigger LIKE 'retrain:%'"
                                                       ).fetchall()]
    return {i for i in ids if any(i in t for t in triggers)}


def retrain_on_alert(settings, new_alerts, progress=None, announce=None, con=None) -> dict | None:
    """``[monitor] on_alert = retrain``: one retrain for the new alerts (Alert objects, their dicts or ids)
    that no earlier run handled and that are still open; None when on_alert is not 'retrain' or there is
    nothing to do. Call it after the monitor's call has committed and closed the monitoring store (it takes
    the store's lock to acknowledge the alerts; the run takes minutes).

    Returns {"status", "alerts", "trigger", ...}: 'skipped' with a 'reason' when the retrain could not start
    (too few labelled months, a run in progress: the alerts stay open), else the retrain's ``as_dict`` with
    its status ('succeeded', 'up-to-date', 'failed') and the alerts acknowledged (actor 'retrain') when the
    run's model is the challenger (or champion) afterwards. A run whose trigger names an alert is never
    started again for it, whatever its outcome. ``con``: a writable connection to the monitoring store that
    the caller holds (with its lock), used to read and acknowledge the alerts; by default the store is opened
    here (read only, then under its lock to acknowledge)."""
    from . import alerts

    if settings.monitor.on_alert != "retrain" or not new_alerts:
        return None
    ids = list(dict.fromkeys(_alert_id(a) for a in new_alerts))
    opened = _store(settings, con)
    if opened is not None:
        with opened as c:
            still_open = {a.alert_id for a in alerts.open_alerts(c)}
        ids = [i for i in ids if i in still_open]
    handled = _handled_alerts(settings, ids)
    ids = [i for i in ids if i not in handled]
    if not ids:
        return None
    trigger = f"{ON_ALERT}, alert{'s' if len(ids) > 1 else ''} {' '.join(ids)}"
    try:
        choice = choose_months(settings)
        done = retrain(settings, trigger, progress=progress, announce=announce, choice=choice)
    except (DataError, RunLockedError) as e:
        return {"status": "skipped", "alerts": ids, "trigger": trigger, "reason": str(e)}
    except MlopsNbError as e:  # e.g. a settings error of the overrides: said, not raised into the monitor
        return {"status": "failed", "alerts": ids, "trigger": trigger, "reason": str(e)}
    out = {**done.as_dict(), "alerts": ids, "acknowledged": []}
    if done.ok and done.became is not None:
        try:
            out["acknowledged"] = acknowledge(settings, ids, con=con)
        except RunLockedError as e:  # the run's trigger names the alerts: no second retrain for them anyway
            out["acknowledge_error"] = str(e)
    return out


# --------------------------------------------------------------------------------------------------
# auto_promote


def _pooled(settings, since, challenger: str, champion: str, con=None):
    """(arm rows) the labelled rows, pooled, of each arm since ``since``'s window: {"challenger": (y, p),
    "champion": (y, p), "windows": n}; None without a store."""
    import numpy as np

    from . import store

    opened = _store(settings, con)
    if opened is None:
        return None
    unit = store.WINDOW_UNITS[settings.monitor.window]
    with opened as c:
        rows = c.execute(_LABELLED_SQL + f""",
            arms AS (
                SELECT request_id, key, "at", model_version AS version, arm, p_late FROM predictions
                WHERE "at" >= date_trunc('{unit}', CAST(? AS TIMESTAMP))
                UNION ALL
                SELECT request_id, key, "at", shadow_version, 'shadow', shadow_p_late FROM predictions
                WHERE "at" >= date_trunc('{unit}', CAST(? AS TIMESTAMP))
                  AND shadow_version IS NOT NULL AND shadow_p_late IS NOT NULL)
            SELECT CASE WHEN a.version = ? AND a.arm IN ('challenger', 'shadow') THEN 'challenger'
                        ELSE 'champion' END AS side,
                   a.p_late, coalesce(li.late, lk.late) AS late, date_trunc('{unit}', a."at") AS window_start
            FROM arms a LEFT JOIN lab_id li ON a.request_id = li.request_id LEFT JOIN lab_key lk ON a.key = lk.key
            WHERE coalesce(li.late, lk.late) IS NOT NULL
              AND ((a.version = ? AND a.arm IN ('challenger', 'shadow')) OR (a.version = ? AND a.arm = 'champion'))
            """, [since, since, challenger, challenger, champion]).fetchall()
    out = {"windows": len({r[3] for r in rows})}
    for side in ("challenger", "champion"):
        picked = [r for r in rows if r[0] == side]
        out[side] = (np.array([bool(r[2]) for r in picked], dtype=int), np.array([r[1] for r in picked], dtype=float))
    return out


def _rollout_start(settings, challenger: str, con=None):
    """With ``serving.clock = flight`` (a replay: ``monitoring.simulate``) the prediction log's times are the
    flights' departures, which the alias's wall-clock ``updated_at`` cannot be compared with: the rollout
    starts at the challenger's first logged prediction (arm challenger or shadow). None when it has none."""
    opened = _store(settings, con)
    if opened is None:
        return None
    with opened as c:
        row = c.execute("""SELECT min(first) FROM (
            SELECT min("at") AS first FROM predictions WHERE model_version = ? AND arm = 'challenger'
            UNION ALL SELECT min("at") FROM predictions WHERE shadow_version = ?)""",
                        [challenger, challenger]).fetchone()
    return row[0] if row else None


def promote_if_ready(settings, con=None) -> dict | None:
    """``retrain.auto_promote``: promote the challenger to champion when it is ready (module docstring).
    None when auto_promote is off or there is no challenger (or no champion); else what was found:
    {"promoted", "challenger", "champion", "since", "windows", "challenger_rows", "challenger_roc_auc",
    "champion_rows", "champion_roc_auc", "reason"}. ``con``: the caller's connection to the monitoring
    store (read), when it holds one; the warehouse is opened here, and written under the run lock."""
    from ..data import warehouse
    from .. import registry
    from ..run import transaction

    r = settings.retrain
    if not r.auto_promote or not settings.path("warehouse").exists():
        return None
    with warehouse.connect(settings=settings) as wcon:
        if not warehouse.has_table(wcon, "model_aliases"):
            return None
        current = registry.aliases(wcon)
        row = wcon.execute("SELECT updated_at FROM model_aliases WHERE alias = 'challenger'").fetchone()
    challenger, champion = current.get("challenger"), current.get("champion")
    if challenger is None or champion is None or challenger == champion:
        return None
    since = row[0]
    if settings.serving.clock == "flight":  # replayed traffic is logged at its flights' times, not the wall's
        since = _rollout_start(settings, challenger, con) or since
    out = {"promoted": False, "challenger": challenger, "champion": champion, "since": since.isoformat(),
           "windows": 0, "challenger_rows": 0, "challenger_roc_auc": None, "champion_rows": 0,
           "champion_roc_auc": None, "reason": ""}
    pooled = _pooled(settings, since, challenger, champion, con)
    if pooled is None:
        out["reason"] = "no monitoring store yet: no labelled requests of the challenger"
        return out
    (yc, pc), (yb, pb) = pooled["challenger"], pooled["champion"]
    out.update(windows=pooled["windows"], challenger_rows=int(len(yc)), champion_rows=int(len(yb)),
               challenger_roc_auc=roc_auc(yc, pc),
               champion_roc_auc=roc_auc(yb, pb))
    a, b = out["challenger_roc_auc"], out["champion_roc_auc"]
    evidence = (f"labelled rows since {since:%Y-%m-%d %H:%M} ({out['windows']} {settings.monitor.window} "
                f"window(s), pooled): challenger {challenger} {len(yc)} rows, ROC AUC {_fmt(a)}; champion "
                f"{champion} {len(yb)} rows, ROC AUC {_fmt(b)}")
    if len(yc) < r.promote_after:
        out["reason"] = f"not yet: {evidence}; retrain.promote_after={r.promote_after} labelled rows needed"
        return out
    if a is None or b is None:
        out["reason"] = f"not yet: {evidence}; both arms need labelled rows of both classes for a ROC AUC"
        return out
    if a < b - r.promote_tolerance:
        out["reason"] = (f"not promoted: {evidence}; the challenger is worse than the champion by more than "
                         f"retrain.promote_tolerance={r.promote_tolerance:g}")
        return out
    reason = (f"auto_promote: {evidence}; at least retrain.promote_after={r.promote_after} rows and not worse "
              f"than the champion by more than retrain.promote_tolerance={r.promote_tolerance:g}")
    try:
        with transaction.run_lock(settings), warehouse.connect(write=True, settings=settings) as wcon:
            now = registry.aliases(wcon)
            if now.get("challenger") != challenger or now.get("champion") != champion:
                out["reason"] = (f"not promoted: the aliases changed meanwhile (champion {now.get('champion')}, "
                                 f"challenger {now.get('challenger')})")
                return out
            registry.promote(wcon, challenger, "champion", reason, actor="monitor", action="promote")
    except RunLockedError as e:
        out["reason"] = f"not promoted now: {e} The next monitor call tries again."
        return out
    out.update(promoted=True, reason=reason)
    return out


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"
