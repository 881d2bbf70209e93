"""The network end to end across processes, with Livepeer's `livepeer-ai` SDK as the client.

Run by scripts/network_check.sh, which builds tessera and the SDK's virtual environment.
Starts two orchestrators (a cheap one and a dear one), a gateway and a Live Runner on loopback
ports, all speaking go-livepeer's Live Runner protocol (heartbeat registration, /discovery,
/apps/{runner_id}/app proxying), then checks, in order, printing a line per check and
stopping at the first failure:

1. a result URL downloads the image `tessera edit` makes with the same seed;
2. the cheaper warm orchestrator gets the job;
3. SIGKILLing it mid-job moves that job, and the next one, to the other;
4. a maximum price below every orchestrator is a 503 that says so;
5. the ledger holds one row per job, with fee = width * height * images * price per pixel;
6. a restarted gateway still serves old images and old ledger rows;
7. 16 images: 16 distinct URLs, each the image `tessera edit --num-images 16` makes;
8. a `tessera runner --register-with` the cheap orchestrator is listed in its discovery and
   serves its model through the gateway; after that orchestrator restarts, the runner
   registers again by itself;
9. an async job (`Prefer: respond-async`) to that registered runner streams one `progress`
   event per step through gateway and orchestrator and ends with `done`, its image the
   engine's; a second, long one is cancelled after its first `progress` event: it ends
   `cancelled`, and the runner's slot is free again;
10. SIGTERM takes the Live Runner out of discovery at once.
"""

import argparse
import io
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
from livepeer_ai import Livepeer
from livepeer_ai.models import errors
from PIL import Image

from check_common import (
    CheckFailed,
    Cluster,
    check,
    free_port,
    get,
    get_json,
    link_hub_repo,
    ok,
    post_async,
    sse_events,
    wait_for,
)

MODEL = "timbrooks/instruct-pix2pix"
# The same fixture under a second id, offered by both orchestrators, with a gateway maximum
# price below both: the "no one within the price" case without restarting anything.
PRICEY_MODEL = "tessera-check/pricey"
# The same fixture once more, served only by a Live Runner that registers itself.
LIVE_MODEL = "tessera-check/live"
CHECKER = "CompVis/stable-diffusion-safety-checker"
PIXELS_PER_UNIT = 1_000_000
CHEAP, DEAR = 1.0, 3.0  # USD per megapixel
SECRET = "orchestrator-secret"
API_KEY = "client-key"
PROMPT = "turn it into a watercolour"
STEPS = 4
# Enough denoising that the job is still running when the orchestrator is killed.
SLOW_STEPS = 400


def discovered(orchestrator, model):
    """The runner serving `model` in `orchestrator`'s discovery, or None."""
    app = f"tessera/image-to-image/{model}"
    for entry in get_json(f"{orchestrator}/discovery"):
        for runner in entry.get("runners", []):
            if runner["app"] == app:
                return runner
    return None


def pixels(png):
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def same_image(got_png, expected_path, what):
    got, want = pixels(got_png), pixels(Path(expected_path).read_bytes())
    check(got.shape == want.shape, f"{what}: {got.shape[1]}x{got.shape[0]}, expected {want.shape[1]}x{want.shape[0]}")
    diff = np.abs(got.astype(int) - want.astype(int))
    check(
        diff.max() == 0,
        f"{what}: differs from tessera edit's image in {(diff > 0).any(axis=2).sum()} pixels, by up to {diff.max()}",
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tessera", required=True)
    p.add_argument("--fixtures", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    a = p.parse_args()
    cluster = Cluster(a.tessera, a.work)
    try:
        run(a, cluster)
    except CheckFailed as e:
        print(f"FAIL  {e}", flush=True)
        return 1
    except (errors.HTTPError, errors.HTTPValidationError, errors.SDKError, OSError) as e:
        # An answer the check did not expect (from the SDK) or a connection that failed.
        print(f"FAIL  {type(e).__name__}: {e}", flush=True)
        for name in ("gateway", "cheap", "dear"):
            print(f"--- last lines of {name}.log\n{cluster.log_tail(name)}", flush=True)
        return 1
    finally:
        cluster.stop_all()
    print("all network checks passed", flush=True)
    return 0


def run(a, cluster):
    work, fixtures = a.work, a.fixtures
    hub = work / "hub"
    link_hub_repo(hub, MODEL, fixtures / "models" / "tiny-instruct-pix2pix")
    link_hub_repo(hub, PRICEY_MODEL, fixtures / "models" / "tiny-instruct-pix2pix")
    link_hub_repo(hub, LIVE_MODEL, fixtures / "models" / "tiny-instruct-pix2pix")
    link_hub_repo(hub, CHECKER, fixtures / "models" / "tiny-safety-checker")
    image_path = fixtures / "inputs" / "square.png"
    width, height = Image.open(image_path).size

    # What the engine makes, the reference for every downloaded image.
    def edit(name, seed, n):
        out = work / "expected" / name / "out.png"
        subprocess.run(
            [a.tessera, "edit", "--model", MODEL, "--model-dir", hub, "--image", image_path,
             "--prompt", PROMPT, "--steps", str(STEPS), "--seed", str(seed),
             "--num-images", str(n), "--output", out],
            check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        return [out] + [out.with_name(f"out-{i}.png") for i in range(1, n)]

    # Orchestrators: the same model warm at two prices, and the pricey id cold on both.
    orchestrators = {}
    for name, price in (("cheap", CHEAP), ("dear", DEAR)):
        models = work / f"{name}-aiModels.json"
        entry = {"pipeline": "image-to-image", "price_per_unit": price,
                 "pixels_per_unit": PIXELS_PER_UNIT, "currency": "USD"}
        models.write_text(json.dumps([
            {**entry, "model_id": MODEL, "warm": True, "capacity": 1},
            {**entry, "model_id": PRICEY_MODEL},
        ]))
        port = free_port()
        args = ["orchestrator", "--models", str(models), "--model-dir", str(hub),
                "--host", "127.0.0.1", "--port", str(port), "--secret", SECRET,
                "--max-images-per-prompt", "16"]
        orchestrators[name] = {"url": f"http://127.0.0.1:{port}", "args": args,
                               "ppp": price / PIXELS_PER_UNIT}
        cluster.start(name, args)
    for name, o in orchestrators.items():
        cluster.wait_healthy(name, o["url"])

    gateway_port = free_port()
    gateway = f"http://127.0.0.1:{gateway_port}"
    config = work / "gateway.json"
    usd = lambda per_mp: {"price_per_unit": per_mp, "pixels_per_unit": PIXELS_PER_UNIT, "currency": "USD"}
    config.write_text(json.dumps({
        "orchestrators": [orchestrators["cheap"]["url"], orchestrators["dear"]["url"]],
        "max_price": {"default": usd(5), PRICEY_MODEL: usd(0.5)},
        "api_keys": [API_KEY],
        "storage": {"kind": "local", "path": str(work / "results")},
        "ledger": str(work / "ledger.sqlite"),
        "refresh_secs": 1,
    }))
    gateway_args = ["gateway", "--config", str(config), "--host", "127.0.0.1", "--port", str(gateway_port)]

    def start_gateway():
        cluster.start("gateway", gateway_args)
        cluster.wait_healthy("gateway", gateway)

    start_gateway()
    sdk = Livepeer(http_bearer=API_KEY, server_url=gateway, timeout_ms=600_000)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    jobs = {}  # request id -> (orchestrator name or None, images), for the ledger check

    def image_to_image(seed, n=1, steps=STEPS, model=MODEL):
        with open(image_path, "rb") as f:
            content = f.read()
        res = sdk.generate.image_to_image(request={
            "prompt": PROMPT, "image": {"file_name": image_path.name, "content": content},
            "model_id": model, "seed": seed, "num_inference_steps": steps,
            "num_images_per_prompt": n, "guidance_scale": 7.5, "image_guidance_scale": 1.5,
            "safety_check": True,
        })
        return res.http_meta.response.headers["x-request-id"], res.image_response.images

    def job(request_id):
        return get_json(f"{gateway}/jobs/{request_id}", auth)

    def download(url):
        return get(urljoin(gateway + "/", url))

    # 1. The result URL downloads the engine's image for the seed.
    first_id, images = image_to_image(seed=42)
    check(len(images) == 1, f"1 image asked, {len(images)} answered")
    check(images[0].seed == 42, f"seed {images[0].seed} answered, 42 asked")
    first_url = images[0].url
    first_png = download(first_url)
    same_image(first_png, edit("seed42", 42, 1)[0], f"{first_url}")
    ok(f"result URL {first_url} downloads tessera edit's image for seed 42")

    # 2. The cheaper of two warm orchestrators gets it.
    row = job(first_id)
    check(row["orchestrator"] == orchestrators["cheap"]["url"],
          f"job went to {row['orchestrator']}, not the cheaper {orchestrators['cheap']['url']}")
    check(row["attempts"] == 1, f"{row['attempts']} attempts for the first job")
    jobs[first_id] = ("cheap", 1)
    ok(f"the cheaper warm orchestrator got the job ({row['orchestrator']}, {row['price_per_pixel']} USD/px)")

    # 3. SIGKILL the cheap one in the middle of a slow job. A gateway knows no latencies
    # after a restart, so the slow job goes to the cheaper one again rather than to the dear
    # one to measure it.
    cluster.stop("gateway")
    start_gateway()
    slow = {}

    def slow_job():
        try:
            slow["result"] = image_to_image(seed=7, steps=SLOW_STEPS)
        except Exception as e:  # reported below, on the main thread
            slow["error"] = e

    thread = threading.Thread(target=slow_job)
    thread.start()
    deadline = time.monotonic() + 60
    while True:
        runner = discovered(orchestrators["cheap"]["url"], MODEL)
        if runner and runner["capacity_available"] == 0:
            break
        check(time.monotonic() < deadline and thread.is_alive(),
              "the slow job never ran on the cheap orchestrator")
        time.sleep(0.05)
    time.sleep(0.5)
    cluster.stop("cheap", signal.SIGKILL)
    thread.join(timeout=600)
    check("result" in slow, f"the job in flight on the killed orchestrator failed: {slow.get('error')}")
    slow_id, slow_images = slow["result"]
    row = job(slow_id)
    check(row["orchestrator"] == orchestrators["dear"]["url"] and row["attempts"] == 2,
          f"the interrupted job ended on {row['orchestrator']} after {row['attempts']} attempts")
    jobs[slow_id] = ("dear", 1)
    next_id, images = image_to_image(seed=43)
    row = job(next_id)
    check(row["orchestrator"] == orchestrators["dear"]["url"],
          f"the next job went to {row['orchestrator']}, not {orchestrators['dear']['url']}")
    same_image(download(images[0].url), edit("seed43", 43, 1)[0], images[0].url)
    jobs[next_id] = ("dear", 1)
    ok("SIGKILL of the cheap orchestrator mid-job: that job retried and the next one done on the dear one")

    # The killed one comes back, so that the price check below faces both.
    cluster.start("cheap", orchestrators["cheap"]["args"])
    cluster.wait_healthy("cheap", orchestrators["cheap"]["url"])
    time.sleep(2.5)  # two capability refreshes

    # 4. A maximum price below every orchestrator.
    try:
        image_to_image(seed=1, model=PRICEY_MODEL)
        raise CheckFailed(f"a job for {PRICEY_MODEL} above its maximum price was done")
    except errors.SDKError as e:
        try:
            msg = json.loads(e.body)["detail"]["msg"]
        except (ValueError, KeyError, TypeError):
            msg = ""
        check(e.status_code == 503 and "within the maximum price" in msg,
              f"expected 503 naming the maximum price, got {e.status_code} {e.body}")
        jobs[e.raw_response.headers["x-request-id"]] = (None, 0)
    ok(f"a maximum price below every orchestrator: 503 \"{msg}\"")

    # 5. The ledger: one row per job, and the fee each orchestrator's price makes.
    def ledger_rows():
        out = subprocess.run(
            [a.tessera, "jobs", "--ledger", work / "ledger.sqlite", "--json", "--limit", "1000"],
            check=True, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        ).stdout
        return {r["request_id"]: r for r in json.loads(out)["jobs"]}

    def check_ledger(rows):
        check(set(rows) == set(jobs), f"ledger rows {sorted(rows)} are not the jobs {sorted(jobs)}")
        for rid, (name, n) in jobs.items():
            r = rows[rid]
            if name is None:
                check(r["status"] == "failed" and r["fee"] is None,
                      f"refused job {rid}: status {r['status']}, fee {r['fee']}")
                continue
            o = orchestrators[name]
            fee = width * height * n * o["ppp"]
            check(r["status"] == "ok" and r["orchestrator"] == o["url"] and r["outputs"] == n
                  and r["currency"] == "USD" and abs(r["fee"] - fee) <= 1e-12 * fee,
                  f"job {rid}: {r}, expected {n} images from {o['url']} for {fee} USD")

    rows = ledger_rows()
    check_ledger(rows)
    ok(f"ledger: {len(rows)} rows, one per job, fees = {width}x{height} px x images x price per pixel")

    # 6. A gateway restart keeps stored images and ledger rows.
    cluster.stop("gateway")
    start_gateway()
    check(download(first_url) == first_png, f"{first_url} changed across the restart")
    check(job(first_id) == rows[first_id], f"job {first_id} changed across the restart")
    check_ledger(ledger_rows())
    ok("after a gateway restart: old URL downloads the same image, ledger rows kept")

    # 7. 16 images: 16 distinct URLs, each the engine's image for seed + i.
    many_id, images = image_to_image(seed=100, n=16)
    urls = [m.url for m in images]
    check(len(urls) == 16 and len(set(urls)) == 16, f"16 images asked, URLs: {urls}")
    check([m.seed for m in images] == list(range(100, 116)), f"seeds {[m.seed for m in images]}")
    for i, (url, want) in enumerate(zip(urls, edit("many", 100, 16))):
        same_image(download(url), want, f"image {i} ({url})")
    done_by = job(many_id)["orchestrator"]
    jobs[many_id] = (next(n for n, o in orchestrators.items() if o["url"] == done_by), 16)
    check_ledger(ledger_rows())
    ok("16 images: 16 distinct URLs, each tessera edit --num-images 16's image for its seed; ledger fee for 16")

    # 8. A Live Runner registers itself with the cheap orchestrator.
    cheap = orchestrators["cheap"]["url"]
    live_port = free_port()
    cluster.start("live", ["runner", "--model-id", LIVE_MODEL, "--model-dir", hub,
                           "--host", "127.0.0.1", "--port", str(live_port),
                           "--register-with", cheap, "--orch-secret", SECRET,
                           "--price", "2e-6", "--price-unit", "pixel"])
    listed = wait_for(lambda: discovered(cheap, LIVE_MODEL), "the Live Runner in discovery")
    check(listed["mode"] == "single-shot" and listed["price_info"]["unit"] == "pixel",
          f"the Live Runner is listed as {listed}")
    time.sleep(1.5)  # a discovery refresh of the gateway
    live_id, images = image_to_image(seed=7, model=LIVE_MODEL)
    same_image(download(images[0].url), edit("live7", 7, 1)[0], images[0].url)
    check(job(live_id)["orchestrator"] == cheap, f"the Live Runner's job: {job(live_id)}")
    ok(f"a registered Live Runner is listed at {listed['url']} and serves {LIVE_MODEL} through the gateway")
    cluster.stop("cheap", signal.SIGKILL)
    cluster.start("cheap", orchestrators["cheap"]["args"])
    cluster.wait_healthy("cheap", cheap)
    wait_for(lambda: discovered(cheap, LIVE_MODEL), "the Live Runner back in discovery after the restart")
    time.sleep(1.5)
    _, images = image_to_image(seed=8, model=LIVE_MODEL)
    same_image(download(images[0].url), edit("live8", 8, 1)[0], images[0].url)
    ok("after its orchestrator restarted, the Live Runner registered again by itself and serves")

    # 9. Async jobs through gateway -> orchestrator -> the registered runner: progress, then
    # a cancel.
    with open(image_path, "rb") as f:
        content = f.read()
    files = {"image": (image_path.name, content)}
    fields = {"prompt": PROMPT, "model_id": LIVE_MODEL, "seed": 9, "num_inference_steps": STEPS,
              "safety_check": "true"}
    status, accepted = post_async(f"{gateway}/image-to-image", fields, files, auth)
    check(status == 202 and accepted["status"] == "queued", f"async job: {status} {accepted}")
    events = list(sse_events(urljoin(gateway + "/", accepted["urls"]["events"]), auth))
    names = [n for n, _ in events]
    # A late subscriber may start from the current state: the steps seen are the last ones.
    steps = [d["step"] for n, d in events if n == "progress"]
    check(names[-1] == "done", f"async job events end with {names[-1]}: {names}")
    check(steps == list(range(STEPS - len(steps) + 1, STEPS + 1)) and len(steps) >= 1,
          f"progress steps {steps} of {STEPS}")
    done = events[-1][1]
    same_image(download(done["images"][0]["url"]), edit("live9", 9, 1)[0], done["images"][0]["url"])
    doc = get_json(urljoin(gateway + "/", accepted["urls"]["get"]), auth)
    check(doc["status"] == "succeeded" and doc["images"] == done["images"]
          and doc["orchestrator"] == cheap, f"the async job's document: {doc}")
    ok(f"async job through the registered runner: {len(steps)} progress events, then done with tessera edit's image")

    status, accepted = post_async(f"{gateway}/image-to-image",
                                  {**fields, "num_inference_steps": SLOW_STEPS}, files, auth)
    check(status == 202, f"slow async job: {status} {accepted}")
    stream = sse_events(urljoin(gateway + "/", accepted["urls"]["events"]), auth)
    first = next(stream)
    check(first[0] == "progress", f"the slow job's first event is {first}")
    req = urllib.request.Request(urljoin(gateway + "/", accepted["urls"]["cancel"]), data=b"",
                                 method="POST", headers=auth)
    with urllib.request.urlopen(req, timeout=60) as res:
        cancelled = json.load(res)
    check(cancelled["status"] == "cancelled", f"the cancel answered {cancelled}")
    rest = [n for n, _ in stream]
    check(rest and rest[-1] == "cancelled", f"after the cancel the stream had {rest}")
    wait_for(lambda: (discovered(cheap, LIVE_MODEL) or {}).get("capacity_used") == 0,
             "the Live Runner's slot freed after the cancel")
    row = job(accepted["id"])
    check(row["status"] == "cancelled" and row["images"] == [], f"the cancelled job: {row}")
    ok(f"a {SLOW_STEPS}-step async job cancelled after its first progress event: cancelled, slot free")

    # 10. SIGTERM takes the Live Runner out of discovery.
    cluster.stop("live", signal.SIGTERM)
    check(discovered(cheap, LIVE_MODEL) is None, "the stopped Live Runner is still in discovery")
    ok("SIGTERM on the Live Runner: gone from discovery at once")


if __name__ == "__main__":
    sys.exit(main())
