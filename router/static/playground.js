// The loraplex playground (served by the router at GET /; see router/playground.py).
//
// It lists GET v1/models (bases and their recent public adapters), posts the form to
// POST models/{id} with a same-origin fetch (the router's Origin check passes as for any
// same-origin page) and shows the image, what the x-loraplex-* headers say happened, or the
// API's {"error"} message with Retry-After. Cancel aborts the fetch: the browser closes the
// connection and the router cancels the generation on the worker (queued or running). URLs
// are relative so the page also works behind an Ingress path prefix. No dependencies, no
// build step.
"use strict";

// Response headers worth showing, in order: [header, label, unit].
const FACTS = [
  ["x-loraplex-switch-tier", "Adapter switch tier", ""],
  ["x-loraplex-switch-ms", "Switch time", "ms"],
  ["x-loraplex-queue-ms", "Queue wait", "ms"],
  ["x-loraplex-compute-ms", "Compute time", "ms"],
  ["x-loraplex-active-adapter", "Active adapter", ""],
  ["x-loraplex-worker", "Worker replica", ""],
];
// What each switch tier means, for people who have not read the docs.
const TIERS = {
  none: "none: base model, no adapter",
  active: "active: the adapter was already in the slot",
  resident: "resident: from GPU memory",
  host: "host: from host RAM",
  disk: "disk: loaded from the local cache",
  hub: "hub: downloaded now",
  slow: "slow: diffusers' own load (adapter does not fit the slot)",
};
// Form field id → the Hugging Face Inference API parameter it fills.
const PARAMETERS = [
  ["width", "width"],
  ["height", "height"],
  ["steps", "num_inference_steps"],
  ["guidance", "guidance_scale"],
  ["seed", "seed"],
];
const NUMBER = /^-?\d+(\.\d+)?([eE][-+]?\d+)?$/;
// A Hub repo id as the router accepts it ("name" or "org/name"). Checked here because the
// browser resolves "." and ".." segments of a URL before sending it: "../x" would reach
// another path and answer "no such endpoint" instead of saying what is wrong with the id.
const MODEL_ID = /^\w[\w.-]*(\/\w[\w.-]*)?$/;

const $ = (id) => document.getElementById(id);
let models = []; // the last GET v1/models list
let imageUrl = null; // the blob: URL on show, revoked when replaced
let running = null; // the AbortController of the generation in flight
const MODELS_URL = "v1/models";

function generateUrl(modelId) {
  // An id is org/name: keep the slash, escape the rest.
  return "models/" + modelId.split("/").map(encodeURIComponent).join("/");
}

async function loadModels() {
  let response;
  try {
    response = await fetch(MODELS_URL, { headers: { accept: "application/json" } });
  } catch (error) {
    showError("Cannot reach the router", String(error));
    return;
  }
  if (!response.ok) {
    const { title, message } = await describeFailure(response);
    showError(title, message);
    return;
  }
  const first = models.length === 0;
  models = (await response.json()).data || [];
  fillBases();
  if (first) {
    setStatus(models.length ? "Ready: choose a model and press Generate." : "This router serves no base model yet.");
  }
}

function fillBases() {
  const select = $("base");
  const previous = select.value;
  select.replaceChildren(
    ...models.map((model) => new Option(model.id, model.id, false, model.id === previous)),
  );
  fillAdapters();
}

function currentBase() {
  return models.find((model) => model.id === $("base").value);
}

function fillAdapters() {
  const select = $("adapter");
  const previous = select.value;
  const base = currentBase();
  const adapters = base ? base.adapters || [] : [];
  const none = new Option("none: the bare base", "");
  const options = adapters.map((id) => new Option(id, id, false, id === previous));
  select.replaceChildren(none, ...options);
  $("base-state").textContent = base ? describePool(base, adapters.length) : "";
  showTarget();
}

function describePool(base, adapterCount) {
  const ready = `${base.ready_replicas} of ${base.replicas} replica(s) ready`;
  const pending = base.pending ? `, ${base.pending} request(s) waiting for one` : "";
  const listed = adapterCount ? `; ${adapterCount} LoRA(s) listed` : "; no LoRA listed yet: type an id below";
  return ready + pending + listed;
}

function targetModel() {
  return $("model-id").value.trim() || $("adapter").value || $("base").value;
}

function showTarget() {
  $("target").textContent = "POST /models/" + (targetModel() || "…");
}

// The parameters as JSON text. Numbers go in as the digits typed (a seed may exceed what a
// JavaScript number holds exactly); anything else as a string, so the API says what is wrong.
function parametersJson() {
  const members = [];
  const negative = $("negative-prompt").value.trim();
  if (negative) {
    members.push(`"negative_prompt":${JSON.stringify(negative)}`);
  }
  for (const [field, name] of PARAMETERS) {
    const value = $(field).value.trim();
    if (value) {
      members.push(`${JSON.stringify(name)}:${NUMBER.test(value) ? value : JSON.stringify(value)}`);
    }
  }
  return "{" + members.join(",") + "}";
}

function requestBody() {
  const options = JSON.stringify({ wait_for_model: $("wait").checked });
  return `{"inputs":${JSON.stringify($("prompt").value)},"parameters":${parametersJson()},"options":${options}}`;
}

async function generate(event) {
  event.preventDefault();
  const modelId = targetModel();
  if (!modelId) {
    showError("No model", "Choose a base model, or type a model id.");
    countFinished();
    return;
  }
  if (!MODEL_ID.test(modelId) || modelId.includes("..")) {
    showError(
      "Not a model id",
      `'${modelId}' is not a Hub repo id: type 'org/name' (letters, digits, '-', '_' and '.').`,
    );
    countFinished();
    return;
  }
  running = new AbortController();
  setBusy(true, modelId);
  const started = performance.now();
  try {
    const response = await fetch(generateUrl(modelId), {
      method: "POST",
      headers: { "content-type": "application/json", accept: $("format").value },
      body: requestBody(),
      signal: running.signal,
    });
    const elapsedMs = performance.now() - started;
    if (response.ok) {
      await showImage(response, modelId, elapsedMs);
    } else {
      const { title, message } = await describeFailure(response);
      showError(title, message);
      showFacts(response, modelId, elapsedMs);
    }
  } catch (error) {
    if (error.name === "AbortError") {
      showCancelled(modelId, performance.now() - started);
    } else {
      showError("Cannot reach the router", String(error));
    }
  } finally {
    running = null;
    setBusy(false);
    countFinished();
    loadModels(); // the adapter list now includes what was just served
  }
}

// For scripts that drive the page (the browser test): how many Generate presses have ended.
function countFinished() {
  document.body.dataset.finished = String(Number(document.body.dataset.finished || 0) + 1);
}

// The API's {"error"} message (plus Retry-After and estimated_time), or what a non-JSON
// answer (a proxy's error page) said.
async function describeFailure(response) {
  const title = `${response.status} ${response.statusText || ""}`.trim();
  const text = await response.text();
  let message;
  try {
    const body = JSON.parse(text);
    message = body.error || text;
    if (body.estimated_time !== undefined) {
      message += ` (estimated time: ${body.estimated_time} s)`;
    }
  } catch {
    message = text.slice(0, 500) || "the answer had no body";
  }
  const retryAfter = response.headers.get("retry-after");
  if (retryAfter) {
    message += ` Retry after ${retryAfter} s.`;
  }
  return { title, message };
}

async function showImage(response, modelId, elapsedMs) {
  const blob = await response.blob();
  if (imageUrl) {
    URL.revokeObjectURL(imageUrl);
  }
  imageUrl = URL.createObjectURL(blob);
  const image = $("image");
  image.src = imageUrl;
  try {
    await image.decode();
  } catch {
    showError("Not an image", `the answer (${blob.type}, ${blob.size} bytes) could not be decoded`);
    return;
  }
  image.classList.toggle("small", image.naturalWidth < 256);
  $("caption").textContent = `${modelId}: ${image.naturalWidth}×${image.naturalHeight}, ${blob.type}, ${formatBytes(blob.size)}`;
  $("figure").hidden = false;
  $("error").hidden = true;
  document.body.dataset.outcome = "image";
  setStatus(`Done in ${formatMs(elapsedMs)}.`);
  showFacts(response, modelId, elapsedMs);
}

function showFacts(response, modelId, elapsedMs) {
  const facts = $("facts");
  facts.replaceChildren();
  addFact(facts, "Model", modelId);
  addFact(facts, "HTTP status", String(response.status));
  for (const [header, label, unit] of FACTS) {
    const value = response.headers.get(header);
    if (value !== null && value !== "") {
      addFact(facts, label, describeHeader(header, value, unit));
    }
  }
  addFact(facts, "Round trip (browser)", formatMs(elapsedMs));
  facts.hidden = false;
}

function describeHeader(header, value, unit) {
  if (header === "x-loraplex-switch-tier") {
    return TIERS[value] || value;
  }
  return unit ? `${value} ${unit}` : value;
}

function addFact(list, name, value) {
  const term = document.createElement("dt");
  term.textContent = name;
  const detail = document.createElement("dd");
  detail.textContent = value;
  list.append(term, detail);
}

function showError(title, message) {
  $("error-title").textContent = title;
  $("error-message").textContent = message;
  $("error").hidden = false;
  $("figure").hidden = true;
  $("facts").hidden = true;
  document.body.dataset.outcome = "error";
  setStatus("The request failed.");
}

function showCancelled(modelId, elapsedMs) {
  $("error").hidden = true;
  $("figure").hidden = true;
  $("facts").hidden = true;
  document.body.dataset.outcome = "cancelled";
  setStatus(`Cancelled after ${formatMs(elapsedMs)}: the router stopped ${modelId}'s generation.`);
}

function cancel() {
  if (running) {
    running.abort();
  }
}

function setBusy(on, modelId) {
  $("generate").disabled = on;
  $("generate").textContent = on ? "Generating…" : "Generate";
  $("cancel").hidden = !on;
  if (on) {
    $("error").hidden = true;
    setStatus(`Generating with ${modelId}…`);
  }
}

function setStatus(text) {
  $("status").textContent = text;
}

function formatMs(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function formatBytes(bytes) {
  return bytes < 1024 ? `${bytes} B` : `${(bytes / 1024).toFixed(1)} KiB`;
}

function start() {
  $("form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", cancel);
  $("base").addEventListener("change", fillAdapters);
  $("adapter").addEventListener("change", showTarget);
  $("model-id").addEventListener("input", showTarget);
  loadModels();
}

start();
