// retina demo chat: plain JavaScript, no build step. Talks to this gateway only (same origin);
// images in the history are shown from the image-store's signed URLs (another origin).
"use strict";

const $ = (id) => document.getElementById(id);
const KEYS = { token: "retina.token", user: "retina.user", conversation: "retina.conversation", model: "retina.model" };
const state = { model: sessionStorage.getItem(KEYS.model) || "", attachments: [], streamId: null, controller: null };

// The token may arrive in the URL fragment (`#token=…&user=…`, printed by `retina up`): browsers never
// send fragments to servers. Keep it for this tab only and remove it from the address bar.
function takeFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  for (const key of ["token", "user"]) {
    if (params.get(key)) sessionStorage.setItem(KEYS[key], params.get(key));
  }
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  $("token").value = sessionStorage.getItem(KEYS.token) || "";
  $("user").value = sessionStorage.getItem(KEYS.user) || $("user").value;
}

function authHeaders() {
  return { Authorization: `Bearer ${$("token").value.trim()}`, "X-User-Id": $("user").value.trim() };
}

function setStatus(text) { $("status").textContent = text; }

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status} ${body.error.code}: ${body.error.message}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---- models ------------------------------------------------------------------------------

async function loadModels() {
  $("models-status").textContent = "loading…";
  const response = await fetch("/api/models", { headers: authHeaders() });
  if (!response.ok) { $("models-status").textContent = await errorText(response); return; }
  const { models } = await response.json();
  const list = $("models");
  list.replaceChildren();
  if (!models.some((m) => m.name === state.model)) {
    state.model = (models.find((m) => m.vision) || models[0] || { name: "" }).name;
  }
  for (const model of models) {
    const button = el("button");
    button.type = "button";
    button.dataset.model = model.name;
    button.setAttribute("aria-pressed", String(model.name === state.model));
    button.append(el("span", "name", model.name), el("span", model.vision ? "badge vision" : "badge", model.vision ? "vision" : "text"));
    button.addEventListener("click", () => selectModel(model.name));
    const item = el("li");
    item.append(button);
    list.append(item);
  }
  $("models-status").textContent = models.length ? "" : "no models installed in Ollama";
  $("current-model").textContent = state.model || "none";
}

// Narrow screens only: the models list is a menu behind #models-toggle (wide ones show both).
function showModelsMenu(open) {
  $("models-toggle").setAttribute("aria-expanded", String(open));
}

function selectModel(name) {
  state.model = name;
  sessionStorage.setItem(KEYS.model, name);
  for (const button of $("models").querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(button.dataset.model === name));
  }
  $("current-model").textContent = name;
  showModelsMenu(false);
}

// ---- attachments --------------------------------------------------------------------------

function addFiles(files) {
  for (const file of files) {
    if (!file.type.startsWith("image/")) { setStatus(`${file.name} is not an image`); continue; }
    const item = el("li", "attachment");
    const thumb = el("img");
    thumb.src = URL.createObjectURL(file);
    thumb.alt = file.name;
    const progress = el("progress");
    progress.max = 1;
    progress.value = 0;
    const label = el("div", "progress-label muted", `${Math.ceil(file.size / 1024)} KiB, ready`);
    const remove = el("button", "remove", "remove");
    remove.type = "button";
    const attachment = { file, item, thumb, progress, label };
    remove.addEventListener("click", () => {
      state.attachments = state.attachments.filter((a) => a !== attachment);
      URL.revokeObjectURL(thumb.src);
      item.remove();
    });
    item.append(thumb, el("div", "name", file.name), progress, label, remove);
    $("attachments").append(item);
    state.attachments.push(attachment);
  }
}

function setupDropzone() {
  const zone = $("dropzone");
  $("file-input").addEventListener("change", (event) => { addFiles(event.target.files); event.target.value = ""; });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    addFiles(event.dataTransfer.files);
  });
}

// ---- asking and streaming -------------------------------------------------------------------

function userBubble(text, imageSources) {
  const bubble = el("div", "message user");
  if (imageSources.length) {
    const images = el("div", "images");
    for (const source of imageSources) {
      const img = el("img");
      img.src = source;
      img.alt = "attached image";
      images.append(img);
    }
    bubble.append(images);
  }
  bubble.append(el("div", "content", text));
  $("history").append(bubble);
  return bubble;
}

async function ask(event) {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text || !state.model) { setStatus(state.model ? "type a message" : "pick a model"); return; }
  const form = new FormData();
  form.append("message", text);
  form.append("model", state.model);
  const conversation = sessionStorage.getItem(KEYS.conversation);
  if (conversation) form.append("conversation_id", conversation);
  const sending = state.attachments;
  state.attachments = [];
  for (const attachment of sending) {
    form.append("images", attachment.file, attachment.file.name);
    // fetch() cannot report upload progress over HTTP/1.1: the bar runs until the gateway's
    // `start` event confirms every image was stored.
    attachment.progress.removeAttribute("value");
    attachment.label.textContent = "uploading…";
  }
  userBubble(text, sending.map((a) => a.thumb.src));
  $("message").value = "";
  const answer = el("div", "message assistant");
  const content = el("div", "content");
  answer.append(content);
  $("history").append(answer);
  state.controller = new AbortController();
  $("send").disabled = true;
  setStatus("sending…");
  try {
    const response = await fetch("/api/stream-message", {
      method: "POST", headers: authHeaders(), body: form, signal: state.controller.signal,
    });
    if (!response.ok) {
      answer.append(el("div", "event error", await errorText(response)));
      for (const attachment of sending) attachment.label.textContent = "not sent";
      setStatus("refused");
      return;
    }
    await readStream(response, { answer, content, sending });
  } catch (error) {
    answer.append(el("div", "event error", `connection: ${error.message}`));
  } finally {
    $("send").disabled = false;
    $("stop").disabled = true;
    state.streamId = null;
    for (const attachment of sending) attachment.item.remove();
  }
}

async function readStream(response, view) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5).trim());
      if (data.length) onEvent(JSON.parse(data.join("\n")), view); // ": ping" comments carry no data
    }
  }
}

function onEvent(event, view) {
  switch (event.type) {
    case "start":
      state.streamId = event.stream_id;
      sessionStorage.setItem(KEYS.conversation, event.conversation_id);
      $("stop").disabled = false;
      for (const attachment of view.sending) {
        attachment.progress.value = 1;
        attachment.label.textContent = "stored";
      }
      view.answer.dataset.streamId = event.stream_id;
      setStatus(`${event.model} is answering${event.vision ? " (vision)" : ""}…`);
      break;
    case "thinking":
      thinkingBox(view).textContent += event.content;
      break;
    case "chunk":
      view.content.textContent += event.content;
      break;
    case "notice":
      view.answer.append(el("div", "event notice", `notice ${event.code}: ${event.message}`));
      break;
    case "done":
      view.answer.append(el("div", "event done", `done: ${event.done_reason}` + statsText(event.stats)));
      setStatus(event.done_reason === "stopped" ? "stopped" : "done");
      break;
    case "error":
      view.answer.append(el("div", "event error", `error ${event.code}: ${event.message}`));
      setStatus("failed");
      break;
    default:
      break; // event types newer than this page are skipped, as the contract allows
  }
}

// The model's reasoning, shown folded above the answer (open while it streams in).
function thinkingBox(view) {
  if (!view.thinking) {
    const details = el("details", "thinking");
    details.open = true;
    details.append(el("summary", null, "thinking"));
    view.thinking = el("div", "thinking-text");
    details.append(view.thinking);
    view.answer.insertBefore(details, view.content);
  }
  return view.thinking;
}

function statsText(stats) {
  if (!stats) return "";
  const parts = [];
  if (stats.completion_tokens !== undefined) parts.push(`${stats.completion_tokens} tokens`);
  if (stats.time_to_first_token_ms !== undefined) parts.push(`first token ${stats.time_to_first_token_ms} ms`);
  return parts.length ? ` (${parts.join(", ")})` : "";
}

async function stop() {
  if (!state.streamId) return;
  $("stop").disabled = true;
  const response = await fetch(`/api/stream-message/${state.streamId}/stop`, { method: "POST", headers: authHeaders() });
  if (!response.ok) setStatus(`stop failed: ${await errorText(response)}`);
}

// ---- history --------------------------------------------------------------------------------

async function loadHistory() {
  const conversation = sessionStorage.getItem(KEYS.conversation);
  $("history").replaceChildren();
  if (!conversation) return;
  const response = await fetch(`/api/conversations/${conversation}/messages`, { headers: authHeaders() });
  if (!response.ok) { setStatus(`history: ${await errorText(response)}`); return; }
  const { messages } = await response.json();
  for (const message of messages) {
    const images = (message.images || []).filter((image) => image.url).map((image) => image.url);
    const bubble = message.role === "user" ? userBubble(message.content, images) : el("div", "message assistant");
    if (message.role !== "user") {
      const content = el("div", "content", message.content);
      bubble.append(content);
      if (message.thinking) {
        const view = { answer: bubble, content };
        thinkingBox(view).textContent = message.thinking;
        view.thinking.parentElement.open = false;
      }
      $("history").append(bubble);
    }
    const missing = (message.images || []).filter((image) => !image.url).length;
    const meta = `${message.status}${message.model ? ` · ${message.model}` : ""}${missing ? ` · ${missing} image(s) no longer available` : ""}`;
    bubble.append(el("div", "meta", meta));
  }
  setStatus(`${messages.length} messages`);
}

// ---- start-up -------------------------------------------------------------------------------

async function start() {
  takeFragment();
  setupDropzone();
  $("ask").addEventListener("submit", ask);
  $("stop").addEventListener("click", stop);
  $("models-toggle").addEventListener("click", () => {
    showModelsMenu($("models-toggle").getAttribute("aria-expanded") !== "true");
  });
  $("new-conversation").addEventListener("click", () => {
    sessionStorage.removeItem(KEYS.conversation);
    $("history").replaceChildren();
    setStatus("new conversation");
  });
  $("settings").addEventListener("change", () => {
    sessionStorage.setItem(KEYS.token, $("token").value.trim());
    sessionStorage.setItem(KEYS.user, $("user").value.trim());
    loadModels().then(loadHistory);
  });
  if (!$("token").value) { setStatus("enter the service token printed by `retina up`"); return; }
  await loadModels();
  await loadHistory();
}

start().catch((error) => setStatus(`error: ${error.message}`));
