"""The shared daemon main loop, run as a real process: readiness, reload, clean stop, refusals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

TOY = [sys.executable, str(Path(__file__).with_name("toy_daemon.py"))]
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[3] / "daemons")}


@pytest.fixture
def notify_socket(tmp_path):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield path, sock
    sock.close()


def wait_for(sock: socket.socket, prefix: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = sock.recv(4096).decode()
        if message.startswith(prefix):
            return message
    raise AssertionError(f"no {prefix!r} notification")


def start(tmp_path, notify_path: str, text: str) -> tuple[subprocess.Popen, Path]:
    config = tmp_path / "toy.toml"
    config.write_text(text)
    proc = subprocess.Popen([*TOY, "--config", str(config)], env={**ENV, "NOTIFY_SOCKET": notify_path},
                            stderr=subprocess.PIPE, text=True)
    return proc, config


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err


def test_ready_carries_status_and_sigterm_stops_cleanly(tmp_path, notify_socket) -> None:
    path, sock = notify_socket
    proc, _ = start(tmp_path, path, 'greeting = "hi"\n')
    assert wait_for(sock, "READY=1") == "READY=1\nSTATUS=greeting hi"
    code, err = stop(proc)
    assert wait_for(sock, "STOPPING=1")
    assert code == 0
    assert "toy stopped cleanly" in err


def test_sighup_applies_a_good_file_and_keeps_config_on_a_broken_one(tmp_path, notify_socket) -> None:
    path, sock = notify_socket
    proc, config = start(tmp_path, path, 'greeting = "hi"\n')
    try:
        wait_for(sock, "READY=1")
        config.write_text('greeting = "bonjour"\n')
        proc.send_signal(signal.SIGHUP)
        assert wait_for(sock, "READY=1") == "READY=1\nSTATUS=greeting bonjour"
        config.write_text("greeting = 42\n")
        proc.send_signal(signal.SIGHUP)
        assert wait_for(sock, "READY=1") == "READY=1\nSTATUS=greeting bonjour"
    finally:
        code, err = stop(proc)
    assert code == 0
    assert "reload refused, keeping the running configuration" in err
    assert "greeting: must be a string, got 42" in err


def test_check_config_prints_every_problem_and_exits_1(tmp_path) -> None:
    config = tmp_path / "toy.toml"
    config.write_text("port = 99999\ncolour = 'red'\n")
    result = subprocess.run([*TOY, "--config", str(config), "--check-config"], env=ENV,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"sipmob-toy: {config}: colour: unknown key (known keys: greeting, port)",
        f"sipmob-toy: {config}: port: must be a port number 0-65535, got 99999",
    ]


def test_check_config_accepts_a_valid_file(tmp_path) -> None:
    config = tmp_path / "toy.toml"
    config.write_text("port = 5000\n")
    result = subprocess.run([*TOY, "--config", str(config), "--check-config"], env=ENV,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stdout


def test_port_in_use_is_a_start_failure_with_exit_3(tmp_path, notify_socket) -> None:
    path, sock = notify_socket
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    try:
        proc, _ = start(tmp_path, path, f"port = {holder.getsockname()[1]}\n")
        try:
            proc.wait(timeout=20)
        finally:
            code, err = stop(proc)
    finally:
        holder.close()
    assert code == 3
    assert "could not start" in err
