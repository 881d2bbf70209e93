#!/usr/bin/env python3
"""Times diffusers / transformers on a diffusers model folder, with the protocol, shapes and
output of `tessera bench` (crates/cli/src/bench.rs), so the two can be compared on the very same
weights (`tessera random-model` writes such a folder; scripts/bench_compare.sh runs both).

Per component: load it (timed), one warm-up call, then --iters timed calls; median and minimum,
GFLOP/s from torch's own FLOP counter (convolutions, matrix and attention products, counted on
a copy of the model on the meta device, so nothing extra runs) and the peak resident memory
of loading and running it (Linux: /proc/self/status VmHWM, reset before each component).

Defaults as tessera's: UNet batch 3 (instruct-pix2pix guidance) on latents of the UNet's
sample_size, context 77 tokens; text encoders batch 2 x 77; VAE batch 1 at the UNet's
sample_size x the VAE scale factor (512 px for SD 1.5).

`--component pipeline` times a whole edit as `tessera bench --component pipeline` does: the
folder's pipeline (instruct-pix2pix, else image-to-image), --steps, no safety checker, one
--size square image. `--compile` runs the UNet through torch.compile (compile time is in the
warm-up call, not in the figures). On CUDA each result also has `peak_vram_mib` (torch's
peak reserved memory).

  scripts/bench_diffusers.py --model-dir DIR [--component unet|vae-encode|vae-decode|text|all|pipeline]
      [--batch N] [--size PX] [--iters N] [--device cpu] [--dtype f32] [--threads N] [--json]
      [--steps N] [--guidance-scale G] [--image-guidance-scale G] [--strength S] [--compile]
"""
import argparse
import json
import pathlib
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

CONTEXT_LEN = 77
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def reset_peak_rss():
    """Resets VmHWM to the current resident size; False where the kernel does not allow it."""
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes():
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def meta_flops(build, dtype, inputs, call):
    """FLOPs of `call(model, inputs(device))` for the model `build()` makes, on the meta device."""
    meta = torch.device("meta")
    with torch.device(meta):
        model = build().eval()
    if dtype != torch.float32:
        model = model.to(dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        call(model, inputs(meta))
    return counter.get_total_flops()


class Bench:
    def __init__(self, args):
        self.args = args
        self.dir = pathlib.Path(args.model_dir)
        self.batch = args.batch
        self.iters = args.iters
        self.device = torch.device(args.device)
        self.dtype = DTYPES[args.dtype]
        self.index = json.loads((self.dir / "model_index.json").read_text())
        self.unet_cfg = self.config("unet")
        self.vae_cfg = self.config("vae")
        scale = 2 ** (len(self.vae_cfg["block_out_channels"]) - 1) if self.vae_cfg else 8
        sample = (self.unet_cfg or {}).get("sample_size")
        self.size = args.size or (sample * scale if isinstance(sample, int) else 512)
        if self.size <= 0 or self.size % scale:
            sys.exit(f"--size {self.size} must be a positive multiple of the VAE scale factor {scale}")
        self.scale = scale

    def config(self, name):
        path = self.dir / name / "config.json"
        return json.loads(path.read_text()) if name in self.index and path.is_file() else None

    def randn(self, *shape):
        gen = torch.Generator("cpu").manual_seed(0)
        return torch.randn(*shape, generator=gen)

    def measure(self, component, input_shape, load, build_meta, inputs, call):
        """`inputs(device)` makes the call's arguments there (outside the timed interval) and
        `call(model, args)` runs the model on them."""
        own_peak = reset_peak_rss()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        model = load().to(self.device)
        if hasattr(model, "eval"):
            model = model.eval()
        if self.args.compile and hasattr(model, "forward") and component == "unet":
            model = torch.compile(model)
        load_s = time.perf_counter() - start
        flops = meta_flops(build_meta, self.dtype, inputs, call) if build_meta else 0
        args = inputs(self.device)
        times = []
        with torch.no_grad():
            call(model, args)
            synchronize(self.device)
            for _ in range(self.iters):
                start = time.perf_counter()
                call(model, args)
                synchronize(self.device)
                times.append((time.perf_counter() - start) * 1e3)
        median = statistics.median(times)
        peak = peak_rss_bytes() if own_peak else None
        return {
            "component": component,
            "input_shape": input_shape,
            "load_s": load_s,
            "median_ms": median,
            "min_ms": min(times),
            "times_ms": times,
            "gflop": flops / 1e9,
            "gflop_per_s": flops / median / 1e6,
            "peak_rss_mib": peak / 2**20 if peak is not None else None,
            "peak_vram_mib": (torch.cuda.max_memory_reserved(self.device) / 2**20
                              if self.device.type == "cuda" else None),
        }

    def text(self, name):
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        cls = {"CLIPTextModel": CLIPTextModel,
               "CLIPTextModelWithProjection": CLIPTextModelWithProjection}[self.index[name][1]]
        cfg = CLIPTextConfig.from_pretrained(self.dir / name)
        batch, seq, vocab = self.batch or 2, cfg.max_position_embeddings, cfg.vocab_size
        # As tessera: start token, a few words, end token, padded with the end token.
        row = [vocab - 2] + [300 + i for i in range(1, min(9, seq - 1))]
        row += [vocab - 1] * (seq - len(row))
        ids_cpu = torch.tensor([row] * batch)
        label = "text" if name == "text_encoder" else name.replace("text_encoder_", "text-")
        return self.measure(
            label, [batch, seq],
            lambda: cls.from_pretrained(self.dir / name, dtype=self.dtype),
            lambda: cls(cfg),
            lambda dev: ids_cpu.to(dev),
            lambda m, ids: m(ids, output_hidden_states=True))

    def vae(self, component):
        from diffusers import AutoencoderKL

        batch = self.batch or 1
        if component == "vae-encode":
            shape = [batch, self.vae_cfg["in_channels"], self.size, self.size]
        else:
            latent = self.size // self.scale
            shape = [batch, self.vae_cfg["latent_channels"], latent, latent]
        x = self.randn(*shape)
        call = (lambda m, x: m.encode(x)) if component == "vae-encode" else (lambda m, z: m.decode(z))
        return self.measure(
            component, shape,
            lambda: AutoencoderKL.from_pretrained(self.dir, subfolder="vae", dtype=self.dtype),
            lambda: AutoencoderKL.from_config(self.vae_cfg),
            lambda dev: x.to(dev, self.dtype),
            call)

    def unet(self):
        from diffusers import UNet2DConditionModel

        cfg = self.unet_cfg
        batch, latent = self.batch or 3, self.size // self.scale
        shape = [batch, cfg["in_channels"], latent, latent]
        sample = self.randn(*shape)
        context = self.randn(batch, CONTEXT_LEN, cfg["cross_attention_dim"])
        added = {}
        if cfg.get("addition_embed_type") == "text_time":
            pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
            s = float(self.size)
            added = {"text_embeds": self.randn(batch, pooled),
                     "time_ids": torch.tensor([[s, s, 0.0, 0.0, s, s]] * batch)}

        def inputs(dev):
            move = lambda t: t.to(dev, self.dtype)
            kwargs = {k: move(v) for k, v in added.items()} or None
            return move(sample), torch.tensor(500.0, device=dev), move(context), kwargs

        return self.measure(
            "unet", shape,
            lambda: UNet2DConditionModel.from_pretrained(self.dir, subfolder="unet", dtype=self.dtype),
            lambda: UNet2DConditionModel.from_config(cfg),
            inputs,
            lambda m, a: m(a[0], a[1], a[2], added_cond_kwargs=a[3]))


    def pipeline(self):
        """A whole edit, as `tessera bench --component pipeline`: the same gradient image,
        prompt, steps and guidance; no safety checker."""
        from diffusers import AutoPipelineForImage2Image, StableDiffusionInstructPix2PixPipeline
        from PIL import Image

        a = self.args
        pix2pix = "InstructPix2Pix" in self.index["_class_name"]
        side = self.size
        pixels = bytes(v for i in range(side * side)
                       for v in ((i % side) * 255 // side, (i // side) * 255 // side, 128))
        image = Image.frombytes("RGB", (side, side), pixels)
        batch = self.batch or 1
        kwargs = dict(prompt="turn it into a watercolour painting", image=image,
                      num_inference_steps=a.steps, guidance_scale=a.guidance_scale,
                      num_images_per_prompt=batch)
        if pix2pix:
            kwargs["image_guidance_scale"] = a.image_guidance_scale
        else:
            kwargs["strength"] = a.strength

        def load():
            extra = dict(safety_checker=None, requires_safety_checker=False) if "safety_checker" in self.index else {}
            cls = StableDiffusionInstructPix2PixPipeline if pix2pix else AutoPipelineForImage2Image
            pipe = cls.from_pretrained(self.dir, torch_dtype=self.dtype, **extra)
            pipe.set_progress_bar_config(disable=True)
            if a.compile:
                pipe.unet = torch.compile(pipe.unet)
            return pipe

        def call(pipe, _):
            pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(0))

        return self.measure("pipeline", [batch, 3, side, side], load, None, lambda dev: None, call)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--component", default="all",
                   choices=["unet", "vae-encode", "vae-decode", "text", "all", "pipeline"])
    p.add_argument("--batch", type=int)
    p.add_argument("--size", type=int)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="f32", choices=sorted(DTYPES))
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--json", action="store_true")
    # As tessera bench's pipeline flags (ai-runner's defaults).
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--image-guidance-scale", type=float, default=1.5)
    p.add_argument("--strength", type=float, default=0.8)
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    args = p.parse_args()
    if args.iters < 1:
        sys.exit("--iters must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = Bench(args)
    wants = lambda c: args.component in ("all", c)
    if not args.json:
        print(f"diffusers bench: {args.model_dir}, {args.device} {args.dtype}, {torch.get_num_threads()} threads, "
              f"{bench.size} px, {args.iters} timed calls after 1 warm-up")
    results = []

    def report(r):
        if not args.json:
            rss = r["peak_rss_mib"]
            rss = "?" if rss is None else (f"{rss / 1024:.2f} GiB" if rss >= 1024 else f"{rss:.0f} MiB")
            print(f"{r['component']:<11} {str(r['input_shape']):<18} median {r['median_ms']:>9.1f} ms  "
                  f"min {r['min_ms']:>9.1f} ms  {r['gflop']:>9.1f} GFLOP  {r['gflop_per_s']:>7.1f} GFLOP/s  "
                  f"peak RSS {rss}  (load {r['load_s']:.1f} s)", flush=True)
        results.append(r)

    # Pipeline order, as tessera: prompts, image latents, denoising, decoding.
    if wants("text"):
        for name, value in sorted(bench.index.items()):
            if isinstance(value, list) and value[1] in ("CLIPTextModel", "CLIPTextModelWithProjection"):
                report(bench.text(name))
    if bench.vae_cfg and wants("vae-encode"):
        report(bench.vae("vae-encode"))
    if bench.unet_cfg and wants("unet"):
        report(bench.unet())
    if bench.vae_cfg and wants("vae-decode"):
        report(bench.vae("vae-decode"))
    if args.component == "pipeline":
        report(bench.pipeline())
    if not results:
        sys.exit(f"{args.model_dir} has no component to bench for --component {args.component}")
    if args.json:
        print(json.dumps({
            "tool": "diffusers", "model": args.model_dir, "device": args.device, "dtype": args.dtype,
            "threads": torch.get_num_threads(), "size": bench.size, "iters": args.iters, "results": results,
        }))


if __name__ == "__main__":
    main()
