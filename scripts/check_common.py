"""What the end-to-end check scripts share: the check/ok/FAIL reporting, loopback ports, a
hub cache laid out from fixture folders, the processes under test, and small HTTP helpers
on the standard library (so a check needs no package for them).

Imported by the check scripts beside it (network, live runner, playground, chaos), which
are run from scripts/ (Python puts a script's own folder on `sys.path`). Their shell halves
share scripts/check_lib.sh.
"""

import io
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

# The revision a linked fixture repository is published under in the hub cache.
LINKED_REVISION = "0" * 40


class CheckFailed(Exception):
    pass


def check(ok, what):
    if not ok:
        raise CheckFailed(what)


def ok(line):
    print(f"ok    {line}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def link_hub_repo(hub, repo_id, folder):
    """Lays out `folder` as repository `repo_id` of a hub cache (a snapshot linking to it)."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    (repo / "snapshots").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "snapshots" / LINKED_REVISION).symlink_to(folder.resolve())
    (repo / "refs" / "main").write_text(LINKED_REVISION)


class Cluster:
    """The processes under test, each logging to `<work>/<name>.log`; every pid goes to
    `<work>/pids` for the shell's trap, so that none outlives the check."""

    def __init__(self, tessera, work, env=None):
        self.tessera = tessera
        self.work = work
        self.env = env or {}
        self.procs = {}

    def start(self, name, args):
        log = open(self.work / f"{name}.log", "ab")
        env = {k: v for k, v in os.environ.items() if k not in ("PORT", "MODEL_DIR", "ORCH_SECRET")}
        env["RUST_LOG"] = env.get("RUST_LOG", "info")
        env.update(self.env)
        proc = subprocess.Popen(
            [self.tessera, *args], stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
        )
        with open(self.work / "pids", "a") as f:
            f.write(f"{proc.pid}\n")
        self.procs[name] = proc
        return proc

    def stop(self, name, sig=signal.SIGTERM):
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name, signal.SIGKILL)

    def log_tail(self, name, lines=20):
        path = self.work / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def wait_healthy(self, name, base, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise CheckFailed(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            try:
                if get_json(base + "/health") == {"status": "OK"}:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise CheckFailed(f"{name} not healthy at {base} after {timeout} s")


def get(url, headers=None, timeout=30):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as res:
        return res.read()


def get_json(url, headers=None):
    return json.loads(get(url, headers))


def wait_for(probe, what, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        check(time.monotonic() < deadline, f"timed out waiting for {what}")
        time.sleep(0.2)


def multipart(fields, files):
    """(body, content type) of a multipart form: `fields` name -> text, `files` name ->
    (file name, bytes)."""
    boundary = "tessera-check-boundary"
    body = io.BytesIO()
    for name, value in fields.items():
        body.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n".encode())
    for name, (file_name, content) in files.items():
        body.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{file_name}\"\r\n"
                   f"Content-Type: image/png\r\n\r\n".encode() + content + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def post_form(url, fields, files, headers, timeout=60):
    """POSTs a multipart form; returns (status, response headers, JSON body or None)."""
    body, content_type = multipart(fields, files)
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={**headers, "Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, res.headers, _json_or_none(res.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, _json_or_none(e.read())


def _json_or_none(raw):
    try:
        return json.loads(raw)
    except ValueError:
        return None


def post_async(url, fields, files, headers):
    """POSTs a multipart form with `Prefer: respond-async`; returns (status, JSON body)."""
    status, _, body = post_form(url, fields, files, {**headers, "Prefer": "respond-async"})
    return status, body


def sse_events(url, headers):
    """Yields (event, data) of a Server-Sent Events stream until it ends."""
    req = urllib.request.Request(url, headers={**headers, "Accept": "text/event-stream"})
    with urllib.request.urlopen(req, timeout=600) as res:
        name, data = None, []
        for raw in res:
            line = raw.decode().rstrip("\r\n")
            if not line:
                if name is not None:
                    yield name, json.loads("".join(data))
                name, data = None, []
            elif line.startswith("event:"):
                name = line[len("event:"):].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:"):].lstrip())
