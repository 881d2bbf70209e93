"""schemathesis hooks for scripts/sdk_check.sh (loaded through SCHEMATHESIS_HOOKS).

A fuzzer cannot invent a decodable image, so left alone every generated image-to-image form
stops at the runner's "not an image" 400 and the diffusion pipeline is never reached. For
half of the form bodies this swaps the generated `image` for a real PNG (SDK_CHECK_IMAGE),
so that the fuzzed numbers, strings and flags go all the way through inference and the
safety checker. Those bodies also get a few denoising steps when they name none, since the
form's default (100) is past the limit the check starts the runner with. A JSON body (the
document lists the request as JSON too, `image` as text) gets the PNG as a data URL.
"""

import base64
import os

import schemathesis
from hypothesis import strategies as st

with open(os.environ["SDK_CHECK_IMAGE"], "rb") as f:
    _PNG = f.read()


@schemathesis.hook
def flatmap_body(context, body):
    if not isinstance(body, dict) or "image" not in body:
        return st.just(body)
    # A multipart body's image is generated as bytes, a JSON body's as text.
    if isinstance(body["image"], (bytes, bytearray)):
        image = _PNG
    else:
        image = "data:image/png;base64," + base64.b64encode(_PNG).decode()
    with_image = {"num_inference_steps": 2, **body, "image": image}
    return st.sampled_from([body, with_image])
