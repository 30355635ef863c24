"use strict";
(() => {
  // Settings the API put in the page (chalicelib/web.py): the model's resize size, the upload limit...
  const config = JSON.parse(document.getElementById("config").textContent);
  const $ = (id) => document.getElementById(id);
  const KEY_STORAGE = "dogbreeds.apiKey";
  // The page is served at its stage's root ("/" locally, "/api" behind API Gateway); the API sits beside it.
  const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
  $("openapi-link").href = base + "openapi.json";

  const TITLES = {
    bad_request: "The request was not understood",
    invalid_json: "The request was not understood",
    url_not_allowed: "That address may not be fetched",
    url_fetch_failed: "The image could not be fetched",
    payload_too_large: "The photo is too large",
    unsupported_media_type: "That is not an image the service can read",
    empty_image: "The file is empty",
    unreadable_image: "That is not an image the service can read",
    model_payload_too_large: "The photo is too large for the model",
    too_many_pixels: "The image has too many pixels",
    image_too_elongated: "The image is too long and narrow",
    model_error: "The model failed on this image",
    bad_model_answer: "The model gave an answer that cannot be read",
    endpoint_unavailable: "The model is not available right now",
    endpoint_timeout: "The model took too long to answer",
    misconfigured: "The service is misconfigured",
    throttled: "Too many requests",
    quota_exceeded: "This API key's quota is used up",
    timeout: "The service took too long to answer",
    not_found: "The service does not know this address",
    internal_error: "Something went wrong in the service",
  };

  let current = 0; // the latest request; answers to older ones are dropped
  // How long the page waits for a queued photo's answer (an async endpoint scaled to zero starts first).
  const RESULT_WAIT_MS = 10 * 60 * 1000;

  // --- the API key (optional; a stage that needs one answers 403 without it) ---
  const keyInput = $("api-key");
  keyInput.value = readKey();
  if (keyInput.value) $("key-box").open = true;
  keyInput.addEventListener("input", () => storeKey(keyInput.value.trim()));
  $("forget-key").addEventListener("click", () => {
    keyInput.value = "";
    storeKey("");
    keyInput.focus();
  });

  function readKey() {
    try {
      return localStorage.getItem(KEY_STORAGE) || "";
    } catch {
      return ""; // storage disabled: the key lasts as long as the page
    }
  }

  function storeKey(value) {
    try {
      if (value) localStorage.setItem(KEY_STORAGE, value);
      else localStorage.removeItem(KEY_STORAGE);
    } catch {
      /* storage disabled */
    }
  }

  function headers(extra) {
    const key = keyInput.value.trim();
    return key ? { ...extra, "x-api-key": key } : extra;
  }

  // --- the ways in: choose, drop, paste, address ---
  // Some file pickers count HEIC and AVIF photos as "image/*" only when their types are named as well.
  $("file").accept = ["image/*", ...config.upload_types.filter((type) => type.startsWith("image/"))].join(",");
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) classifyFile(file);
    event.target.value = ""; // choosing the same file again still fires "change"
  });

  const drop = $("drop");
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) drop.classList.remove("over");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const data = event.dataTransfer;
    if (data.files.length) return classifyFile(data.files[0]);
    const url = firstUrl(data.getData("text/uri-list") || data.getData("text/plain"));
    if (url) classifyUrl(url);
  });

  document.addEventListener("paste", (event) => {
    const data = event.clipboardData;
    const file = [...data.files].find((f) => f.type.startsWith("image/"));
    if (file) {
      event.preventDefault();
      return classifyFile(file);
    }
    if (event.target instanceof HTMLInputElement) return; // ordinary pasting into a field
    const url = firstUrl(data.getData("text/plain"));
    if (url) {
      event.preventDefault();
      $("url").value = url;
      classifyUrl(url);
    }
  });

  $("url-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const url = $("url").value.trim();
    if (!url) {
      showError("No address given", "Type or paste the address of an image first.");
      $("url").focus();
      return;
    }
    classifyUrl(url);
  });

  function firstUrl(text) {
    const line = (text || "").split(/\r?\n/).map((s) => s.trim()).find((s) => s && !s.startsWith("#"));
    return line && /^https?:\/\//i.test(line) ? line : null;
  }

  // --- asking the API ---
  async function classifyFile(file) {
    const id = ++current;
    const started = performance.now();
    showPreview(URL.createObjectURL(file), file.name || "pasted image");
    showStatus("Preparing the photo…");
    const upload = await prepareUpload(file);
    if (id !== current) return;
    if (upload.blob.size > config.max_upload_bytes) {
      return showError(
        TITLES.payload_too_large,
        `It is ${formatBytes(upload.blob.size)}; the limit is ${formatBytes(config.max_upload_bytes)}.`,
      );
    }
    showStatus("Asking the model…");
    const note = upload.shrunk
      ? `shrunk here from ${formatBytes(file.size)} to ${formatBytes(upload.blob.size)}`
      : `sent as it is (${formatBytes(upload.blob.size)})`;
    await ask(id, started, note, "predict/image", {
      method: "POST",
      headers: headers({ "Content-Type": upload.type }),
      body: upload.blob,
    });
  }

  async function classifyUrl(url) {
    const id = ++current;
    const started = performance.now();
    showPreview(/^https?:\/\//i.test(url) ? url : "", url);
    showStatus("Fetching the image and asking the model…");
    await ask(id, started, "fetched by the service", "predict", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ url }),
    });
  }

  async function ask(id, started, note, path, request) {
    const got = await call(base + path, request);
    if (id !== current) return;
    if (!got) return showUnreachable();
    const { response, answer } = got;
    if (response.status === 202 && answer && answer.status === "queued" && answer.result_url) {
      return awaitQueued(id, started, note, answer);
    }
    if (response.ok && answer && Array.isArray(answer.predictions) && answer.predictions.length) {
      return showAnswer(answer, note, performance.now() - started);
    }
    showError(...describeError(response, answer));
  }

  // An async stage queues the photo (202) and answers it at result_url once the model has: 202 until then.
  async function awaitQueued(id, started, note, queued) {
    const deadline = performance.now() + RESULT_WAIT_MS;
    let waitS = 1;
    while (performance.now() < deadline) {
      const waited = Math.round((performance.now() - started) / 1000);
      showStatus(`Queued for the model; waiting for its answer (${waited} s)…`);
      await new Promise((resolve) => setTimeout(resolve, waitS * 1000));
      if (id !== current) return;
      const got = await call(queued.result_url, { headers: headers({}) });
      if (id !== current) return;
      if (!got) continue; // a lost connection while waiting: ask again
      const { response, answer } = got;
      if (response.status === 202) {
        waitS = Math.min(Math.max(Number(response.headers.get("Retry-After")) || 1, 1), 10);
        continue;
      }
      if (response.ok && answer && Array.isArray(answer.predictions) && answer.predictions.length) {
        // The result is the model's answer; what was sent is in the 202 that queued it.
        const roundTripMs = performance.now() - started;
        return showAnswer({ image: queued.image, ...answer }, `${note}, answered from the queue`, roundTripMs);
      }
      return showError(...describeError(response, answer));
    }
    showError(
      "The model has not answered yet",
      `The photo is still queued. Its answer will be at ${queued.result_url} (inference ${queued.inference_id}).`,
    );
  }

  // The answer and its JSON body (null when not JSON), or null when the service cannot be reached.
  async function call(url, request) {
    let response;
    try {
      response = await fetch(url, request);
    } catch {
      return null;
    }
    let body = "";
    try {
      body = await response.text();
    } catch {
      /* the connection broke off mid-answer: described by its status */
    }
    let answer = null;
    try {
      answer = JSON.parse(body);
    } catch {
      /* not JSON: described by its status */
    }
    return { response, answer };
  }

  function showUnreachable() {
    showError(
      "The service cannot be reached",
      "Check your connection, or whether the service is running, then try again.",
    );
  }

  function describeError(response, body) {
    const status = response.status;
    const error = body && typeof body.error === "object" && body.error ? body.error : null;
    // API Gateway's own answer for a missing or wrong key, in its shape ({"message": "Forbidden"}) or in the
    // API's when the stage maps its gateway responses.
    if (status === 403) {
      $("key-box").open = true;
      keyInput.focus();
      if (keyInput.value.trim()) {
        return ["The API key was refused", "Check the key in the “API key” field above, then try again."];
      }
      return ["This API needs a key", "Enter your API key in the “API key” field above, then try again."];
    }
    if (error && error.message) {
      let message = sentence(error.message);
      const wait = response.headers.get("Retry-After");
      if ((status === 503 || status === 429) && wait) message += ` Try again in ${wait} s.`;
      return [TITLES[error.code] || `The service answered ${status}`, message];
    }
    if (status === 429) return [TITLES.throttled, "The service is busy. Wait a moment, then try again."];
    if (status === 413) return [TITLES.payload_too_large, "The service refused the request as too large."];
    if (response.ok) return ["The answer cannot be read", "The service answered something that is not an answer."];
    const detail = body && (body.message || body.Message);
    return [
      status >= 500 ? "The service is not available right now" : `The service answered ${status}`,
      detail ? `${sentence(detail)} (HTTP ${status})` : `HTTP ${status}. Try again in a moment.`,
    ];
  }

  // The API's messages are lower-case clauses ("the image is empty"); on the page they read as sentences.
  function sentence(text) {
    const trimmed = String(text).trim();
    const capital = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
    return /[.!?]$/.test(capital) ? capital : capital + ".";
  }

  // A photo whose shorter side is over the model's resize size is shrunk to it here (the model would do the
  // same), upright, as a JPEG: a 12 MP photo goes as tens of KB. A smaller one the API takes goes as it is.
  async function prepareUpload(file) {
    const asIs = {
      blob: file,
      type: config.upload_types.includes(file.type) ? file.type : "application/octet-stream",
      shrunk: false,
    };
    let bitmap;
    try {
      bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    } catch {
      // Not an image this browser decodes (Chrome and Firefox draw no HEIC): the API converts what it
      // accepts and says what it makes of the rest.
      return asIs;
    }
    const size = config.resize_size;
    const short = Math.min(bitmap.width, bitmap.height);
    if (short <= size && config.upload_types.includes(file.type)) {
      bitmap.close();
      return asIs;
    }
    const scale = Math.min(1, size / short);
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    const context = canvas.getContext("2d");
    context.fillStyle = "#fff"; // transparent parts become white, not JPEG's black
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.imageSmoothingQuality = "high";
    context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", config.jpeg_quality));
    // A small, well compressed file (a flat PNG) can come out larger: then it goes as it is.
    if (!blob || (blob.size >= file.size && config.upload_types.includes(file.type))) return asIs;
    return { blob, type: "image/jpeg", shrunk: true };
  }

  // --- showing it ---
  const result = $("result");
  const live = $("live");

  function reset(state) {
    result.classList.add("filled");
    document.body.dataset.state = state;
    live.setAttribute("aria-busy", state === "working" ? "true" : "false");
    $("status").textContent = "";
    $("error").hidden = true;
    $("answer").hidden = true;
    $("facts").hidden = true;
  }

  function showPreview(src, caption) {
    const figure = $("preview");
    const img = $("preview-img");
    const old = img.src;
    if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    const hide = (hidden) => {
      figure.hidden = hidden;
      result.classList.toggle("no-preview", hidden);
    };
    hide(!src);
    img.onerror = () => hide(true);
    if (src) img.src = src;
    else img.removeAttribute("src");
    img.alt = caption ? `Your photo: ${caption}` : "Your photo";
    $("preview-caption").textContent = caption;
  }

  function showStatus(text) {
    reset("working");
    $("status").textContent = text;
  }

  function showError(title, message) {
    reset("failed");
    $("error-title").textContent = title;
    $("error-message").textContent = message;
    $("error").hidden = false;
    bringIntoView();
  }

  // On a phone the answer lands below the fold; bring it up without moving the keyboard focus.
  function bringIntoView() {
    const box = result.getBoundingClientRect();
    if (box.top > window.innerHeight - 80) result.scrollIntoView({ block: "start", behavior: "smooth" });
  }

  function showAnswer(answer, note, roundTripMs) {
    reset("answered");
    const top = answer.predictions[0];
    const verdict = $("verdict");
    verdict.className = "verdict";
    const bars = $("bars");
    bars.className = "bars";
    $("bars-note").hidden = true;
    if (answer.is_dog === false) {
      verdict.textContent = "This does not look like a dog.";
      verdict.classList.add("not-dog");
      bars.classList.add("faded");
      bars.setAttribute("aria-label", "If it is a dog after all, the closest breeds");
      $("bars-note").hidden = false;
    } else {
      verdict.textContent = `${answer.confident === false ? "Perhaps a" : "A"} ${top.breed}`;
      if (answer.confident === false) {
        const tag = document.createElement("span");
        tag.className = "tag";
        tag.textContent = "not sure";
        verdict.append(" ", tag);
      }
      bars.setAttribute("aria-label", "Most likely breeds");
    }
    bars.replaceChildren(...answer.predictions.map(bar));
    $("answer").hidden = false;

    const facts = [];
    if (answer.model) facts.push(["Model", `${answer.model.name} version ${answer.model.version}`]);
    if (typeof answer.dog_probability === "number") facts.push(["Is a dog", percent(answer.dog_probability)]);
    if (answer.image) {
      const image = answer.image;
      facts.push(["Photo", `${image.width} × ${image.height}, ${note}`]);
      facts.push(["Sent", `${formatBytes(image.bytes_received)} received, ${formatBytes(image.bytes_sent)} to the model`]);
    }
    if (answer.timings_ms) {
      const parts = Object.entries(answer.timings_ms).map(([name, ms]) => `${name} ${Math.round(ms)} ms`);
      facts.push(["Server", parts.join(", ")]);
    }
    facts.push(["In all", `${Math.round(roundTripMs)} ms from choosing to answer, in this browser`]);
    $("facts").replaceChildren(
      ...facts.flatMap(([term, value]) => {
        const dt = document.createElement("dt");
        dt.textContent = term;
        const dd = document.createElement("dd");
        dd.textContent = value;
        return [dt, dd];
      }),
    );
    $("facts").hidden = false;
    bringIntoView();
  }

  function bar(prediction) {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = prediction.breed;
    name.title = prediction.label;
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = percent(prediction.probability);
    const track = document.createElement("span");
    track.className = "track";
    track.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${Math.max(0, Math.min(1, prediction.probability)) * 100}%`;
    track.append(fill);
    li.append(name, pct, track);
    li.dataset.label = prediction.label;
    return li;
  }

  function percent(p) {
    const value = p * 100;
    if (value > 0 && value < 0.1) return "<0.1%";
    return `${value.toFixed(value >= 10 ? 0 : 1)}%`;
  }

  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(n < 10240 ? 1 : 0)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  $("shrink-hint").textContent =
    `Photos are shrunk here to ${config.resize_size} px on their shorter side, what the model looks at.`;
  document.body.dataset.state = "ready";
})();
