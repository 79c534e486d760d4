"""`make demo` with its ports taken (a demo still running from another checkout): one line
naming the port and how to stop the other, not a traceback, and nothing of the other touched."""

from __future__ import annotations

import socket

import pytest

from demo import run_demo


@pytest.fixture
def taken_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_a_taken_sandbox_port_is_one_line(monkeypatch, tmp_path, taken_port):
    monkeypatch.setattr(run_demo, "SANDBOX_PORT", taken_port)
    monkeypatch.setattr(run_demo, "SANDBOX_URL", f"http://127.0.0.1:{taken_port}")
    monkeypatch.setattr(run_demo, "SANDBOX_PID", tmp_path / "sandbox.pid")  # not ours
    with pytest.raises(SystemExit) as stop:
        run_demo.start_sandbox()
    message = str(stop.value)
    assert f"port {taken_port} (the demo's sandbox workspace) is taken" in message
    assert "make demo-stop" in message and "\n" not in message


def test_a_taken_postgres_port_is_one_line(monkeypatch, taken_port):
    class NotRunning:
        def is_running(self) -> bool:
            return False

        def start(self) -> None:
            raise AssertionError("must not start on a taken port")

    monkeypatch.setattr(run_demo, "PG_PORT", taken_port)
    monkeypatch.setattr(run_demo, "postgres", NotRunning)
    with pytest.raises(SystemExit) as stop:
        run_demo.start_postgres()
    assert f"port {taken_port} (the demo's PostgreSQL) is taken" in str(stop.value)
