"""Drives a running `tessera runner` with Livepeer's official Python SDK (`livepeer-ai`).

Checks that what a Livepeer client gets through the SDK is what the engine makes:
  1. an image-to-image request with a seed and two images per prompt returns, for image i,
     seed + i, the NSFW verdict, and pixels equal to what `tessera edit` writes for the same
     model, parameters and seed;
  2. a wrong bearer token is the SDK's 401 error (`HTTPError`, ai-runner's message);
  3. a step count past the runner's limit is the SDK's 4xx error (`HTTPError`, a 400 naming the field).

Run by scripts/sdk_check.sh, which starts the runner and passes its address. Exits non-zero,
saying what differed, on any mismatch.
"""

import argparse
import base64
import io
import json
import os
import subprocess
import sys
import tempfile

import httpx
from livepeer_ai import Livepeer
from livepeer_ai.models import errors
from PIL import Image

# Small enough to run in seconds on two CPU cores with the tiny fixture model.
PROMPT = "turn the cat into a tiger"
SEED = 1234
STEPS = 3
IMAGES = 2
GUIDANCE = 7.5
IMAGE_GUIDANCE = 1.5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--server-url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--tessera", required=True, help="the tessera binary")
    ap.add_argument("--model", required=True, help="the model folder the runner serves")
    ap.add_argument("--safety-checker", required=True)
    ap.add_argument("--image", required=True, help="input image")
    ap.add_argument("--max-inference-steps", type=int, required=True,
                    help="the runner's --max-inference-steps")
    a = ap.parse_args()

    failures: list[str] = []
    # The SDK's errors do not carry the HTTP status; a response hook on its client records it.
    statuses: list[int] = []
    hooks = {"response": [lambda r: statuses.append(r.status_code)]}

    def client(token: str) -> Livepeer:
        return Livepeer(
            http_bearer=token,
            server_url=a.server_url,
            client=httpx.Client(event_hooks=hooks, timeout=300),
        )

    sdk = client(a.token)
    with open(a.image, "rb") as f:
        image_bytes = f.read()
    image = {"file_name": os.path.basename(a.image), "content": image_bytes}

    res = sdk.generate.image_to_image(
        request={
            "prompt": PROMPT,
            "image": image,
            "model_id": a.model,
            "guidance_scale": GUIDANCE,
            "image_guidance_scale": IMAGE_GUIDANCE,
            "safety_check": True,
            "seed": SEED,
            "num_inference_steps": STEPS,
            "num_images_per_prompt": IMAGES,
        }
    )
    got = res.image_response.images if res.image_response else []
    if len(got) != IMAGES:
        failures.append(f"SDK returned {len(got)} images, expected {IMAGES}")
    expected = engine_images(a)
    for i, (media, (want_seed, want_nsfw, want_pixels)) in enumerate(zip(got, expected)):
        if media.seed != SEED + i or want_seed != SEED + i:
            failures.append(
                f"image {i}: seed {media.seed} (`tessera edit`: {want_seed}), expected {SEED + i}"
            )
        if media.nsfw != want_nsfw:
            failures.append(f"image {i}: nsfw {media.nsfw}, `tessera edit` says {want_nsfw}")
        pixels = decode_data_url(media.url)
        if pixels.size != want_pixels.size:
            failures.append(f"image {i}: size {pixels.size}, expected {want_pixels.size}")
        elif pixels.tobytes() != want_pixels.tobytes():
            differing = sum(
                1 for p, q in zip(pixels.getdata(), want_pixels.getdata()) if p != q
            )
            failures.append(f"image {i}: {differing} pixels differ from `tessera edit`'s")
        else:
            print(f"image {i}: seed {media.seed}, nsfw {media.nsfw}, {pixels.size[0]}x"
                  f"{pixels.size[1]} pixels equal to `tessera edit`'s")

    # A wrong token: ai-runner's 401, which the SDK raises as HTTPError.
    bad = client("not-the-token")
    failures += expect_error(
        "wrong token",
        lambda: bad.generate.image_to_image(request={"prompt": PROMPT, "image": image}),
        statuses,
        errors.HTTPError,
        401,
        "Invalid bearer token",
    )
    # A field past the runner's limit: tessera's 400 naming it, the SDK's HTTPError.
    too_many = a.max_inference_steps + 1
    failures += expect_error(
        f"num_inference_steps={too_many}",
        lambda: sdk.generate.image_to_image(
            request={"prompt": PROMPT, "image": image, "num_inference_steps": too_many}
        ),
        statuses,
        errors.HTTPError,
        400,
        f"num_inference_steps must be between 1 and {a.max_inference_steps}",
    )
    # An upload that is not an image: a 400 too.
    failures += expect_error(
        "image that is not an image",
        lambda: sdk.generate.image_to_image(
            request={
                "prompt": PROMPT,
                "image": {"file_name": "x.png", "content": b"not an image"},
                "num_inference_steps": 1,
            }
        ),
        statuses,
        errors.HTTPError,
        400,
        "",
    )

    for f in failures:
        print("FAIL:", f, file=sys.stderr)
    if not failures:
        print("SDK check passed")
    return 1 if failures else 0


def engine_images(a) -> list[tuple[int, bool, Image.Image]]:
    """What `tessera edit` makes for the same request: (seed, nsfw, pixels) per image, from
    the JSON it prints and the PNGs it writes."""
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run(
            [
                a.tessera, "edit",
                "--model", a.model,
                "--image", a.image,
                "--prompt", PROMPT,
                "--steps", str(STEPS),
                "--guidance-scale", str(GUIDANCE),
                "--image-guidance-scale", str(IMAGE_GUIDANCE),
                "--seed", str(SEED),
                "--num-images", str(IMAGES),
                "--safety-checker", a.safety_checker,
                "--output", os.path.join(tmp, "out.png"),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            raise SystemExit(f"`tessera edit` failed:\n{run.stderr}")
        images = []
        for entry in json.loads(run.stdout)["images"]:
            with Image.open(entry["path"]) as im:
                images.append((entry["seed"], entry["nsfw"], im.convert("RGB")))
        return images


def decode_data_url(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    if not url.startswith(prefix):
        raise SystemExit(f"image url is not a PNG data URL: {url[:40]}...")
    with Image.open(io.BytesIO(base64.b64decode(url[len(prefix):]))) as im:
        return im.convert("RGB")


def expect_error(what, call, statuses, error_type, status, message_part) -> list[str]:
    """Runs `call`, which must raise `error_type` after an HTTP `status` answer whose message
    contains `message_part`. `statuses` is the list the SDK's HTTP client appends to."""
    statuses.clear()
    try:
        call()
    except error_type as e:
        msg = e.data.detail.msg
        got = statuses[-1] if statuses else None
        print(f"{what}: HTTP {got}, SDK {error_type.__name__} {msg!r}")
        if got != status:
            return [f"{what}: HTTP status {got}, expected {status}"]
        if message_part not in msg:
            return [f"{what}: message {msg!r} does not mention {message_part!r}"]
        return []
    except Exception as e:  # noqa: BLE001 - any other outcome is the failure to report
        return [f"{what}: expected {error_type.__name__} ({status}), got {type(e).__name__}: {e}"]
    return [f"{what}: expected {error_type.__name__} ({status}), the call succeeded"]


if __name__ == "__main__":
    sys.exit(main())
