"""The playground in a real browser: headless Chromium (Debian's) driven by Playwright.

Run by scripts/playground_check.sh, which builds tessera, installs Chromium and the pinned
venv. Starts `tessera serve` on the tiny instruct-pix2pix fixture (linked into a hub-cache
folder as `timbrooks/instruct-pix2pix`, the default model) with an API key, then, printing a
line per check and stopping at the first failure:

1. the page loads with its Content-Security-Policy, without console errors, shows the API
   key field (keys are configured) and the default model; every control has a label;
2. a picked fixture image shows its pixel size; bad LoRA JSON is refused on the page;
3. a submit without the key shows the gateway's 401 and asks for a key;
4. with the key, a 2-image job with a seed moves the progress bar (an intermediate value is
   seen), ends with results listing seeds 42 and 43 and their NSFW flags; each downloaded
   file (a browser download) has the pixels of the API's own answer for those fields;
   "Use as input" puts a result in the image field;
5. screenshots at desktop and phone width, the phone one without horizontal scrolling;
6. a job that fails at the runner (submitted with Ctrl+Enter) shows the API's message for it,
   as GET /jobs/<id> words it;
7. Cancel on a long job: the page says cancelled, and so does GET /jobs/<id>.
"""

import argparse
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

from check_common import CheckFailed, check, free_port, link_hub_repo, ok

MODEL = "timbrooks/instruct-pix2pix"
API_KEY = "playground-key"
PROMPT = "turn it into a watercolour"
STEPS = 12
SEED = 42
IMAGES = 2
# Far more steps than the fixture runs before the cancel arrives (seconds of work; the
# cancel stops it within one step). Schedulers take at most 1000, their training steps.
LONG_STEPS = 1000
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Seconds a job of the fixture may take in a debug build on a busy machine.
JOB_TIMEOUT = 180


def request(url, data=None, headers=None, method=None):
    """(status, body bytes) of one HTTP exchange, error statuses included."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=JOB_TIMEOUT) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def multipart(fields, image_name, image):
    boundary = "tessera-playground-check"
    body = io.BytesIO()
    for name, value in fields.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    body.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{image_name}"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n"
    )
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def pixels(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def same_pixels(got, want, what):
    a, b = pixels(got), pixels(want)
    check(a.shape == b.shape, f"{what}: {a.shape[1]}x{a.shape[0]}, the API's is {b.shape[1]}x{b.shape[0]}")
    diff = np.abs(a.astype(int) - b.astype(int))
    check(diff.max() == 0, f"{what}: {(diff > 0).any(axis=2).sum()} pixels differ from the API's, by up to {diff.max()}")


class Server:
    def __init__(self, tessera, work):
        self.tessera, self.work = tessera, work
        self.proc = None
        self.log = work / "serve.log"

    def start(self, args):
        env = {k: v for k, v in os.environ.items() if k not in ("PORT", "MODEL_DIR", "TESSERA_API_KEYS")}
        env["RUST_LOG"] = env.get("RUST_LOG", "info")
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([self.tessera, *args], stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        with open(self.work / "pids", "a") as f:
            f.write(f"{self.proc.pid}\n")

    def tail(self, lines=30):
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_healthy(self, base, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            check(self.proc.poll() is None, f"tessera serve exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                status, body = request(base + "/health")
                if status == 200 and json.loads(body) == {"status": "OK"}:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise CheckFailed(f"tessera serve not healthy at {base} after {timeout} s:\n{self.tail()}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tessera", required=True)
    p.add_argument("--chromium", required=True)
    p.add_argument("--fixtures", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--screenshots", type=Path, required=True)
    a = p.parse_args()
    server = Server(a.tessera, a.work)
    try:
        run(a, server)
    except (CheckFailed, PlaywrightError, OSError) as e:
        print(f"FAIL  {type(e).__name__}: {e}", flush=True)
        print(f"--- last lines of serve.log\n{server.tail()}", flush=True)
        return 1
    finally:
        server.stop()
    print("all playground checks passed", flush=True)
    return 0


def run(a, server):
    fixtures, work = a.fixtures, a.work
    hub = work / "hub"
    link_hub_repo(hub, MODEL, fixtures / "models" / "tiny-instruct-pix2pix")
    image_path = fixtures / "inputs" / "square.png"
    width, height = Image.open(image_path).size
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server.start([
        "serve", "--host", "127.0.0.1", "--port", str(port),
        "--model-id", MODEL, "--model-dir", str(hub), "--data-dir", str(work / "data"),
        "--safety-checker", str(fixtures / "models" / "tiny-safety-checker"),
        "--api-key", API_KEY, "--max-inference-steps", str(LONG_STEPS),
    ])
    server.wait_healthy(base)
    auth = {"Authorization": f"Bearer {API_KEY}"}

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=a.chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page = context.new_page()
        problems = []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

        # Chromium logs every HTTP error status a fetch() gets (the 401 this check provokes,
        # a 404 for /v1/models on a gateway without the OpenAI routes) as a console error;
        # the page handles those. Anything else (a CSP refusal, an exception) is a fault.
        def real_problems():
            return [p for p in problems if "Failed to load resource: the server responded" not in p]

        # 1. The page.
        response = page.goto(base + "/")
        check(response.status == 200, f"GET / answered {response.status}")
        csp = response.headers.get("content-security-policy", "")
        check("script-src 'self'" in csp and "default-src 'none'" in csp, f"GET / has no strict CSP: {csp!r}")
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        check(page.is_visible("#api-key-field"), "the API key field is hidden although the server wants a key")
        model = page.evaluate(
            "() => { const s = document.getElementById('model-select');"
            " return s.hidden ? document.getElementById('model-text').value : s.value; }"
        )
        check(model == MODEL, f"the model field says {model!r}, not the default {MODEL!r}")
        check(not real_problems(), f"the page logged errors: {real_problems()}")
        unlabelled = page.evaluate(
            """() => [...document.querySelectorAll('input, select, textarea')]
                .filter(e => !e.labels.length && !e.getAttribute('aria-labelledby'))
                .map(e => e.id)"""
        )
        check(not unlabelled, f"controls without a label: {unlabelled}")
        ok(f"the page loads under its CSP, asks for a key, offers {MODEL}; every control has a label")

        # 2. The image and LoRA fields.
        page.set_input_files("#image-file", str(image_path))
        page.wait_for_function(
            "s => document.getElementById('image-info').textContent.includes(s)",
            arg=f"{width} × {height} pixels",
        )
        page.fill("#prompt", PROMPT)
        page.fill("#loras", '{"some/lora": ')
        check(page.is_visible("#loras-error"), "bad LoRA JSON shows no message")
        page.click("#submit")
        error = page.text_content("#error")
        check("not valid JSON" in error, f"submitting bad LoRA JSON says {error!r}")
        check(not page.get_attribute("#output", "data-job-id"), "bad LoRA JSON was submitted")
        page.fill("#loras", "")
        check(page.is_hidden("#loras-error"), "the LoRA message stays after the field is emptied")
        ok(f"the picked image shows {width} × {height} pixels; bad LoRA JSON is refused on the page")

        # 3. No key: the gateway's 401, and what to do.
        page.fill("#steps", str(STEPS))
        page.fill("#num-images", str(IMAGES))
        page.uncheck("#seed-random")
        page.fill("#seed", str(SEED))
        page.click("#submit")
        page.wait_for_function("() => !document.getElementById('error').hidden && !document.getElementById('submit').disabled")
        error = page.text_content("#error")
        check("Invalid bearer token." in error and "API key" in error, f"a submit without the key says {error!r}")
        ok(f"without the key the page shows the 401: {error!r}")

        # 4. A job, its progress, its results and downloads.
        page.fill("#api-key", API_KEY)
        page.evaluate(
            """() => {
              // Every value the bar's `value` attribute held, however fast they came.
              window.progressSeen = [];
              const bar = document.getElementById('progress');
              new MutationObserver((records) => {
                for (const r of records) window.progressSeen.push(Number(r.oldValue));
                window.progressSeen.push(Number(bar.getAttribute('value')));
              }).observe(bar, {attributes: true, attributeFilter: ['value'], attributeOldValue: true});
            }"""
        )
        page.click("#submit")
        page.wait_for_selector("#output[data-job-status=succeeded]", timeout=JOB_TIMEOUT * 1000)
        seen = page.evaluate("() => window.progressSeen")
        job_id = page.get_attribute("#output", "data-job-id")
        status, doc = request(f"{base}/jobs/{job_id}", headers=auth)
        doc = json.loads(doc)
        check(status == 200 and doc["status"] == "succeeded", f"GET /jobs/{job_id}: {status} {doc}")
        # The steps each image takes, as the runner counts them (after `strength`).
        total = doc["progress"]["steps"] * IMAGES
        bar = page.evaluate("() => [document.getElementById('progress').value, document.getElementById('progress').max]")
        check(bar == [total, total], f"at the end the bar is at {bar[0]} of {bar[1]}, not {total} of {total}")
        middle = sorted({v for v in seen if 0 < v < total})
        check(middle, f"no intermediate progress value seen: {seen}")
        status = page.text_content("#status")
        check(status.startswith("Done: 2 images"), f"the status says {status!r}")
        check(page.is_hidden("#error"), f"an error is shown: {page.text_content('#error')!r}")
        cards = page.query_selector_all("#results li.result")
        seeds = [int(c.get_attribute("data-seed")) for c in cards]
        check(seeds == [SEED, SEED + 1], f"the results list seeds {seeds}")
        for c in cards:
            facts = c.query_selector(".facts").text_content()
            check("NSFW:" in facts and str(c.get_attribute("data-seed")) in facts, f"a result says {facts!r}")
        ok(f"job {job_id}: the bar went through {len(middle)} intermediate values of {total}, "
           f"then 2 results with seeds {seeds}")

        downloads = []
        for i, c in enumerate(cards):
            with page.expect_download() as info:
                c.query_selector("a.download").click()
            path = work / f"download-{i}.png"
            info.value.save_as(path)
            downloads.append((info.value.suggested_filename, path.read_bytes()))

        # The API's own answer for the same fields (synchronous this time).
        fields = {
            "prompt": PROMPT, "model_id": MODEL, "num_inference_steps": STEPS,
            "num_images_per_prompt": IMAGES, "guidance_scale": "7.5", "image_guidance_scale": "1.5",
            "strength": "0.8", "seed": SEED, "safety_check": "true", "output_format": "png",
        }
        body, content_type = multipart(fields, image_path.name, image_path.read_bytes())
        status, answer = request(base + "/image-to-image", body, {**auth, "Content-Type": content_type}, "POST")
        check(status == 200, f"the API answered {status}: {answer[:300]!r}")
        answer = json.loads(answer)["images"]
        check([m["seed"] for m in answer] == seeds, f"the API's seeds are {[m['seed'] for m in answer]}")
        for (name, got), media, card in zip(downloads, answer, cards):
            status, want = request(base + media["url"] if media["url"].startswith("/") else media["url"])
            check(status == 200, f"GET {media['url']} answered {status}")
            same_pixels(got, want, f"download {name}")
            check(card.get_attribute("data-nsfw") == str(media["nsfw"]).lower(),
                  f"{name}: the page says nsfw={card.get_attribute('data-nsfw')}, the API {media['nsfw']}")
        ok(f"downloads {[n for n, _ in downloads]} have the API's pixels for seeds {seeds}")

        cards[1].query_selector("button.reuse").click()
        page.wait_for_function(
            "s => document.getElementById('image-info').textContent.startsWith(s)",
            arg=f"result-{SEED + 1}.png: {width} × {height} pixels",
        )
        ok("“Use as input” puts the result in the image field")

        # 5. Screenshots.
        a.screenshots.mkdir(parents=True, exist_ok=True)
        desktop = a.screenshots / "playground.png"
        page.screenshot(path=str(desktop), full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        check(overflow <= 0, f"at 390 px wide the page scrolls sideways by {overflow} px")
        phone = a.screenshots / "playground-phone.png"
        page.screenshot(path=str(phone), full_page=True)
        page.set_viewport_size({"width": 1280, "height": 900})
        ok(f"screenshots {desktop} and {phone}; no sideways scrolling at phone width")

        # 6. A job the runner refuses: the page shows the API's words.
        page.set_input_files("#image-file", str(image_path))
        page.fill("#loras", '{"nobody/no-such-lora": 1.0}')
        # From the keyboard this time: Ctrl+Enter submits from any field.
        page.press("#loras", "Control+Enter")
        page.wait_for_selector("#output[data-job-status=failed]", timeout=JOB_TIMEOUT * 1000)
        failed_id = page.get_attribute("#output", "data-job-id")
        status, doc = request(f"{base}/jobs/{failed_id}", headers=auth)
        doc = json.loads(doc)
        check(doc["status"] == "failed", f"GET /jobs/{failed_id}: {doc['status']}")
        error = page.text_content("#error")
        check(error == doc["error"]["msg"], f"the page says {error!r}, the API {doc['error']['msg']!r}")
        page.fill("#loras", "")
        ok(f"a failed job shows the API's message: {error!r}")

        # 7. Cancel.
        page.fill("#steps", str(LONG_STEPS))
        page.fill("#num-images", "1")
        page.click("#submit")
        page.wait_for_function(
            "() => document.getElementById('progress').value >= 1"
            " || document.getElementById('output').dataset.jobStatus === 'failed'",
            timeout=JOB_TIMEOUT * 1000,
        )
        check(page.is_hidden("#error"), f"the long job failed: {page.text_content('#error')!r}")
        page.click("#cancel")
        page.wait_for_selector("#output[data-job-status=cancelled]", timeout=60_000)
        cancelled_id = page.get_attribute("#output", "data-job-id")
        status_text = page.text_content("#status")
        check(status_text.startswith("Cancelled"), f"after Cancel the status says {status_text!r}")
        status, doc = request(f"{base}/jobs/{cancelled_id}", headers=auth)
        doc = json.loads(doc)
        check(status == 200 and doc["status"] == "cancelled", f"GET /jobs/{cancelled_id}: {status} {doc}")
        step = doc["progress"]["step"] if doc.get("progress") else 0
        check(step < LONG_STEPS, f"the cancelled job ran all {step} steps")
        ok(f"Cancel: the page says {status_text!r}; GET /jobs/{cancelled_id} says cancelled after step {step}")

        check(not real_problems(), f"the page logged errors: {real_problems()}")
        browser.close()


if __name__ == "__main__":
    sys.exit(main())
