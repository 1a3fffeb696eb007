"""`make lab` starts JupyterLab on the notebooks with the project's kernel, headless.

Runs the Makefile's own `lab` target (setup skipped: the test runs inside the installed venv)
on a free 127.0.0.1 port with a token, with no display, and talks to it over its REST API:
the seven chapter notebooks are listed, the default kernel is the venv's python3, and a
kernel opened for a notebook runs in the repository root, where the notebooks' paths point.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.error import URLError
from urllib.request import Request, urlopen

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
START_TIMEOUT_S = 90


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lab:
    """A running `make lab`: its base URL, token and log file."""

    def __init__(self, url: str, token: str, log: Path) -> None:
        self.url, self.token, self.log = url, token, log

    def request(self, path: str, method: str = "GET", body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = Request(f"{self.url}{path}", data=data, method=method,
                      headers={"Authorization": f"token {self.token}",
                               "Content-Type": "application/json"})
        with urlopen(req, timeout=10) as response:
            text = response.read().decode()
        return json.loads(text) if text else {}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("lab")
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in {"DISPLAY", "WAYLAND_DISPLAY"}}
    # as many containers set it: make's targets must keep Python's bytecode cache all the same
    env.update(JUPYTER_TOKEN=token, JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), BROWSER="false",
               PYTHONDONTWRITEBYTECODE="1")
    log = tmp / "lab.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "-o", "setup", "lab", f"LAB_PORT={port}",
             f"VENV={Path(sys.executable).parents[1]}"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = Lab(f"http://127.0.0.1:{port}", token, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"make lab exited with {process.returncode}:\n"
                            f"{log.read_text()[-3000:]}")
            try:
                server.request("/api/status")
                break
            except (URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer in {START_TIMEOUT_S} s:\n"
                                f"{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield server
        server.request("/api/shutdown", method="POST")
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


def test_lab_lists_the_seven_notebooks(lab: Lab) -> None:
    listing = lab.request("/api/contents")
    names = sorted(item["name"] for item in listing["content"] if item["type"] == "notebook")
    assert len(NOTEBOOKS) == 7
    assert names == NOTEBOOKS


def test_lab_is_headless_and_token_protected(lab: Lab) -> None:
    log = lab.log.read_text()
    assert "--no-browser" in log, "make lab should not open a browser without a display"
    with pytest.raises(URLError):  # HTTPError (403) is a URLError
        urlopen(f"{lab.url}/api/contents", timeout=10)


def test_lab_default_kernel_is_the_venvs(lab: Lab) -> None:
    """The spec names the venv's interpreter, or (ipykernel 6) "python", which jupyter_client
    launches as the server's own: the venv's (the next test checks the kernel that starts)."""
    specs = lab.request("/api/kernelspecs")
    assert specs["default"] == "python3"
    argv = specs["kernelspecs"]["python3"]["spec"]["argv"]
    launched = sys.executable if argv[0] == "python" else argv[0]
    assert Path(launched).resolve().parent == Path(sys.executable).resolve().parent
    assert argv[argv.index("-m") + 1] == "ipykernel_launcher"


def _execute(lab: Lab, kernel_id: str, code: str, timeout_s: float = 60) -> str:
    """Run ``code`` on the kernel over its websocket; its stdout."""
    import websocket

    ws = websocket.create_connection(
        f"{lab.url.replace('http', 'ws')}/api/kernels/{kernel_id}/channels?token={lab.token}",
        timeout=timeout_s,
    )
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False},
    }))
    out: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "error":
                raise AssertionError(f"kernel error: {msg['content']['evalue']}")
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(out)
    finally:
        ws.close()
    raise AssertionError(f"no reply in {timeout_s} s")


def test_notebook_kernel_runs_in_the_repository_root_and_keeps_bytecode(lab: Lab) -> None:
    """Without bytecode every kernel would compile torch, timm and transformers from source
    (Makefile: 36 s instead of 14 s to import mmcore.experiment on a 2-core host)."""
    session = lab.request("/api/sessions", method="POST", body={
        "path": NOTEBOOKS[0], "type": "notebook", "name": NOTEBOOKS[0],
        "kernel": {"name": "python3"},
    })
    kernel_id = session["kernel"]["id"]
    try:
        out = _execute(lab, kernel_id, "import os, sys; print(os.getcwd()); "
                                       "print(sys.executable); print(sys.dont_write_bytecode)")
    finally:
        lab.request(f"/api/sessions/{session['id']}", method="DELETE")
    cwd, executable, no_bytecode = out.strip().splitlines()
    assert no_bytecode == "False", "PYTHONDONTWRITEBYTECODE reached the kernel"
    assert Path(cwd).resolve() == ROOT.resolve(), "data/ and runs/ would not resolve"
    assert Path(executable).resolve().parent == Path(sys.executable).resolve().parent
