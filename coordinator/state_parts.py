"""A run's snapshot cut into rows, so that saving a result writes what the result changed.

`coordinator/snapshot.py::dump` describes a run as one JSON document. Stored whole, every result
outside a secure-aggregation session (an offer's answer, a TRAIN or EVALUATE acknowledgement)
rewrote it, and it names every site several times over (candidates, who accepted, who acked,
each site's task, answer and ε) plus a record of every round: at n sites, n results of O(n)
bytes each per round, and O(n²) per round in all (218 MB a round at n = 300).

`split` cuts the document into
- a **head**: the run's changing scalars (status, phase, round, step, the consortium
  statistics...), small and independent of n;
- **parts**, each rewritten only when its own text changes: the plan (fixed at submission) and
  one part per site holding that site's share of every per-site field, with its position in the
  field so that `join` rebuilds every list and mapping in its original order;
- the **history**: frozen round records, appended and never rewritten.

A result of one site then changes the head and that site's part: O(1) rows, O(n) per round.
`join(split(s))` is `s` (property-tested). A field that cannot be cut by site (a list naming a
site twice: no engine does that, but a store must not lose it if one did) stays in the head
whole, so the layout is lossless for any state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LAYOUT_KEY = "state_layout"
"""In a head: the layout's version. A row without it is a whole document (older stores)."""
LAYOUT = 2
SPLIT_KEY = "split_fields"
"""In a head: the per-site fields `split` cut into site parts (the others stayed in the head)."""

PLAN_PART = "plan"
SITE_PART_PREFIX = "site:"

SITE_LISTS = ("candidates", "accepted", "acked")
"""Fields that are lists of distinct site ids: a site's part holds its position."""
SITE_MAPS = ("refusals", "awaiting", "answered", "privacy", "published")
"""Fields that map a site id to a value: a site's part holds [position, value]."""
TASKS = "tasks"
"""A list of task documents, each naming its site (`"site"`): [position, task]."""
SESSION_SITES = "session_sites"
"""A mapping of session index (text) to site id: a site's part holds [position, index]."""
HISTORY = "history"


@dataclass(frozen=True)
class StateParts:
    """One run's document as rows: `head`, `parts` (by name) and `history`."""

    head: dict[str, Any]
    parts: dict[str, Any]
    history: list[Any]


def is_split(head: Mapping[str, Any]) -> bool:
    """Whether a stored run row is a head of this layout (else it is a whole document)."""
    return head.get(LAYOUT_KEY) == LAYOUT


def split(state: Mapping[str, Any], previous: Mapping[str, Any] | None = None) -> StateParts:
    """Cut a snapshot document (`snapshot.dump`'s state) into head, parts and history.

    `previous`: the parts of the last split of this run as written, whose positions are kept
    where the order allows it. A result that removes one site's entry from the middle of a
    field (its task, once answered) then leaves every other site's part as it was: positions
    need only increase along a field, not be dense."""
    head = dict(state)
    parts: dict[str, Any] = {}
    history = list(head.pop(HISTORY, []))
    if PLAN_PART in head:
        parts[PLAN_PART] = head.pop(PLAN_PART)
    before = _old_positions(previous or {})
    by_site: dict[str, dict[str, Any]] = {}
    done: list[str] = []
    for field, value in list(head.items()):
        cut = _cut(field, value)
        if cut is None:
            continue
        for (site, payload), position in zip(
            cut, _positions(cut, before.get(field, {})), strict=True
        ):
            entry = position if field in SITE_LISTS else [position, payload]
            by_site.setdefault(site, {})[field] = entry
        del head[field]
        done.append(field)
    for site, entries in by_site.items():
        parts[SITE_PART_PREFIX + site] = entries
    head[LAYOUT_KEY] = LAYOUT
    head[SPLIT_KEY] = done
    return StateParts(head, parts, history)


def _old_positions(parts: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """{field: {site: position}} that the previous site parts gave, read in one pass over them
    (looking each site up again for every field made a result's save O(n · fields) lookups)."""
    positions: dict[str, dict[str, int]] = {}
    for name, part in parts.items():
        if not name.startswith(SITE_PART_PREFIX) or not isinstance(part, dict):
            continue
        site = name[len(SITE_PART_PREFIX) :]
        for field, entry in part.items():
            positions.setdefault(field, {})[site] = int(
                entry if isinstance(entry, int) else entry[0]
            )
    return positions


def _positions(cut: list[tuple[str, Any]], old: Mapping[str, int | None]) -> list[int]:
    """Strictly increasing positions for the entries in order, each keeping its old one where
    that still comes after the entry before it."""
    positions: list[int] = []
    last = -1
    for site, _ in cut:
        kept = old.get(site)
        last = kept if kept is not None and kept > last else last + 1
        positions.append(last)
    return positions


def join(
    head: Mapping[str, Any], parts: Mapping[str, Any], history: Sequence[Any]
) -> dict[str, Any]:
    """The document `split` cut: inverse of `split` for any state."""
    state = {k: v for k, v in head.items() if k not in (LAYOUT_KEY, SPLIT_KEY)}
    if PLAN_PART in parts:
        state[PLAN_PART] = parts[PLAN_PART]
    sites = {
        name[len(SITE_PART_PREFIX) :]: entries
        for name, entries in parts.items()
        if name.startswith(SITE_PART_PREFIX)
    }
    for field in head.get(SPLIT_KEY, []):
        state[field] = _glue(field, {s: e[field] for s, e in sites.items() if field in e})
    state[HISTORY] = list(history)
    return state


def _cut(field: str, value: Any) -> list[tuple[str, Any]] | None:
    """[(site, its payload)] in the field's order for a per-site field, or None to leave the
    field in the head (it is not one, or it names a site twice)."""
    if field in SITE_LISTS and isinstance(value, list):
        cut: list[tuple[Any, Any]] = [(site, None) for site in value]
    elif field in SITE_MAPS and isinstance(value, dict):
        cut = list(value.items())
    elif field == TASKS and isinstance(value, list):
        cut = [(t.get("site") if isinstance(t, dict) else None, t) for t in value]
    elif field == SESSION_SITES and isinstance(value, dict):
        cut = [(site, index) for index, site in value.items()]
    else:
        return None
    sites = [site for site, _ in cut]
    if not all(isinstance(s, str) for s in sites) or len(set(sites)) != len(sites):
        return None
    return cut


def _glue(field: str, entries: Mapping[str, Any]) -> Any:
    """Inverse of `_cut`: the field rebuilt, in its original order, from its sites' entries."""
    if field in SITE_LISTS:
        return [site for site, _ in sorted(entries.items(), key=lambda item: item[1])]
    ordered = sorted(entries.items(), key=lambda item: item[1][0])
    if field in SITE_MAPS:
        return {site: entry[1] for site, entry in ordered}
    if field == TASKS:
        return [entry[1] for _, entry in ordered]
    return {entry[1]: site for site, entry in ordered}  # SESSION_SITES
