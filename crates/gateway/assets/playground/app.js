// The tessera playground: a form over the gateway's public API, in plain JS (no framework,
// no build step; the gateway embeds this file as it is). A submit is an async job:
//   POST /image-to-image (multipart, Prefer: respond-async)  -> 202 {id, urls}
//   GET  /jobs/<id>/events  (Server-Sent Events: progress, preview, image, done|error|cancelled)
//   POST /jobs/<id>/cancel
// The events are read with fetch() rather than EventSource, which cannot send the
// Authorization header a gateway with API keys wants.
"use strict";

(() => {
  const CONFIG_URL = "/playground/config.json";
  const MODELS_URL = "/v1/models";
  const KEY_STORAGE = "tessera.playground.apiKey";
  const MAX_LORAS = 4;

  const $ = (id) => document.getElementById(id);

  const state = {
    config: { default_model: "", api_key_required: false },
    // The input image: a File the user picked or dropped, or a Blob of a result reused.
    image: null,
    imageName: "",
    imageUrl: null,
    // The job being followed: {id, safetyCheck, ended, lastProgress,
    // results: Map(index -> <li>)}.
    job: null,
  };

  // ---------------------------------------------------------------- talking to the API

  function authHeaders() {
    const key = $("api-key").value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  // The API's own words for a failed response: `detail.msg` (every tessera error),
  // FastAPI's validation list (422), or OpenAI's `error.message`.
  function errorText(body) {
    if (!body || typeof body !== "object") return null;
    const detail = body.detail;
    if (detail && typeof detail === "object" && !Array.isArray(detail) && typeof detail.msg === "string") {
      return detail.msg;
    }
    if (Array.isArray(detail)) {
      return detail
        .map((d) => {
          const where = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "body").join(".") : "";
          return where ? `${where}: ${d.msg}` : String(d.msg);
        })
        .join("; ");
    }
    if (body.error && typeof body.error.message === "string") return body.error.message;
    if (typeof body.msg === "string") return body.msg;
    return null;
  }

  async function failureText(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      // Not JSON: the status line says what there is to say.
    }
    const said = errorText(body) || `${response.status} ${response.statusText}`.trim();
    if (response.status === 401) {
      showKeyField();
      $("api-key").focus();
      return `${said} This gateway needs an API key: enter it in the API key field and submit again.`;
    }
    return said;
  }

  // One Server-Sent Events stream, event by event ({event, data}); comments (the
  // gateway's keep-alives) are skipped.
  async function* serverEvents(response) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    const boundary = /\r\n\r\n|\n\n|\r\r/;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let match;
      while ((match = boundary.exec(buffer))) {
        const block = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        const parsed = parseEventBlock(block);
        if (parsed) yield parsed;
      }
    }
  }

  function parseEventBlock(block) {
    let event = "message";
    const data = [];
    for (const line of block.split(/\r\n|\r|\n/)) {
      if (line === "" || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    return data.length ? { event, data: data.join("\n") } : null;
  }

  // Result URLs are the gateway's `/stream/...` paths, absolute when the gateway has a
  // public base URL. This page is served by that gateway, so the path alone reaches the
  // same file from this origin, where downloads and fetch() work without CORS.
  function samePlace(url) {
    try {
      const u = new URL(url, location.href);
      return u.pathname.startsWith("/stream/") ? u.pathname : url;
    } catch (_) {
      return url;
    }
  }

  // ---------------------------------------------------------------- the input image

  function setImage(blob, name) {
    if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
    state.image = blob;
    state.imageName = name;
    state.imageUrl = URL.createObjectURL(blob);
    const preview = $("image-preview");
    const kib = Math.max(1, Math.round(blob.size / 1024));
    $("image-info").textContent = `${name}: loading…`;
    preview.onload = () => {
      $("image-info").textContent =
        `${name}: ${preview.naturalWidth} × ${preview.naturalHeight} pixels, ${kib} KiB`;
    };
    preview.onerror = () => {
      // TIFF and the like: the gateway reads them, this browser cannot show them.
      preview.hidden = true;
      $("dropzone-text").hidden = false;
      $("image-info").textContent = `${name}: ${kib} KiB (this browser cannot preview it; the gateway may still read it)`;
    };
    preview.src = state.imageUrl;
    preview.hidden = false;
    $("dropzone-text").hidden = true;
  }

  function wireImageInput() {
    const input = $("image-file");
    const zone = $("dropzone");
    input.addEventListener("change", () => {
      if (input.files && input.files[0]) setImage(input.files[0], input.files[0].name);
    });
    zone.addEventListener("dragover", (e) => {
      e.preventDefault();
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("dragging");
      const file = e.dataTransfer && e.dataTransfer.files[0];
      if (file) setImage(file, file.name);
    });
  }

  // ---------------------------------------------------------------- the form

  // A LoRA field's problem in words, or null when it is fine (empty is fine: no LoRAs).
  // The gateway checks the same again; this says it before anything is uploaded.
  function lorasProblem(text) {
    if (!text.trim()) return null;
    const example = '{"org/repo": 1.0}';
    let value;
    try {
      value = JSON.parse(text);
    } catch (e) {
      return `LoRAs are not valid JSON (${e.message}). Write an object such as ${example}.`;
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      return `LoRAs must be a JSON object mapping each repository or path to its weight, such as ${example}.`;
    }
    const entries = Object.entries(value);
    for (const [id, weight] of entries) {
      if (typeof weight !== "number" || !(weight >= 0)) {
        return `The weight of LoRA "${id}" must be a number ≥ 0, not ${JSON.stringify(weight)}.`;
      }
    }
    if (entries.length > MAX_LORAS) {
      return `At most ${MAX_LORAS} LoRAs at once, not ${entries.length}.`;
    }
    return null;
  }

  function checkLoras() {
    const problem = lorasProblem($("loras").value);
    const out = $("loras-error");
    out.textContent = problem || "";
    out.hidden = !problem;
    $("loras").setAttribute("aria-invalid", problem ? "true" : "false");
    return problem;
  }

  function modelValue() {
    const select = $("model-select");
    return (select.hidden ? $("model-text").value : select.value).trim();
  }

  // The multipart form of the request, or a message saying what to fix first.
  function buildRequest() {
    if (!state.image) return { problem: "Pick or drop an input image first.", focus: "image-file" };
    const prompt = $("prompt").value;
    if (!prompt.trim()) return { problem: "Write a prompt: what should change in the image?", focus: "prompt" };
    const loras = checkLoras();
    if (loras) return { problem: loras, focus: "loras" };

    const form = new FormData();
    form.append("image", state.image, state.imageName || "image");
    form.append("prompt", prompt);
    const negative = $("negative-prompt").value;
    if (negative) form.append("negative_prompt", negative);
    const model = modelValue();
    if (model) form.append("model_id", model);
    // Numbers go as typed: the gateway checks their ranges and says what is allowed.
    // An empty one is left out and gets the API's default.
    const numbers = [
      ["steps", "num_inference_steps", "Steps"],
      ["num-images", "num_images_per_prompt", "Images"],
      ["guidance-scale", "guidance_scale", "Guidance"],
      ["image-guidance-scale", "image_guidance_scale", "Image guidance"],
      ["strength", "strength", "Strength"],
    ];
    if (!$("seed-random").checked) numbers.push(["seed", "seed", "Seed"]);
    for (const [id, field, label] of numbers) {
      const input = $(id);
      if (input.validity.badInput) return { problem: `${label} must be a number.`, focus: id };
      if (input.value.trim() !== "") form.append(field, input.value.trim());
    }
    if (!$("seed-random").checked && $("seed").value.trim() === "") {
      return { problem: "Enter a seed, or tick “random”.", focus: "seed" };
    }
    const loraText = $("loras").value.trim();
    if (loraText) form.append("loras", loraText);
    form.append("safety_check", $("safety-check").checked ? "true" : "false");
    form.append("output_format", $("output-format").value);
    form.append("previews", "true");
    return { form };
  }

  // ---------------------------------------------------------------- showing a job

  function showError(text) {
    const el = $("error");
    el.textContent = text;
    el.hidden = !text;
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  function setBusy(busy) {
    $("submit").disabled = busy;
    $("cancel").disabled = !busy;
  }

  function formatSecs(s) {
    if (!(s >= 0)) return "";
    if (s < 60) return `${Math.ceil(s)} s`;
    const m = Math.floor(s / 60);
    return `${m} min ${Math.round(s - m * 60)} s`;
  }

  function resetOutput() {
    showError("");
    $("progress").max = 1;
    $("progress").value = 0;
    $("progress-text").textContent = "";
    $("preview-box").hidden = true;
    $("results").replaceChildren();
    delete $("output").dataset.jobId;
    delete $("output").dataset.jobStatus;
  }

  function showProgress(job, p) {
    job.lastProgress = p;
    const total = Math.max(1, p.images * p.steps);
    const bar = $("progress");
    bar.max = total;
    bar.value = Math.min(total, p.image * p.steps + p.step);
    let text = `Image ${p.image + 1} of ${p.images} · step ${p.step} of ${p.steps}`;
    if (p.remaining_secs > 0) text += ` · about ${formatSecs(p.remaining_secs)} left`;
    $("progress-text").textContent = text;
    setStatus("Running.");
  }

  function showPreview(p) {
    if (typeof p.url !== "string" || !p.url.startsWith("data:image/")) return;
    $("preview").src = p.url;
    $("preview-caption").textContent = `Preview of image ${p.image + 1} after step ${p.step}`;
    $("preview-box").hidden = false;
  }

  function extensionOf(path) {
    const m = /\.([a-z0-9]+)$/i.exec(path);
    return m ? m[1] : "png";
  }

  function nsfwText(job, nsfw) {
    if (nsfw) return "NSFW: flagged";
    return job.safetyCheck ? "NSFW: no" : "NSFW: not checked";
  }

  // Adds (or, for an index already shown, replaces) one result.
  function showResult(job, index, media) {
    const path = samePlace(media.url);
    const item = document.createElement("li");
    item.className = "result";
    item.dataset.index = String(index);
    item.dataset.seed = String(media.seed);
    item.dataset.nsfw = String(Boolean(media.nsfw));

    const img = document.createElement("img");
    img.src = path;
    img.alt = `Result ${index + 1}, seed ${media.seed}`;
    if (media.nsfw) img.classList.add("nsfw");

    const facts = document.createElement("p");
    facts.className = "facts";
    facts.textContent = `seed ${media.seed} · ${nsfwText(job, media.nsfw)}`;

    const download = document.createElement("a");
    download.className = "button download";
    download.href = path;
    download.download = `tessera-${media.seed}.${extensionOf(path)}`;
    download.textContent = "Download";

    const reuse = document.createElement("button");
    reuse.type = "button";
    reuse.className = "reuse";
    reuse.textContent = "Use as input";
    reuse.addEventListener("click", () => useAsInput(path, media.seed, reuse));

    const actions = document.createElement("div");
    actions.className = "result-actions";
    actions.append(download, reuse);
    item.append(img, facts, actions);

    const old = job.results.get(index);
    if (old) old.replaceWith(item);
    else $("results").append(item);
    job.results.set(index, item);
  }

  async function useAsInput(path, seed, button) {
    button.disabled = true;
    try {
      const response = await fetch(path);
      if (!response.ok) throw new Error(await failureText(response));
      const blob = await response.blob();
      setImage(blob, `result-${seed}.${extensionOf(path)}`);
      $("dropzone").scrollIntoView({ block: "nearest" });
      $("prompt").focus();
    } catch (e) {
      showError(`Cannot use that result as input: ${e.message}`);
    } finally {
      button.disabled = false;
    }
  }

  // How a job ended, from its final event or its document; shown once.
  function finish(job, status, images, error) {
    if (job.ended || state.job !== job) return;
    job.ended = true;
    (images || []).forEach((m, i) => showResult(job, i, m));
    $("output").dataset.jobStatus = status;
    const count = (images || []).length;
    if (status === "succeeded") {
      const bar = $("progress");
      bar.value = bar.max;
      const p = job.lastProgress;
      $("progress-text").textContent = p ? `${p.images * p.steps} steps in ${formatSecs(p.elapsed_secs)}` : "";
      // The results are what the previews were approaching.
      $("preview-box").hidden = true;
      setStatus(`Done: ${count} image${count === 1 ? "" : "s"} (job ${job.id}).`);
    } else if (status === "cancelled") {
      setStatus(`Cancelled (job ${job.id})${count ? `; ${count} image${count === 1 ? "" : "s"} finished before` : ""}.`);
    } else {
      setStatus(`Failed (job ${job.id}).`);
      showError(error || "The job failed.");
    }
    setBusy(false);
  }

  async function follow(job) {
    let response;
    try {
      response = await fetch(`/jobs/${encodeURIComponent(job.id)}/events`, {
        headers: { ...authHeaders(), Accept: "text/event-stream" },
      });
    } catch (e) {
      return lostStream(job, e.message);
    }
    if (!response.ok) return lostStream(job, await failureText(response));
    try {
      for await (const { event, data } of serverEvents(response)) {
        let p;
        try {
          p = JSON.parse(data);
        } catch (_) {
          continue;
        }
        if (event === "progress") showProgress(job, p);
        else if (event === "preview") showPreview(p);
        else if (event === "image") showResult(job, p.index, p);
        else if (event === "done") finish(job, "succeeded", p.images);
        else if (event === "cancelled") finish(job, "cancelled", p.images);
        else if (event === "error") finish(job, "failed", [], p.msg);
      }
    } catch (e) {
      return lostStream(job, e.message);
    }
    if (!job.ended) await lostStream(job, "the event stream ended early");
  }

  // The events stopped before the job's end: its document says where it is.
  async function lostStream(job, why) {
    if (job.ended) return;
    try {
      const response = await fetch(`/jobs/${encodeURIComponent(job.id)}`, { headers: authHeaders() });
      if (response.ok) {
        const doc = await response.json();
        if (["succeeded", "cancelled", "failed"].includes(doc.status)) {
          return finish(job, doc.status, doc.images, doc.error && doc.error.msg);
        }
        showError(`Lost the job's events (${why}); it is still ${doc.status}.`);
      } else {
        showError(`Lost the job's events (${why}): ${await failureText(response)}`);
      }
    } catch (e) {
      showError(`Lost the job's events (${why}): ${e.message}`);
    }
    // This page stops following it; a new job may be submitted.
    job.ended = true;
    setBusy(false);
  }

  async function submit(e) {
    e.preventDefault();
    if (state.job && !state.job.ended) return;
    const built = buildRequest();
    if (built.problem) {
      showError(built.problem);
      if (built.focus) $(built.focus).focus();
      return;
    }
    resetOutput();
    // At phone width the job's panel is below the form: bring it into view.
    $("output").scrollIntoView({ block: "nearest" });
    setBusy(true);
    $("cancel").disabled = true;
    setStatus("Uploading…");
    let response;
    try {
      response = await fetch("/image-to-image", {
        method: "POST",
        headers: { ...authHeaders(), Prefer: "respond-async" },
        body: built.form,
      });
    } catch (err) {
      setStatus("Not submitted.");
      showError(`The gateway could not be reached: ${err.message}`);
      setBusy(false);
      return;
    }
    if (response.status !== 202) {
      setStatus("Not submitted.");
      showError(await failureText(response));
      setBusy(false);
      return;
    }
    const accepted = await response.json();
    const job = {
      id: accepted.id,
      safetyCheck: $("safety-check").checked,
      ended: false,
      lastProgress: null,
      results: new Map(),
    };
    state.job = job;
    $("output").dataset.jobId = job.id;
    $("output").dataset.jobStatus = accepted.status;
    setStatus(`Queued (job ${job.id}).`);
    $("cancel").disabled = false;
    await follow(job);
  }

  async function cancel() {
    const job = state.job;
    if (!job || job.ended) return;
    $("cancel").disabled = true;
    setStatus(`Cancelling job ${job.id}…`);
    try {
      const response = await fetch(`/jobs/${encodeURIComponent(job.id)}/cancel`, {
        method: "POST",
        headers: authHeaders(),
      });
      if (response.ok) {
        // The event stream says `cancelled` too; whichever comes first is shown.
        const doc = await response.json();
        finish(job, doc.status, doc.images, doc.error && doc.error.msg);
      } else {
        // 409: it ended another way first; its own final event follows on the stream.
        showError(await failureText(response));
      }
    } catch (e) {
      showError(`Cannot reach the gateway to cancel: ${e.message}`);
      $("cancel").disabled = job.ended;
    }
  }

  // ---------------------------------------------------------------- models and keys

  function showKeyField() {
    $("api-key-field").hidden = false;
  }

  function useModelText(note) {
    const text = $("model-text");
    if (!text.value) text.value = state.config.default_model;
    text.hidden = false;
    $("model-select").hidden = true;
    $("model-label").htmlFor = "model-text";
    $("model-note").textContent = note;
  }

  // The menu of models from `GET /v1/models`; a text field with the default model when
  // the gateway does not list them.
  async function loadModels() {
    let ids = [];
    try {
      const response = await fetch(MODELS_URL, { headers: authHeaders() });
      if (response.ok) {
        const body = await response.json();
        if (body && Array.isArray(body.data)) {
          ids = body.data.map((m) => m && m.id).filter((id) => typeof id === "string" && id);
        }
      }
    } catch (_) {
      // No list: the text field below.
    }
    if (!ids.length) {
      useModelText("A model id (org/name); empty means the gateway's default.");
      return;
    }
    const select = $("model-select");
    const current = modelValue() || state.config.default_model;
    if (state.config.default_model && !ids.includes(state.config.default_model)) {
      ids.unshift(state.config.default_model);
    }
    select.replaceChildren(
      ...ids.map((id) => {
        const option = document.createElement("option");
        option.value = id;
        option.textContent = id === state.config.default_model ? `${id} (default)` : id;
        return option;
      }),
    );
    select.value = ids.includes(current) ? current : ids[0];
    select.hidden = false;
    $("model-text").hidden = true;
    $("model-label").htmlFor = "model-select";
    $("model-note").textContent = "";
  }

  async function loadConfig() {
    try {
      const response = await fetch(CONFIG_URL);
      if (response.ok) state.config = { ...state.config, ...(await response.json()) };
    } catch (_) {
      // An old gateway or none: defaults, and the API's own answers will tell.
    }
  }

  function wireApiKey() {
    const input = $("api-key");
    let stored = "";
    try {
      stored = localStorage.getItem(KEY_STORAGE) || "";
    } catch (_) {
      // Storage refused (private mode): the key lives as long as the page.
    }
    input.value = stored;
    if (stored || state.config.api_key_required) showKeyField();
    input.addEventListener("input", () => {
      try {
        if (input.value) localStorage.setItem(KEY_STORAGE, input.value);
        else localStorage.removeItem(KEY_STORAGE);
      } catch (_) {
        // As above.
      }
    });
    // A new key may see other models.
    input.addEventListener("change", loadModels);
  }

  // ---------------------------------------------------------------- start

  async function start() {
    wireImageInput();
    $("seed-random").addEventListener("change", () => {
      const random = $("seed-random").checked;
      $("seed").disabled = random;
      if (!random) $("seed").focus();
    });
    $("loras").addEventListener("input", checkLoras);
    $("job-form").addEventListener("submit", submit);
    $("cancel").addEventListener("click", cancel);
    // Ctrl+Enter (Cmd+Enter) submits from anywhere in the form, textareas included.
    $("job-form").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        $("job-form").requestSubmit();
      }
    });
    await loadConfig();
    wireApiKey();
    await loadModels();
    document.body.dataset.ready = "true";
  }

  start();
})();
