"""go-livepeer's Live Runner protocol against `tessera orchestrator` and `tessera runner`,
driven by Livepeer's own client, the `livepeer-gateway` SDK (1.0.0).

Run by scripts/live_runner_check.sh, which builds tessera and the SDK's virtual environment.
Checks, printing a line per check and stopping at the first failure:

1. a wrong bootstrap secret is refused with 401;
2. the SDK's `register_runner(...)` lists the runner in `/discovery`, and a call to
   `/apps/<id>/app/<path>` reaches it with its body, query and a `Livepeer-Session-Id`;
3. capacity 1 and two concurrent calls: one of them is a 503;
4. a runner that stops heartbeating leaves discovery after the TTL;
5. `runner_selector(orchestrators=[...], app=..., body={...}).next()` against a
   `tessera runner --register-with` returns images byte-equal to `tessera edit`'s for the
   same seeds;
6. SIGTERM on that runner takes it out of discovery at once.
"""

import argparse
import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from check_common import CheckFailed, check, free_port, get_json, link_hub_repo, ok, wait_for
from livepeer_gateway import LivepeerHTTPError, register_runner, runner_selector

SECRET = "orchestrator-secret"
MODEL = "tessera-check/live"


def listed(orchestrator, app):
    return [r for e in get_json(f"{orchestrator}/discovery") for r in e.get("runners", [])
            if r["app"] == app]


class Echo(BaseHTTPRequestHandler):
    """A runner that answers what it was sent; `/slow` takes two seconds."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/slow"):
            time.sleep(2)
        answer = json.dumps({"path": self.path, "body": body.decode(),
                             "session": self.headers.get("Livepeer-Session-Id")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def start(tessera, log, *args):
    return subprocess.Popen([tessera, *args], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT)


async def run(a):
    work = Path(a.work)
    logs = open(work / "processes.log", "wb")
    procs = []
    try:
        port = free_port()
        orch = f"http://127.0.0.1:{port}"
        procs.append(start(a.tessera, logs, "orchestrator", "--secret", SECRET,
                           "--host", "127.0.0.1", "--port", str(port)))
        wait_for(lambda: _healthy(orch), "the orchestrator")

        echo = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
        threading.Thread(target=echo.serve_forever, daemon=True).start()
        echo_url = f"http://127.0.0.1:{echo.server_port}"

        # 1. A wrong bootstrap secret.
        try:
            await register_runner(orch, secret="wrong", runner_url=echo_url, app="check/echo",
                                  mode="single-shot", auto_detect_gpu=False)
            raise CheckFailed("a registration with a wrong secret was accepted")
        except LivepeerHTTPError as e:
            check(e.status_code == 401, f"wrong secret: {e.status_code}, not 401")
        ok("a wrong bootstrap secret is refused with 401")

        # 2. Registered by the SDK, listed, and called through the orchestrator.
        reg = await register_runner(orch, secret=SECRET, runner_url=echo_url, app="check/echo",
                                    mode="single-shot", capacity=1, auto_detect_gpu=False,
                                    price=0.01, unit="fixed", unregister_on_close=False)
        runners = listed(orch, "check/echo")
        check(len(runners) == 1 and runners[0]["capacity"] == 1, f"discovery: {runners}")
        url = runners[0]["url"]
        check(url == f"{orch}/apps/{reg.runner_id}/app", f"discovery url {url}")
        req = urllib.request.Request(f"{url}/v1/echo?x=1", data=b'{"hello": 1}',
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            got = json.load(r)
        check(got["path"] == "/v1/echo?x=1" and got["body"] == '{"hello": 1}',
              f"the runner saw {got}")
        check((got["session"] or "").startswith("session_"), f"session id {got['session']}")
        ok(f"register_runner: listed at {url}; a call reached it with body, query and session id {got['session']}")

        # 3. Capacity 1, two calls at once.
        def call(results):
            try:
                with urllib.request.urlopen(urllib.request.Request(f"{url}/slow", data=b"{}"),
                                            timeout=10) as r:
                    results.append(r.status)
            except urllib.error.HTTPError as e:
                results.append(e.code)
        results = []
        threads = [threading.Thread(target=call, args=(results,)) for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.3)
        for t in threads:
            t.join()
        check(sorted(results) == [200, 503], f"two calls on capacity 1: {results}")
        ok("capacity 1, two concurrent calls: one 200, one 503")

        # 4. Heartbeats stop (no unregister): gone after the TTL.
        await reg.close()  # registered with unregister_on_close=False: heartbeats just stop
        started = time.monotonic()
        wait_for(lambda: not listed(orch, "check/echo"), "the silent runner to expire", timeout=40)
        waited = time.monotonic() - started
        check(waited > 10, f"the silent runner left discovery after {waited:.1f} s, before its TTL")
        ok(f"a runner that stopped heartbeating left discovery after {waited:.1f} s (TTL 20 s)")

        # 5. A tessera runner registered with --register-with, called through the selector.
        hub = work / "hub"
        link_hub_repo(hub, MODEL, Path(a.fixtures) / "models" / "tiny-instruct-pix2pix")
        runner_port = free_port()
        runner = start(a.tessera, logs, "runner", "--model-id", MODEL, "--model-dir", str(hub),
                       "--host", "127.0.0.1", "--port", str(runner_port),
                       "--register-with", orch, "--orch-secret", SECRET)
        procs.append(runner)
        app = f"tessera/image-to-image/{MODEL}"
        wait_for(lambda: listed(orch, app), "the tessera runner in discovery", timeout=120)
        image = Path(a.fixtures) / "inputs" / "square.png"
        body = {"prompt": "make it blue", "image": "data:image/png;base64,"
                + base64.b64encode(image.read_bytes()).decode(),
                "seed": 11, "num_inference_steps": 3, "num_images_per_prompt": 2,
                "safety_check": False}
        cursor = await runner_selector(orchestrators=[orch], app=app, body=body, timeout=120)
        result = await cursor.next()
        images = result.data["images"]
        check([m["seed"] for m in images] == [11, 12], f"seeds {[m['seed'] for m in images]}")
        out = work / "edit.png"
        subprocess.run([a.tessera, "edit", "--model", MODEL, "--model-dir", str(hub),
                        "--image", str(image), "--prompt", "make it blue", "--steps", "3",
                        "--seed", "11", "--num-images", "2", "--no-safety-check",
                        "--output", str(out)], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        for m, path in zip(images, [out, out.with_name("edit-1.png")]):
            png = base64.b64decode(m["url"].split(",", 1)[1])
            check(png == path.read_bytes(), f"seed {m['seed']}: the selector's PNG is not tessera edit's")
        ok("runner_selector(...).next() on a tessera runner --register-with: PNGs byte-equal to tessera edit's")

        # 6. SIGTERM: unregistered at once.
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=30)
        check(not listed(orch, app), "the stopped runner is still in discovery")
        ok("SIGTERM on the runner: gone from discovery at once")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        logs.close()


def _healthy(base):
    try:
        return get_json(f"{base}/health").get("status") == "OK"
    except OSError:
        return False


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tessera", required=True)
    p.add_argument("--fixtures", required=True)
    p.add_argument("--work", required=True)
    a = p.parse_args()
    try:
        asyncio.run(run(a))
    except CheckFailed as e:
        print(f"FAILED: {e}", flush=True)
        log = Path(a.work) / "processes.log"
        if log.exists():
            print("--- processes.log (tail)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
