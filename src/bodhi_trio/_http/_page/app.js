// bodhi-trio's page: models live from /bodhi/v1/events, a streaming chat with Stop, pulls.
// Everything the server sends is shown with textContent, never parsed as HTML.
"use strict";

const KEY_STORAGE = "bodhi-trio-key";
const page = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  admin: true, // until an admin route answers 403
  models: new Map(), // alias -> state entry
  aliases: [],
  openLogs: new Set(),
  chat: [], // the conversation, OpenAI messages
  chatAbort: null,
  busyPoll: 0,
};

const $ = (selector) => document.querySelector(selector);

function element(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  const { dataset, ...rest } = props;
  Object.assign(node, rest);
  Object.assign(node.dataset, dataset || {});
  for (const child of children) node.append(child);
  return node;
}

function authHeaders(extra = {}) {
  const headers = { ...extra };
  if (page.key) headers.Authorization = `Bearer ${page.key}`;
  return headers;
}

class KeyNeeded extends Error {}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authHeaders(options.headers) });
  if (response.status === 401) {
    $("#key-form").hidden = false;
    throw new KeyNeeded("an API key is needed");
  }
  return response;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && (body.error.message || body.error)) || response.statusText;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// Server-sent events over fetch (EventSource cannot send an Authorization header):
// yields each event's data, joined over its data: lines; comments are skipped.
async function* serverEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) yield data;
    }
  }
}

// ------------------------------------------------------------------ models

function mib(bytes) {
  return bytes == null ? "-" : `${(bytes / 2 ** 20).toFixed(0)} MiB`;
}

function unloadsIn(entry) {
  if (entry.state !== "ready") return "";
  if (entry.in_flight > 0) return "busy";
  if (entry.expires_at == null) return "never";
  const seconds = Math.max(0, Math.round(entry.expires_at - Date.now() / 1000));
  return seconds >= 120 ? `in ${Math.round(seconds / 60)} min` : `in ${seconds} s`;
}

async function control(path, alias) {
  const response = await api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ alias }),
  });
  if (!response.ok) showModelsError(`${alias}: ${await errorText(response)}`);
}

function showModelsError(text) {
  const node = $("#models-error");
  node.textContent = text;
  node.hidden = !text;
}

async function toggleLogs(alias) {
  if (page.openLogs.has(alias)) page.openLogs.delete(alias);
  else page.openLogs.add(alias);
  await renderModels();
}

async function logLines(alias) {
  const response = await api(`/bodhi/v1/server/logs?lines=40&alias=${encodeURIComponent(alias)}`);
  if (response.status === 403) {
    setAdmin(false);
    return "";
  }
  return response.ok ? (await response.json()).lines.join("\n") : await errorText(response);
}

function setAdmin(admin) {
  page.admin = admin;
  document.body.classList.toggle("no-admin", !admin);
}

async function renderModels() {
  const body = $("#models tbody");
  const rows = [];
  for (const alias of page.aliases) {
    const entry = page.models.get(alias) || { alias, state: "stopped", in_flight: 0, queued: 0 };
    const actions = element("td");
    if (page.admin) {
      const loaded = entry.state === "ready" || entry.state === "loading";
      const button = element("button", {
        className: "secondary",
        textContent: loaded ? "Stop" : "Load",
        onclick: () => control(loaded ? "/bodhi/v1/server/stop" : "/bodhi/v1/server/load", alias),
      });
      const logs = element("button", {
        className: "secondary",
        textContent: page.openLogs.has(alias) ? "Hide log" : "Log",
        onclick: () => toggleLogs(alias),
      });
      actions.append(button, " ", logs);
    }
    const row = element(
      "tr",
      { dataset: { alias, state: entry.state } },
      element("td", { textContent: alias }),
      element("td", {}, element("span", { className: "badge", textContent: entry.state, dataset: { state: entry.state } })),
      element("td", { textContent: entry.pid ?? "-" }),
      element("td", { textContent: entry.in_flight ?? 0, className: "in-flight" }),
      element("td", { textContent: entry.queued ?? 0 }),
      element("td", { textContent: mib(entry.memory) }),
      element("td", { textContent: unloadsIn(entry) }),
      actions,
    );
    rows.push(row);
    if (page.openLogs.has(alias) && page.admin) {
      const pre = element("pre", { textContent: await logLines(alias) });
      rows.push(element("tr", { className: "logs" }, element("td", { colSpan: 8 }, pre)));
    }
  }
  body.replaceChildren(...rows);
}

function renderMemory(memory) {
  const { budget, used } = memory || {};
  $("#memory-text").textContent = budget ? `${mib(used)} of ${mib(budget)}` : `${mib(used)} (no budget)`;
  $("#memory-used").style.width = budget ? `${Math.min(100, (100 * used) / budget)}%` : "0";
}

function renderChatModels() {
  const select = $("#chat-model");
  const chosen = select.value;
  select.replaceChildren(...page.aliases.map((alias) => element("option", { value: alias, textContent: alias })));
  if (page.aliases.includes(chosen)) select.value = chosen;
}

async function refresh() {
  try {
    const [state, models] = await Promise.all([api("/bodhi/v1/state"), api("/v1/models")]);
    if (!state.ok || !models.ok) {
      showModelsError(await errorText(state.ok ? models : state));
      return;
    }
    const doc = await state.json();
    const aliases = (await models.json()).data.map((m) => m.id);
    page.models = new Map(doc.models.map((m) => [m.alias, m]));
    const changed = aliases.join("\n") !== page.aliases.join("\n");
    page.aliases = aliases;
    renderMemory(doc.memory);
    await renderModels();
    if (changed) renderChatModels();
    // The events say when a response starts, not when it ends: while anything is in
    // flight or queued, look again shortly.
    if (doc.models.some((m) => m.in_flight > 0 || m.queued > 0)) {
      clearTimeout(page.busyPoll);
      page.busyPoll = setTimeout(refreshSoon, 1000);
    }
  } catch (error) {
    if (!(error instanceof KeyNeeded)) showModelsError(String(error));
  }
}

let refreshQueued = false;
function refreshSoon() {
  // Events come in bursts (a load is loading, then start): one refresh per burst.
  if (refreshQueued) return;
  refreshQueued = true;
  setTimeout(() => {
    refreshQueued = false;
    refresh();
  }, 50);
}

function setConnection(state, text) {
  const badge = $("#connection");
  badge.dataset.state = state;
  badge.textContent = text;
}

async function followEvents() {
  let delay = 500;
  for (;;) {
    try {
      const response = await api("/bodhi/v1/events", { headers: { Accept: "text/event-stream" } });
      if (!response.ok) throw new Error(await errorText(response));
      setConnection("live", "live");
      delay = 500;
      refreshSoon();
      for await (const _event of serverEvents(response)) refreshSoon();
    } catch (error) {
      if (error instanceof KeyNeeded) setConnection("reconnecting", "needs a key");
    }
    setConnection("reconnecting", "reconnecting…");
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 5000);
  }
}

// ------------------------------------------------------------------ chat

function addMessage(role, text) {
  const node = element("div", { className: `msg ${role}`, textContent: text });
  $("#chat-log").append(node);
  node.scrollIntoView({ block: "end" });
  return node;
}

function chatBusy(busy) {
  $("#chat-send").disabled = busy;
  $("#chat-stop").disabled = !busy;
}

function extraFields() {
  const text = $("#chat-extra").value.trim();
  if (!text) return {};
  const value = JSON.parse(text); // a SyntaxError is shown to the user
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Error("more request fields must be a JSON object");
  }
  return value;
}

async function sendChat(event) {
  event.preventDefault();
  const input = $("#chat-input");
  const content = input.value.trim();
  if (!content || page.chatAbort) return;
  let extra;
  try {
    extra = extraFields();
  } catch (error) {
    $("#chat-status").textContent = String(error);
    return;
  }
  input.value = "";
  page.chat.push({ role: "user", content });
  addMessage("user", content);
  const reply = addMessage("assistant", "");
  const abort = new AbortController();
  page.chatAbort = abort;
  chatBusy(true);
  $("#chat-status").textContent = "waiting for the model…";
  const started = performance.now();
  let tokens = 0;
  // Tokens arrive faster than a screen refreshes (thousands a second from a small model):
  // the page is updated once per frame with what came meanwhile, not once per token.
  let pending = "";
  let frame = 0;
  const flush = () => {
    cancelAnimationFrame(frame);
    frame = 0;
    if (pending) {
      reply.textContent += pending;
      pending = "";
      reply.scrollIntoView({ block: "end" });
    }
    $("#chat-status").textContent = `${tokens} tokens`;
  };
  const show = () => {
    if (!frame) frame = requestAnimationFrame(flush);
  };
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({
        model: $("#chat-model").value,
        messages: page.chat,
        stream: true,
        max_tokens: Number($("#chat-max-tokens").value) || 256,
        ...extra,
      }),
      signal: abort.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    for await (const data of serverEvents(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        pending += delta.content;
        tokens += 1;
        show();
      }
    }
    flush();
    const seconds = (performance.now() - started) / 1000;
    $("#chat-status").textContent = `done: ${tokens} tokens in ${seconds.toFixed(1)} s`;
  } catch (error) {
    if (abort.signal.aborted) {
      $("#chat-status").textContent = `stopped after ${tokens} tokens`;
    } else {
      addMessage("error", String(error.message || error));
      $("#chat-status").textContent = "failed";
    }
  } finally {
    if (pending) reply.textContent += pending;
    cancelAnimationFrame(frame);
    page.chat.push({ role: "assistant", content: reply.textContent });
    page.chatAbort = null;
    chatBusy(false);
    refreshSoon(); // its model is no longer busy
  }
}

function stopChat() {
  if (page.chatAbort) page.chatAbort.abort(); // closes the connection: generation stops
}

function clearChat() {
  stopChat();
  page.chat = [];
  $("#chat-log").replaceChildren();
  $("#chat-status").textContent = "";
}

// ------------------------------------------------------------------ pulls

function pullRequest() {
  const model = $("#pull-model").value.trim();
  const filename = $("#pull-filename").value.trim();
  const alias = $("#pull-alias").value.trim();
  const body = filename ? { repo: model, filename } : { model };
  if (alias) body.alias = alias;
  return body;
}

async function startPull(event) {
  event.preventDefault();
  const progress = $("#pull-progress");
  const status = $("#pull-status");
  progress.hidden = false;
  progress.value = 0;
  status.textContent = "starting…";
  try {
    const response = await api("/bodhi/v1/pull", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(pullRequest()),
    });
    if (!response.ok) throw new Error(await errorText(response));
    for await (const data of serverEvents(response)) {
      const job = JSON.parse(data);
      if (job.error) throw new Error(job.error.message || job.error);
      const done = job.bytes_done ?? job.completed ?? 0;
      const total = job.bytes_total ?? job.total ?? 0;
      if (total) progress.value = done / total;
      status.textContent = `${job.state || job.status || ""} ${mib(done)}${total ? ` of ${mib(total)}` : ""}`;
    }
    refreshSoon();
  } catch (error) {
    if (!(error instanceof KeyNeeded)) status.textContent = String(error.message || error);
  }
}

// ------------------------------------------------------------------ start

$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  page.key = $("#key-input").value.trim();
  sessionStorage.setItem(KEY_STORAGE, page.key);
  $("#key-form").hidden = true;
  setAdmin(true);
  refresh();
  checkAdmin();
});
$("#chat-form").addEventListener("submit", sendChat);
$("#chat-stop").addEventListener("click", stopChat);
$("#chat-clear").addEventListener("click", clearChat);
$("#pull-form").addEventListener("submit", startPull);

async function checkAdmin() {
  try {
    const response = await api("/bodhi/v1/server/logs?lines=0");
    setAdmin(response.status !== 403);
  } catch {
    /* a key is needed first */
  }
}

setInterval(() => refresh(), 15000); // the "unloads in" column, and anything missed
checkAdmin();
refresh();
followEvents();
