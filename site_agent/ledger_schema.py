"""The privacy ledger's tables and how an older ledger is brought up to them
(`site_agent/ledger.py`): a site's ledger outlives upgrades, so every row is kept."""

from __future__ import annotations

import sqlite3

from site_agent.sqlite_state import add_missing_columns, rebuild_table, table_sql

TABLE = "ledger_releases"
RELEASES_DDL = """CREATE TABLE IF NOT EXISTS {table} (
        id                   INTEGER PRIMARY KEY AUTOINCREMENT,
        ts                   REAL    NOT NULL,
        run_id               TEXT    NOT NULL,
        purpose              TEXT    NOT NULL,
        round                INTEGER NOT NULL,
        attempt              INTEGER NOT NULL,
        partition            TEXT    NOT NULL CHECK (partition IN ('train', 'holdout', 'both')),
        noise_multiplier     REAL    NOT NULL,
        sample_rate          REAL    NOT NULL,
        steps                INTEGER NOT NULL,
        delta                REAL    NOT NULL,
        epsilon_run          REAL    NOT NULL,
        epsilon_lifetime     REAL    NOT NULL,
        accountant           TEXT    NOT NULL{added}
    )"""
#: Columns added after the first schema: ALTER TABLE ADD COLUMN on an existing database.
ADDED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("mechanism", "TEXT NOT NULL DEFAULT 'gaussian' CHECK (mechanism IN ('gaussian', 'skellam'))"),
    ("l2_sensitivity", "REAL"),
    ("l1_sensitivity", "REAL"),
    ("own_noise_multiplier", "REAL"),  # NULL: the site's own noise is all of noise_multiplier
    ("epsilon_run_own", "REAL"),  # NULL only on rows charged before the two views existed
    ("epsilon_lifetime_own", "REAL"),
)
INDEX = f"CREATE INDEX IF NOT EXISTS ledger_releases_run ON {TABLE} (run_id)"
SCHEMA = (
    RELEASES_DDL.format(
        table=TABLE,
        added="".join(f",\n        {name} {decl}" for name, decl in ADDED_COLUMNS),
    ),
    INDEX,
    """CREATE TABLE IF NOT EXISTS ledger_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a ledger written by an older version up to the current schema, keeping every row
    (and the AUTOINCREMENT sequence, so release ids are never reused). Idempotent; runs inside
    the schema transaction, so a crash leaves the old schema intact.

    - missing columns are added (ALTER TABLE ADD COLUMN; old rows get the defaults: a Gaussian
      release whose own noise is all of it, no own-view figures);
    - a table whose CHECK admits only 'train' and 'holdout' is rebuilt with the wider CHECK
      (SQLite cannot alter a CHECK): new table, copy, drop, rename, index
      (site_agent.sqlite_state.rebuild_table).
    """
    add_missing_columns(conn, TABLE, ADDED_COLUMNS)
    if "'both'" not in table_sql(conn, TABLE):
        rebuild_table(conn, TABLE, SCHEMA[0], INDEX)
