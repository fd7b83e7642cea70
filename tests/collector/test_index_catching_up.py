"""What readers say of an index marked catching up, when they cannot see the lock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from collector.index_catching_up import catching_up_refusal, catching_up_state
from collector.storage.data_dir_lock import LOCK_FILE, data_dir_holder, lock_data_dir


def test_a_lock_this_user_cannot_open_is_said_unknown_not_free(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader who may open neither store.lock nor the data directory (another user's,
    0750) was told "No collector or reindex runs" while one ran and held the lock."""
    data = tmp_path / "data"
    data.mkdir()
    denied = {str(data), str(data / LOCK_FILE)}
    real_open = os.open

    def open_as_another_user(path: object, *args: object, **kwargs: object) -> int:
        if str(path) in denied:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    lock = lock_data_dir(data)  # a collector's start-up at work
    try:
        monkeypatch.setattr(os, "open", open_as_another_user)
        assert data_dir_holder(data) is None
        said = catching_up_refusal(data, "repair", "its answers would be partial")
        state = catching_up_state(data, "repair")
    finally:
        monkeypatch.undo()
        lock.close()
    for text in (said, state):
        assert "none runs" not in text.lower() and "no collector" not in text.lower(), text
        assert "cannot be told" in text and "collector's user" in text, text
    assert data_dir_holder(data) is False
