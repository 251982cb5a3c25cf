"""Encryption at rest: a copied site database holds no release vector and no session secret."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import numpy as np
import pytest

from site_agent.cache import ReleaseCache, SessionStore
from site_agent.sealing import KEY_FILE, SealingError, StateSealer, load_state_key

pytestmark = pytest.mark.unit

SECRET = b"session-private-key-material-0123456789"


def _sealer(tmp_path: Path) -> StateSealer:
    return StateSealer(load_state_key(tmp_path, env={}))


def test_a_copied_database_holds_neither_the_release_nor_the_secrets(tmp_path: Path) -> None:
    sealer = _sealer(tmp_path)
    db = tmp_path / "site.sqlite"
    vector = np.arange(1000, 1064, dtype=np.uint32)
    cache, sessions = ReleaseCache(db, sealer), SessionStore(db, sealer)
    cache.put("run-1", "stats", 0, vector, {"attempt": 0})
    sessions.save(("run-1", "stats", 0, 0), SECRET)
    cached = cache.get("run-1", "stats", 0)
    assert cached is not None and cached.vector is not None
    np.testing.assert_array_equal(cached.vector, vector)
    assert sessions.load(("run-1", "stats", 0, 0)) == SECRET
    cache.close()
    sessions.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("site.sqlite*"))
    assert vector.astype("<u4").tobytes() not in raw and SECRET not in raw
    # without the key, the copy does not open
    other = StateSealer(b"\x01" * 32)
    with pytest.raises(SealingError, match="wrong state key"):
        SessionStore(db, other).load(("run-1", "stats", 0, 0))


def test_a_sealed_value_moved_to_another_row_does_not_open(tmp_path: Path) -> None:
    sealer = _sealer(tmp_path)
    db = tmp_path / "site.sqlite"
    sessions = SessionStore(db, sealer)
    sessions.save(("run-1", "stats", 0, 0), SECRET)
    sessions.save(("run-1", "stats", 0, 1), b"other")
    sessions._conn.execute(
        "UPDATE secagg_sessions SET data = (SELECT data FROM secagg_sessions WHERE attempt = 0)"
        " WHERE attempt = 1"
    )
    with pytest.raises(SealingError, match="altered or moved"):
        sessions.load(("run-1", "stats", 0, 1))


def test_values_written_before_sealing_still_read(tmp_path: Path) -> None:
    db = tmp_path / "site.sqlite"
    SessionStore(db).save(("run-1", "stats", 0, 0), SECRET)
    assert SessionStore(db, _sealer(tmp_path)).load(("run-1", "stats", 0, 0)) == SECRET


def test_the_key_file_is_private_and_stable_and_the_environment_wins(tmp_path: Path) -> None:
    first = load_state_key(tmp_path, env={})
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    assert load_state_key(tmp_path, env={}) == first
    supplied = bytes(range(32))
    assert load_state_key(tmp_path, env={"CONCORDIA_STATE_KEY": supplied.hex()}) == supplied
    b64 = base64.b64encode(supplied).decode()
    assert load_state_key(tmp_path, env={"CONCORDIA_STATE_KEY": b64}) == supplied
    with pytest.raises(SealingError, match="32 bytes in hex or base64"):
        load_state_key(tmp_path, env={"CONCORDIA_STATE_KEY": "short"})
