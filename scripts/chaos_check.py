"""How hard tessera is to break, measured: overload, secrets in logs, SIGKILL rounds, and the
fuzz figures of the `cargo test` run that scripts/chaos_check.sh makes before this.

Run by scripts/chaos_check.sh, which builds tessera and runs the fuzz targets. Standard
library only. Prints one line per check with its figures and exits non-zero at the first
failure:

1. fuzz: every target's inputs tried and failures (must be 0), from the cargo test log;
2. overload, runner: `tessera runner` (queue depth 2) on the fixture model, sent about 10x
   the requests it can serve, open loop, for several thousand requests: every answer is a
   200 or a 503 whose `Retry-After` is a whole number of seconds >= 1, none is late (the
   client's deadline), and its resident memory stays flat (peak of the second half within
   20% + 16 MiB of the first half's);
3. overload, gateway: the same through `tessera serve` (gateway, orchestrator and runner in
   one process) with API keys, a wrong key mixed in (401s);
4. SIGKILL: `tessera serve` killed at a random moment of a burst of async and synchronous
   jobs, several rounds, restarted each time on the same data folder: every job it had
   answered 202 or 200 for is there after the restart with a final status, and every result
   URL it handed out serves a complete PNG. Jobs lost must be 0;
5. storage full: a gateway whose result folder is a small tmpfs answers 507 once it is full,
   never serves a partial file, and its ledger matches what each client was told (needs
   root, for the mount);
6. secrets: no API key, wrong key, webhook secret or orchestrator secret appears in any log
   line of any process of this check, at debug level.
"""

import argparse
import concurrent.futures
import json
import random
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import zlib
from pathlib import Path

from check_common import (
    CheckFailed,
    Cluster,
    check,
    free_port,
    get,
    get_json,
    link_hub_repo,
    ok,
    post_form,
)

MODEL = "timbrooks/instruct-pix2pix"
CHECKER = "CompVis/stable-diffusion-safety-checker"
API_KEY = "chaos-api-key-5f1e2d"
WRONG_KEY = "chaos-wrong-key-9a8b7c"
WEBHOOK_SECRET = "chaos-webhook-secret-3c4d"
ORCH_SECRET = "chaos-orch-secret-7e6f"
# A client gives up on a request after this long; a request answered later is late.
DEADLINE_SECS = 30
FUZZ_LINE = re.compile(
    r"fuzz (?P<name>[\w-]+): (?P<inputs>\d+) inputs .*?; (?P<accepted>\d+) accepted\), "
    r"(?P<failures>\d+) failures, slowest (?P<slowest>[\d.]+) ms, peak (?P<peak>[\d.]+) MiB"
)
# The fuzz targets the cargo test run must have reported (a missing one means it did not run).
FUZZ_TARGETS = {
    "multipart_form", "json_request", "loras", "image_decode", "safetensors", "pickle_file",
    "pickle_program", "scheduler_config", "model_folder_configs", "model_id", "ai_models_json",
    "runners_json", "heartbeat",
}


def fuzz_figures(log):
    rows = {}
    for line in Path(log).read_text(errors="replace").splitlines():
        m = FUZZ_LINE.search(line)
        if m:
            rows[m["name"]] = m
    missing = FUZZ_TARGETS - rows.keys()
    check(not missing, f"fuzz targets that did not report: {sorted(missing)}")
    total = sum(int(m["inputs"]) for m in rows.values())
    failures = sum(int(m["failures"]) for m in rows.values())
    for name in sorted(rows):
        m = rows[name]
        print(f"      fuzz {name:22} {int(m['inputs']):7} inputs  {int(m['accepted']):6} accepted  "
              f"{m['failures']} failures  "
              f"slowest {float(m['slowest']):7.1f} ms  peak {float(m['peak']):6.1f} MiB", flush=True)
    check(failures == 0, f"{failures} fuzz inputs failed")
    ok(f"fuzz: {len(rows)} targets, {total} inputs, 0 failures (no panic, none over 1 s or its memory cap)")
    return total


class Rss:
    """Samples a process's resident memory (VmRSS) every 0.2 s while the load runs."""

    def __init__(self, pid):
        self.pid, self.samples, self.stopped = pid, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def read(self):
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def run(self):
        while not self.stopped.is_set():
            try:
                self.samples.append(self.read())
            except OSError:
                return
            time.sleep(0.2)

    def stop(self):
        self.stopped.set()
        self.thread.join()
        half = max(1, len(self.samples) // 2)
        return max(self.samples[:half]), max(self.samples[half:] or self.samples[:half])


def one_request(url, fields, image, headers):
    started = time.monotonic()
    try:
        status, answer_headers, _ = post_form(url, fields, {"image": ("in.png", image)}, headers,
                                              timeout=DEADLINE_SECS)
    except (TimeoutError, urllib.error.URLError) as e:
        return "late" if "timed out" in str(e) else f"error: {e}", time.monotonic() - started, None
    return status, time.monotonic() - started, answer_headers.get("Retry-After")


def sequential_waits(url, image, headers, fields, n):
    """Milliseconds each of `n` requests in a row took, sorted (the server otherwise idle)."""
    waits = []
    for _ in range(n):
        status, took, _ = one_request(url, fields, image, headers)
        check(status == 200, f"{url}: a lone request got {status}")
        waits.append(took * 1000)
    return sorted(waits)


def percentile(sorted_values, p):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


def overload(name, url, image, pid, headers_for, requests, fields):
    """Sends `requests` requests to `url`, open loop at 10x the measured capacity; returns
    the tally of answers. `headers_for(i)` gives request i's headers."""
    # Capacity: what three requests in a row take.
    started = time.monotonic()
    for _ in range(3):
        status, _, _ = one_request(url, fields, image, headers_for(0))
        check(status == 200, f"{name}: a lone request got {status}")
    per_job = (time.monotonic() - started) / 3
    rate = 10 / per_job
    rss = Rss(pid)
    tally, retry_afters, waits = {}, [], []
    lock = threading.Lock()

    def send(i):
        status, took, retry_after = one_request(url, fields, image, headers_for(i))
        with lock:
            tally[status] = tally.get(status, 0) + 1
            waits.append(took)
            if status == 503:
                retry_afters.append(retry_after)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=48) as pool:
        for i in range(requests):
            # Open loop: request i leaves at i / rate whatever the answers so far.
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, i)
    elapsed = time.monotonic() - started
    first_half, second_half = rss.stop()
    served = tally.get(200, 0)
    busy = tally.get(503, 0)
    bad_retry = [r for r in retry_afters if not (r and r.isdigit() and int(r) >= 1)]
    others = {k: v for k, v in tally.items() if k not in (200, 503, 401)}
    waits.sort()
    print(f"      {name}: {requests} requests in {elapsed:.1f} s (offered {rate:.0f}/s, "
          f"10x one job's {per_job * 1000:.0f} ms): {served} x 200, {busy} x 503 "
          f"({100 * busy / requests:.0f}%), {tally.get(401, 0)} x 401, other {others}; "
          f"wait p50 {waits[len(waits) // 2] * 1000:.0f} ms p99 {waits[int(len(waits) * 0.99)] * 1000:.0f} ms; "
          f"RSS peak {first_half:.0f} MiB (first half) / {second_half:.0f} MiB (second half)", flush=True)
    check(not others, f"{name}: answers other than 200/503/401: {others}")
    check(not bad_retry, f"{name}: 503s without a usable Retry-After: {bad_retry[:5]}")
    check(served > 0 and busy > 0, f"{name}: the load neither got through nor was shed: {tally}")
    check(second_half <= first_half * 1.2 + 16,
          f"{name}: RSS grew from {first_half:.0f} to {second_half:.0f} MiB under steady load")
    return tally, first_half, second_half


def png_complete(data):
    """Whether `data` is a whole PNG: the signature, every chunk's CRC, and IEND last."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    at = 8
    while at + 12 <= len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kind = data[at + 4:at + 8]
        body = data[at + 8:at + 8 + length]
        crc = data[at + 8 + length:at + 12 + length]
        if len(body) != length or len(crc) != 4:
            return False
        if struct.unpack(">I", crc)[0] != zlib.crc32(kind + body):
            return False
        at += 12 + length
        if kind == b"IEND":
            return at == len(data)
    return False


def sigkill_rounds(cluster, args, image, rounds):
    data = cluster.work / "serve-data"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    answered = {}  # job or request id -> result URLs known from the answer ([] for a 202)
    lock = threading.Lock()
    rng = random.Random(19)
    for round_ in range(rounds):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cluster.start("serve", [*args, "--port", str(port), "--data-dir", str(data)])
        cluster.wait_healthy("serve", base)
        stop = threading.Event()

        def submit_async(i):
            steps = rng.choice([2, 4, 8, 16])
            status, _, body = post_form(
                base + "/image-to-image",
                {"prompt": "a hat", "num_inference_steps": steps, "safety_check": "false", "seed": i},
                {"image": ("in.png", image)}, {**headers, "Prefer": "respond-async"}, timeout=10)
            if status == 202:
                with lock:
                    answered[body["id"]] = []

        def submit_sync(i):
            try:
                req_status, req_headers, body = post_form(
                    base + "/image-to-image",
                    {"prompt": "a hat", "num_inference_steps": 2, "safety_check": "false", "seed": i},
                    {"image": ("in.png", image)}, headers, timeout=30)
            except OSError:
                return  # killed before it answered: nothing was promised
            if req_status == 200:
                with lock:
                    answered[req_headers["X-Request-Id"]] = [m["url"] for m in body["images"]]

        def burst():
            i = round_ * 1000
            while not stop.is_set():
                i += 1
                try:
                    (submit_sync if i % 3 == 0 else submit_async)(i)
                except OSError:
                    return
                time.sleep(0.05)

        workers = [threading.Thread(target=burst, daemon=True) for _ in range(3)]
        for w in workers:
            w.start()
        time.sleep(rng.uniform(1.0, 4.0))
        cluster.stop("serve", signal.SIGKILL)
        stop.set()
        for w in workers:
            w.join(timeout=40)

    # After the last kill: restart once more and look for everything promised.
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cluster.start("serve", [*args, "--port", str(port), "--data-dir", str(data)])
    cluster.wait_healthy("serve", base)
    lost, finals, urls_checked = [], {}, 0
    for job_id, urls in answered.items():
        try:
            doc = get_json(f"{base}/jobs/{job_id}", headers)
        except urllib.error.HTTPError as e:
            lost.append(f"{job_id}: GET /jobs answered {e.code}")
            continue
        status = doc.get("status")
        final = status in ("succeeded", "failed", "cancelled", "ok")
        if not final:
            # Queued or running after a restart would be a job nobody finishes.
            lost.append(f"{job_id}: status {status!r} after the restart")
            continue
        finals[status] = finals.get(status, 0) + 1
        if not urls:
            urls = [m["url"] for m in doc.get("images", [])]
        for url in urls:
            urls_checked += 1
            try:
                png = get(url if url.startswith("http") else base + url)
            except OSError as e:
                lost.append(f"{job_id}: {url}: {e}")
                continue
            if not png_complete(png):
                lost.append(f"{job_id}: {url}: not a complete PNG ({len(png)} bytes)")
    cluster.stop("serve")
    print(f"      sigkill: {rounds} rounds, {len(answered)} jobs answered 200/202, final statuses "
          f"{finals}, {urls_checked} result URLs fetched, {len(lost)} lost", flush=True)
    check(not lost, "jobs or results lost across SIGKILL:\n" + "\n".join(lost[:10]))
    check(len(answered) > 0, "no job was answered before the kills: nothing was tested")
    ok(f"sigkill: {rounds} rounds, {len(answered)} jobs, 0 lost")


def storage_full(cluster, hub, image, work):
    """A gateway whose result folder is a 256 KiB tmpfs (the ledger elsewhere) takes jobs
    until it is full: from then on a clear 507, no partial file ever served, and every
    ledger row matching what its client was told."""
    mount = work / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    check(done.returncode == 0, f"cannot mount a small tmpfs for the storage-full check "
                                f"(needs root): {done.stderr.strip()}")
    try:
        models = work / "aiModels.json"
        models.write_text(json.dumps([{"pipeline": "image-to-image", "model_id": MODEL,
                                       "warm": True, "price_per_unit": 0}]))
        orch_port = free_port()
        orch = f"http://127.0.0.1:{orch_port}"
        cluster.start("storage-orchestrator", ["orchestrator", "--host", "127.0.0.1",
                                               "--port", str(orch_port), "--models", str(models),
                                               "--model-dir", str(hub)])
        cluster.wait_healthy("storage-orchestrator", orch)
        config = work / "gateway.json"
        config.write_text(json.dumps({
            "orchestrators": [orch],
            "storage": {"kind": "local", "path": str(mount / "results")},
            "ledger": str(work / "storage-ledger.sqlite"),
            "default_model": MODEL,
        }))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cluster.start("storage-gateway", ["gateway", "--config", str(config),
                                          "--host", "127.0.0.1", "--port", str(port)])
        cluster.wait_healthy("storage-gateway", base)
        fields = {"prompt": "a hat", "num_inference_steps": 1, "safety_check": "false",
                  "num_images_per_prompt": 2}
        answers = []
        for i in range(60):
            status, headers, body = post_form(base + "/image-to-image", {**fields, "seed": i},
                                              {"image": ("in.png", image)}, {})
            answers.append((status, headers.get("X-Request-Id"), body))
            if status == 507:
                break
        statuses = [a[0] for a in answers]
        check(statuses[-1] == 507, f"the small disk never filled up: {statuses}")
        check(set(statuses) <= {200, 507}, f"answers other than 200 and 507: {statuses}")
        msg = (answers[-1][2] or {}).get("detail", {}).get("msg", "")
        check("storage is full" in msg, f"the 507 does not say why: {answers[-1][2]}")
        served = 0
        for status, request_id, body in answers:
            row = get_json(f"{base}/jobs/{request_id}")
            want = "ok" if status == 200 else "failed"
            check(row["status"] == want, f"{request_id}: answered {status}, ledger says {row}")
            if status == 200:
                for m in body["images"]:
                    png = get(base + m["url"])
                    check(png_complete(png), f"{m['url']}: served {len(png)} bytes, not a whole PNG")
                    served += 1
        # The failed request left nothing behind either.
        failed_id = answers[-1][1]
        leftovers = list((mount / "results" / failed_id).glob("*")) if failed_id else []
        check(not leftovers, f"the 507's images were left on disk: {leftovers}")
        ok(f"storage full: {len(answers) - 1} jobs stored ({served} images, all whole), then 507 "
           f"\"{msg}\"; ledger rows match every answer")
    finally:
        for name in ("storage-gateway", "storage-orchestrator"):
            if name in cluster.procs:
                cluster.stop(name)
        subprocess.run(["umount", str(mount)], capture_output=True)


def secrets_in_logs(work):
    secrets = [API_KEY, WRONG_KEY, WEBHOOK_SECRET, ORCH_SECRET]
    hits, lines = [], 0
    for log in sorted(work.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            lines += 1
            hits.extend(f"{log.name}: {line[:200]}" for s in secrets if s in line)
    check(lines > 0, "no log lines to look through")
    check(not hits, "secrets in logs:\n" + "\n".join(hits[:10]))
    ok(f"secrets: 0 of {len(secrets)} secrets in {lines} log lines (RUST_LOG=debug)")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tessera", required=True)
    p.add_argument("--fixtures", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--fuzz-log", type=Path, required=True)
    p.add_argument("--requests", type=int, default=3000, help="requests per overload run")
    p.add_argument("--rounds", type=int, default=4, help="SIGKILL rounds")
    a = p.parse_args()
    cluster = Cluster(a.tessera, a.work, env={"RUST_LOG": "debug", "HF_HUB_OFFLINE": "1"})
    try:
        run(a, cluster)
    except CheckFailed as e:
        print(f"FAIL  {e}", flush=True)
        for name in ("runner", "serve"):
            tail = cluster.log_tail(name)
            if tail:
                print(f"--- last lines of {name}.log\n{tail}", flush=True)
        return 1
    finally:
        cluster.stop_all()
    print("all chaos checks passed", flush=True)
    return 0


def run(a, cluster):
    fuzz_figures(a.fuzz_log)
    hub = a.work / "hub"
    link_hub_repo(hub, MODEL, a.fixtures / "models" / "tiny-instruct-pix2pix")
    link_hub_repo(hub, CHECKER, a.fixtures / "models" / "tiny-safety-checker")
    image = (a.fixtures / "inputs" / "square.png").read_bytes()
    fields = {"prompt": "a hat", "num_inference_steps": 1, "safety_check": "false", "seed": 1}

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    runner = cluster.start("runner", ["runner", "--model-id", MODEL, "--model-dir", str(hub),
                                      "--host", "127.0.0.1", "--port", str(port),
                                      "--queue-depth", "2", "--auth-token", API_KEY])
    cluster.wait_healthy("runner", base)
    direct = sequential_waits(base + "/image-to-image", image,
                              {"Authorization": f"Bearer {API_KEY}"}, fields, 100)
    overload("runner", base + "/image-to-image", image, runner.pid,
             lambda i: {"Authorization": f"Bearer {API_KEY}"}, a.requests, fields)
    cluster.stop("runner")
    ok("overload, runner: only 200 and 503 with Retry-After, none late, RSS flat")

    serve_args = ["serve", "--model-id", MODEL, "--model-dir", str(hub), "--host", "127.0.0.1",
                  "--api-key", API_KEY, "--webhook-secret", WEBHOOK_SECRET]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = cluster.start("serve", [*serve_args, "--port", str(port),
                                    "--data-dir", str(a.work / "overload-data")])
    cluster.wait_healthy("serve", base)
    through = sequential_waits(base + "/image-to-image", image,
                               {"Authorization": f"Bearer {API_KEY}"}, fields, 100)
    print(f"      latency, 100 requests in a row: runner direct p50 {percentile(direct, 0.5):.1f} ms "
          f"p99 {percentile(direct, 0.99):.1f} ms; through gateway + orchestrator (tessera serve) "
          f"p50 {percentile(through, 0.5):.1f} ms p99 {percentile(through, 0.99):.1f} ms; "
          f"overhead p50 {percentile(through, 0.5) - percentile(direct, 0.5):+.1f} ms", flush=True)
    tally, _, _ = overload(
        "gateway", base + "/image-to-image", image, serve.pid,
        lambda i: {"Authorization": f"Bearer {WRONG_KEY if i % 10 == 7 else API_KEY}"},
        a.requests, fields)
    check(tally.get(401, 0) == a.requests // 10 + (1 if a.requests % 10 > 7 else 0),
          f"gateway: wrong keys answered {tally.get(401, 0)} x 401")
    cluster.stop("serve")
    ok("overload, gateway: only 200, 503 with Retry-After and the wrong keys' 401, none late, RSS flat")

    # A registered runner too, so that the orchestrator secret is in play.
    orch_port = free_port()
    orch = f"http://127.0.0.1:{orch_port}"
    cluster.start("orchestrator", ["orchestrator", "--host", "127.0.0.1", "--port", str(orch_port),
                                   "--secret", ORCH_SECRET, "--model-dir", str(hub)])
    runner_port = free_port()
    cluster.start("live-runner", ["runner", "--model-id", MODEL, "--model-dir", str(hub),
                                  "--host", "127.0.0.1", "--port", str(runner_port),
                                  "--register-with", orch, "--orch-secret", ORCH_SECRET])
    cluster.wait_healthy("live-runner", f"http://127.0.0.1:{runner_port}")
    time.sleep(1)
    cluster.stop("live-runner")
    cluster.stop("orchestrator")

    sigkill_rounds(cluster, serve_args, image, a.rounds)
    storage_full(cluster, hub, image, a.work)
    secrets_in_logs(a.work)


if __name__ == "__main__":
    sys.exit(main())
