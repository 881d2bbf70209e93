"""Drives a running `tessera serve` with OpenAI's official Python SDK (`openai`).

Checks that what an OpenAI client gets is what the engine makes:
  1. `client.models.list()` lists the served model, in OpenAI's shape;
  2. `client.images.edit(..., n=2, response_format="b64_json", extra_body={"seed": 42})`
     returns two images whose pixels equal `tessera edit`'s for seeds 42 and 43 (same model
     and settings);
  3. the same edit with `response_format="url"` returns URLs whose bytes decode to the same
     pixels, and the image sent as a list (`image=[...]`, the SDK's `image[]`) works too;
  4. a wrong API key is the SDK's `AuthenticationError`;
  5. `mask=` is the SDK's `BadRequestError`, its message and `param` naming mask.

Run by scripts/openai_check.sh, which starts the server and passes its address. Exits
non-zero, saying what differed, on any mismatch.
"""

import argparse
import base64
import io
import json
import subprocess
import sys
import tempfile
import urllib.request

import openai
from PIL import Image

# Small enough to run in seconds on two CPU cores with the tiny fixture model.
PROMPT = "turn the cat into a tiger"
SEED = 42
STEPS = 3
IMAGES = 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--base-url", required=True, help="the server's /v1 URL")
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--tessera", required=True, help="the tessera binary")
    ap.add_argument("--model", required=True, help="the model folder the server serves")
    ap.add_argument("--safety-checker", required=True)
    ap.add_argument("--image", required=True, help="input image")
    a = ap.parse_args()

    failures: list[str] = []
    # No retries: a failure should show at once, not after the SDK's backoff.
    client = openai.OpenAI(api_key=a.api_key, base_url=a.base_url, max_retries=0, timeout=300)
    extra = {"seed": SEED, "num_inference_steps": STEPS}

    models = client.models.list()
    ids = [m.id for m in models.data]
    if ids != [a.model]:
        failures.append(f"models.list() gave {ids}, expected [{a.model!r}]")
    else:
        m = models.data[0]
        print(f"models.list(): {m.id} (object {m.object}, owned_by {m.owned_by})")
        if m.object != "model" or not isinstance(m.created, int):
            failures.append(f"model entry not in OpenAI's shape: {m}")

    expected = engine_images(a)

    with open(a.image, "rb") as f:
        res = client.images.edit(
            model=a.model, image=f, prompt=PROMPT, n=IMAGES, response_format="b64_json",
            extra_body=extra,
        )
    got = [decode(base64.b64decode(d.b64_json)) for d in res.data or []]
    failures += compare("b64_json", got, expected)
    # tessera's own per-image fields, kept by the SDK's models as extra attributes.
    seeds = [getattr(d, "seed", None) for d in res.data or []]
    if seeds != [SEED + i for i in range(IMAGES)]:
        failures.append(f"seeds {seeds}, expected {[SEED + i for i in range(IMAGES)]}")
    if res.output_format != "png":
        failures.append(f"output_format {res.output_format!r}, expected 'png'")
    want_size = "{}x{}".format(*expected[0].size)
    if res.size != want_size:
        failures.append(f"size {res.size!r}, expected {want_size!r}")

    with open(a.image, "rb") as f:
        res = client.images.edit(
            model=a.model, image=f, prompt=PROMPT, n=IMAGES, response_format="url",
            extra_body=extra,
        )
    urls = [d.url for d in res.data or []]
    got = []
    for url in urls:
        with urllib.request.urlopen(url, timeout=60) as r:
            got.append(decode(r.read()))
    failures += compare("url", got, expected)

    with open(a.image, "rb") as f:
        res = client.images.edit(
            model=a.model, image=[f], prompt=PROMPT, extra_body=extra,
        )
    got = [decode(base64.b64decode(d.b64_json)) for d in res.data or []]
    failures += compare("image=[file]", got, expected[:1])

    bad = openai.OpenAI(api_key="not-the-key", base_url=a.base_url, max_retries=0)
    try:
        with open(a.image, "rb") as f:
            bad.images.edit(image=f, prompt=PROMPT, extra_body=extra)
        failures.append("a wrong API key was accepted")
    except openai.AuthenticationError as e:
        print(f"wrong key: HTTP {e.status_code}, AuthenticationError {e.message!r}")
        if e.code != "invalid_api_key":
            failures.append(f"wrong key: code {e.code!r}, expected 'invalid_api_key'")

    try:
        with open(a.image, "rb") as f, open(a.image, "rb") as mask:
            client.images.edit(image=f, mask=mask, prompt=PROMPT, extra_body=extra)
        failures.append("mask= was accepted")
    except openai.BadRequestError as e:
        print(f"mask=: HTTP {e.status_code}, BadRequestError {e.message!r}, param {e.param!r}")
        if "mask" not in e.message or e.param != "mask":
            failures.append(f"mask=: the error does not name mask: {e.message!r}, {e.param!r}")

    for f in failures:
        print("FAIL:", f, file=sys.stderr)
    if not failures:
        print("OpenAI SDK check passed")
    return 1 if failures else 0


def engine_images(a) -> list[Image.Image]:
    """What `tessera edit` makes for the same request, seeds SEED and SEED + 1."""
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run(
            [
                a.tessera, "edit",
                "--model", a.model,
                "--image", a.image,
                "--prompt", PROMPT,
                "--steps", str(STEPS),
                "--seed", str(SEED),
                "--num-images", str(IMAGES),
                "--safety-checker", a.safety_checker,
                "--output", f"{tmp}/out.png",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            raise SystemExit(f"`tessera edit` failed:\n{run.stderr}")
        images = []
        for i, entry in enumerate(json.loads(run.stdout)["images"]):
            if entry["seed"] != SEED + i:
                raise SystemExit(f"`tessera edit` image {i} has seed {entry['seed']}")
            with Image.open(entry["path"]) as im:
                images.append(im.convert("RGB"))
        return images


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def compare(what: str, got: list[Image.Image], expected: list[Image.Image]) -> list[str]:
    if len(got) != len(expected):
        return [f"{what}: {len(got)} images, expected {len(expected)}"]
    failures = []
    for i, (pixels, want) in enumerate(zip(got, expected)):
        if pixels.size != want.size:
            failures.append(f"{what}: image {i} is {pixels.size}, expected {want.size}")
        elif pixels.tobytes() != want.tobytes():
            differing = sum(1 for p, q in zip(pixels.getdata(), want.getdata()) if p != q)
            failures.append(f"{what}: image {i}: {differing} pixels differ from `tessera edit`'s")
        else:
            print(f"{what}: image {i} (seed {SEED + i}), {pixels.size[0]}x{pixels.size[1]} "
                  "pixels equal to `tessera edit`'s")
    return failures


if __name__ == "__main__":
    sys.exit(main())
