"""Log lines: one event a line, human or JSON, and no registered secret ever shown."""

from __future__ import annotations

import base64
import json
import logging
import os

import pytest

from store import logs


@pytest.fixture(autouse=True)
def restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup(1, "osd:disk1", "json")
    log = logging.getLogger("store.osd")
    log.info("osd.%d now at epoch %d", 3, 17)
    log.debug("not at INFO")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        log.exception("failed")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2  # one event a line, even with a multi-line traceback
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "osd.3 now at epoch 17"
    assert first["level"] == "info" and first["process"] == "osd:disk1"
    assert first["logger"] == "store.osd" and first["time"].endswith("+00:00")
    assert "ValueError: boom" in second["exception"]


def test_levels(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup(0)
    logging.getLogger("x").info("hidden")
    logging.getLogger("x").warning("shown")
    logs.setup(2, "master")
    logging.getLogger("x").debug("debug shown")
    err = capsys.readouterr().err
    assert "hidden" not in err and "shown" in err
    assert "master DEBUG x: debug shown" in err


def test_registered_secrets_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    secret = os.urandom(32)
    logs.register_secret(secret)
    logs.register_secret(b"short")  # too short to register: would mask ordinary words
    for fmt in logs.FORMATS:
        logs.setup(1, "t", fmt)
        log = logging.getLogger("t")
        log.warning("key %s", base64.b64encode(secret).decode())
        log.warning("hex %s", secret.hex())
        log.warning("a short word")
    err = capsys.readouterr().err
    assert base64.b64encode(secret).decode() not in err
    assert secret.hex() not in err
    assert err.count("[secret]") == 4
    assert err.count("a short word") == 2
