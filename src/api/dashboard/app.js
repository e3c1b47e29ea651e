// switchyard dashboard: times in the chosen zone, live updates over
// server-sent events, and the buttons that call the API. No framework.
"use strict";

const TZ_KEY = "switchyard.tz";
const zone = () => localStorage.getItem(TZ_KEY) || "local";

// `2026-12-03 14:30:23 CET`: the same order in every locale.
function formatTime(iso) {
  const date = new Date(iso);
  if (isNaN(date)) return iso;
  const options = { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit",
    minute: "2-digit", second: "2-digit", hourCycle: "h23", timeZoneName: "short" };
  if (zone() === "utc") options.timeZone = "UTC";
  const part = {};
  for (const p of new Intl.DateTimeFormat("en-US", options).formatToParts(date)) part[p.type] = p.value;
  return `${part.year}-${part.month}-${part.day} ${part.hour}:${part.minute}:${part.second} ${part.timeZoneName}`;
}

function renderTimes(root) {
  for (const el of (root || document).querySelectorAll("time[datetime]")) {
    el.textContent = formatTime(el.getAttribute("datetime"));
    el.title = el.getAttribute("datetime");
  }
  const toggle = document.getElementById("tz-toggle");
  if (toggle) toggle.textContent = zone() === "utc" ? "Times: UTC" : "Times: local";
}

function duration(start, end) {
  if (!start) return "";
  const ms = (end ? new Date(end) : new Date()) - new Date(start);
  if (ms < 1000) return ms + " ms";
  const s = ms / 1000;
  if (s < 60) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + " min " + Math.round(s % 60) + " s";
  return Math.floor(m / 60) + " h " + (m % 60) + " min";
}

function timeHtml(iso) {
  if (!iso) return "";
  const t = document.createElement("time");
  t.setAttribute("datetime", iso);
  t.textContent = formatTime(iso);
  return t.outerHTML;
}

function setStatus(el, status) {
  if (!el) return;
  for (const c of [...el.classList]) if (c.startsWith("s-")) el.classList.remove(c);
  el.classList.add("s-" + status);
  if (el.classList.contains("badge")) el.textContent = status;
}

const ACTIVE = new Set(["queued", "running"]);
const SYMBOL = { succeeded: "✓", failed: "✗", running: "●", cancelled: "⊘", skipped: "–" };

// The run page: the record, as the server sends it on every change.
function applyRun(run) {
  setStatus(document.querySelector("[data-run-status]"), run.status);
  const ended = document.querySelector("[data-run-ended]");
  if (ended) ended.innerHTML = timeHtml(run.ended_at);
  const error = document.querySelector("[data-run-error]");
  if (error) error.textContent = run.error || "";
  for (const [id, task] of Object.entries(run.tasks || {})) {
    setStatus(document.querySelector(`.dag g.task[data-task="${CSS.escape(id)}"]`), task.status);
    const row = document.querySelector(`tr[data-task="${CSS.escape(id)}"]`);
    if (!row) continue;
    setStatus(row.querySelector(".badge"), task.status);
    row.querySelector("[data-attempts]").textContent = task.attempts;
    row.querySelector("[data-started]").innerHTML = timeHtml(task.started_at);
    row.querySelector("[data-duration]").textContent = duration(task.started_at, task.ended_at);
    row.querySelector("[data-error]").textContent = task.error || "";
    // A check says what it is waiting for.
    const observed = row.querySelector("[data-observation]");
    if (observed) {
      const waiting = task.status === "running" && task.observation && task.observation.summary;
      observed.textContent = waiting ? `waiting: ${task.observation.summary}` : "";
    }
    const output = row.querySelector("[data-output]");
    if (output) {
      const some = task.output && Object.keys(task.output).length > 0;
      output.textContent = some ? JSON.stringify(task.output, null, 2) : "";
      output.closest("details").hidden = !some;
    }
  }
  for (const button of document.querySelectorAll("[data-when]")) {
    const when = button.dataset.when;
    button.disabled = when === "active" ? !ACTIVE.has(run.status) : ACTIVE.has(run.status);
  }
}

// Subscribes to a server-sent event stream; `raw` events carry text.
function follow(url, onEvent, raw = []) {
  const source = new EventSource(url);
  for (const [name, handler] of Object.entries(onEvent)) {
    source.addEventListener(name, (e) => handler(raw.includes(name) ? e.data : JSON.parse(e.data), source));
  }
  return source;
}

function liveRun(id) {
  follow(`/api/v1/runs/${id}/stream`, {
    run: (run, source) => { applyRun(run); if (!ACTIVE.has(run.status)) source.close(); },
  });
}

// Lists of runs: rows update in place; runs that start show a notice.
function liveRuns(workflow) {
  let fresh = 0;
  follow("/api/v1/stream", {
    run: (run) => {
      if (workflow && run.workflow !== workflow) return;
      const rows = document.querySelectorAll(`[data-run="${CSS.escape(run.id)}"]`);
      if (rows.length === 0 && run.status !== "queued" && !run.ended_at) {
        fresh += 1;
        const notice = document.getElementById("new-runs");
        if (notice) { notice.hidden = false; notice.querySelector("span").textContent = fresh; }
      }
      for (const row of rows) {
        setStatus(row.querySelector(".badge") || row, run.status);
        const ended = row.querySelector("[data-ended]");
        if (ended) ended.innerHTML = timeHtml(run.ended_at);
        const took = row.querySelector("[data-duration]");
        if (took) took.textContent = duration(run.started_at, run.ended_at);
        for (const [task, status] of Object.entries(run.tasks || {})) {
          const cell = row.querySelector(`[data-cell="${CSS.escape(task)}"]`);
          setStatus(cell, status);
          const link = cell && cell.querySelector("a");
          if (link) { link.textContent = SYMBOL[status] || "○"; link.title = `${task}: ${status}`; }
        }
      }
    },
  });
}

async function callApi(button) {
  const [method, url] = button.dataset.action.split(" ");
  let body = button.dataset.body || "{}";
  if (button.form && button.form.dataset.kind === "backtest") {
    const form = button.form;
    const edited = form.querySelector("[name=binding]").value.trim();
    let binding = form.querySelector("[name=name]").value;
    if (edited) {
      try { binding = JSON.parse(edited); } catch (e) { flash(`The binding is not JSON: ${e.message}`, true); return; }
    }
    body = JSON.stringify({ binding, since: form.querySelector("[name=since]").value.trim() || "7d" });
  } else if (button.form && button.form.dataset.kind === "backfill") {
    const field = (name) => button.form.querySelector(`[name=${name}]`).value.trim();
    body = JSON.stringify({ from: field("from"), to: field("to"), dry_run: Boolean(button.dataset.dry) });
  } else if (button.form) {
    const params = {};
    for (const input of button.form.querySelectorAll("[data-param]")) {
      if (input.value === "") continue;
      let value = input.value;
      try { value = JSON.parse(value); } catch (_) { /* a plain string */ }
      params[input.dataset.param] = value;
    }
    const from = button.form.querySelector("[name=from]");
    body = JSON.stringify(from ? { from: from.value, params } : { params });
  }
  button.disabled = true;
  try {
    const response = await fetch(url, { method, credentials: "same-origin",
      headers: { "content-type": "application/json" }, body });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(answer.error ? answer.error.message : response.statusText);
    if (button.dataset.go && answer.id) { location.href = button.dataset.go.replace("{id}", answer.id); return; }
    if (button.dataset.show === "backtest-result") { showBacktest(document.getElementById("backtest-result"), answer); return; }
    if (button.dataset.show) { showInstants(document.getElementById(button.dataset.show), answer); return; }
    flash(button.dataset.done || "Done.");
    if (button.dataset.reload) location.reload();
  } catch (e) {
    flash(e.message, true);
  } finally {
    if (!button.dataset.when) button.disabled = false;
  }
}

// A backfill's dry run: how many instants, and the first of them.
function showInstants(target, answer) {
  const instants = answer.instants || [];
  target.textContent = `${instants.length} run(s) would start` + (instants.length ? ":" : ".");
  const list = document.createElement("ul");
  for (const instant of instants.slice(0, 20)) {
    const item = document.createElement("li");
    item.innerHTML = timeHtml(instant);
    list.append(item);
  }
  if (instants.length > 20) list.append(Object.assign(document.createElement("li"), { textContent: `… and ${instants.length - 20} more` }));
  target.append(list);
}

function cell(row, content, html) {
  const td = document.createElement("td");
  if (html) td.innerHTML = content; else td.textContent = content;
  row.append(td);
  return td;
}

// A backtest's answer: its counts, then one row per event.
function showBacktest(target, answer) {
  target.textContent = "";
  const summary = document.createElement("p");
  summary.textContent = `${answer.binding} → ${answer.workflow}: of ${answer.events_examined} event(s) recorded in the last ${answer.since}, ${answer.from_this_trigger} came from its trigger and it would have started ${answer.would_start} run(s).`;
  target.append(summary);
  const table = document.createElement("table");
  table.innerHTML = "<thead><tr><th>Event</th><th>Time</th><th>Verdict</th><th>Params or reason</th></tr></thead>";
  const body = document.createElement("tbody");
  for (const r of answer.results || []) {
    const row = document.createElement("tr");
    cell(row, r.event_id || "");
    cell(row, r.time ? timeHtml(r.time) : "", true);
    const verdict = { match: "succeeded", filtered: "skipped", failed: "failed" }[r.verdict] || "queued";
    cell(row, `<span class="badge s-${verdict}">${r.verdict}</span>`, true);
    cell(row, r.verdict === "match" ? JSON.stringify(r.params) : (r.reason || ""));
    body.append(row);
  }
  table.append(body);
  target.append(table);
}

// A cron binding's occurrence log, read when its details open.
async function showOccurrences(details) {
  if (details.dataset.loaded) return;
  details.dataset.loaded = "1";
  const body = details.querySelector("tbody");
  const response = await fetch(details.dataset.occurrences, { credentials: "same-origin" });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) { body.textContent = answer.error ? answer.error.message : response.statusText; return; }
  const statusClass = { fired: "succeeded", caught_up: "succeeded", backfilled: "succeeded", failed: "failed" };
  for (const o of answer.occurrences || []) {
    const row = document.createElement("tr");
    cell(row, timeHtml(o.scheduled_time), true);
    cell(row, `<span class="badge s-${statusClass[o.status] || "skipped"}">${o.status}</span>`, true);
    const run = o.run_id ? `<a class="mono" href="/runs/${o.run_id}">…${o.run_id.replaceAll("-", "").slice(-10)}</a>` : "";
    const detail = o.count ? ` ${o.count} instants, to ${o.last_scheduled_time || ""}` : (o.detail ? ` ${o.detail}` : "");
    cell(row, run, true).append(document.createTextNode(detail));
    body.append(row);
  }
  if (!body.children.length) body.textContent = "No occurrence yet.";
  for (const next of answer.next_fires || []) {
    const row = document.createElement("tr");
    cell(row, timeHtml(next), true);
    cell(row, `<span class="badge s-queued">next</span>`, true);
    cell(row, "");
    body.prepend(row);
  }
}

// A version's changes, read when its details open (RFC 6902 operations).
async function showDiff(details) {
  if (details.dataset.loaded) return;
  details.dataset.loaded = "1";
  const list = details.querySelector("ol");
  const response = await fetch(details.dataset.diff, { credentials: "same-origin" });
  const answer = await response.json().catch(() => ({}));
  const ops = answer.patch || answer.operations || (Array.isArray(answer) ? answer : []);
  if (!response.ok) { list.textContent = answer.error ? answer.error.message : response.statusText; return; }
  if (ops.length === 0) { list.textContent = "No changes."; return; }
  for (const op of ops) {
    const item = document.createElement("li");
    const value = op.value === undefined ? "" : " " + JSON.stringify(op.value);
    item.textContent = `${op.op} ${op.path}${op.from ? " from " + op.from : ""}${value}`;
    list.append(item);
  }
}

// Cancel or rerun the runs ticked in a grid, one request each.
async function bulk(action) {
  const ids = [...document.querySelectorAll("input[data-select]:checked")].map((c) => c.dataset.select);
  if (ids.length === 0) { flash("Select runs first.", true); return; }
  let done = 0;
  const errors = [];
  for (const id of ids) {
    const url = `/api/v1/runs/${id}/${action === "cancel" ? "cancel" : "rerun"}`;
    const body = action === "cancel" ? "{}" : JSON.stringify({ from: "failed" });
    const response = await fetch(url, { method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json" }, body });
    if (response.ok) done += 1;
    else errors.push(`${id}: ${((await response.json().catch(() => ({}))).error || {}).message || response.statusText}`);
  }
  flash(`${action === "cancel" ? "Cancelled" : "Reran"} ${done} of ${ids.length} run(s).` + (errors.length ? " " + errors.join("; ") : ""), errors.length > 0);
}

function flash(text, error) {
  const box = document.getElementById("flash");
  if (!box) return;
  box.hidden = false;
  box.className = "flash" + (error ? " error" : "");
  box.textContent = text;
  box.setAttribute("role", error ? "alert" : "status");
}

// Task logs: stored attempts, then followed live while the task runs;
// the search box shows only the lines that match.
let logSource = null;
let logText = "";
function showLogs(runId, task) {
  const panel = document.getElementById("logs");
  if (!panel) return;
  if (logSource) { logSource.close(); logSource = null; }
  panel.hidden = false;
  panel.querySelector("[data-log-task]").textContent = task;
  logText = "";
  renderLogs();
  const base = `/api/v1/runs/${runId}/tasks/${encodeURIComponent(task)}/logs`;
  panel.querySelector("[data-download]").href = base + "?format=text";
  panel.dataset.base = base;
  panel.dataset.ended = "";
  const append = (text) => { logText += text; renderLogs(); };
  logSource = follow(base + "?follow=true", {
    attempt: (a) => append(`── attempt ${a.attempt}${a.live ? " (running)" : ""} ──\n`),
    stdout: (t) => append(t),
    stderr: (t) => append(t),
    missed: (m) => append(`[${m.bytes} bytes not shown]\n`),
    end: (e, source) => {
      append(`── ${e.task} ${e.status} after ${e.attempts} attempt(s) ──\n`);
      source.close();
      panel.dataset.ended = "1";
    },
  }, ["stdout", "stderr"]);
  panel.scrollIntoView({ block: "nearest" });
}

// Searching an ended task's logs asks the server (all of them, with line
// numbers); while the task runs, the lines shown are filtered here.
let searchTimer = null;
function searchLogs() {
  const panel = document.getElementById("logs");
  const query = panel.querySelector("input[type=search]").value;
  if (!query || !panel.dataset.ended) { renderLogs(); return; }
  clearTimeout(searchTimer);
  searchTimer = setTimeout(async () => {
    const response = await fetch(`${panel.dataset.base}?q=${encodeURIComponent(query)}`, { credentials: "same-origin" });
    const answer = await response.json().catch(() => ({}));
    const matches = answer.matches || [];
    panel.querySelector("pre").textContent = matches
      .map((m) => `[attempt ${m.attempt} ${m.stream}:${m.line}] ${m.text}`).join("\n");
    panel.querySelector("[data-matches]").textContent = `${matches.length} matching line(s)`;
  }, 200);
}

function renderLogs() {
  const panel = document.getElementById("logs");
  const query = panel.querySelector("input[type=search]").value.toLowerCase();
  const out = panel.querySelector("pre");
  const count = panel.querySelector("[data-matches]");
  if (!query) { out.textContent = logText; count.textContent = ""; return; }
  const lines = logText.split("\n").filter((l) => l.toLowerCase().includes(query));
  out.textContent = lines.join("\n");
  count.textContent = `${lines.length} matching line(s)`;
}

document.addEventListener("DOMContentLoaded", () => {
  renderTimes();
  const toggle = document.getElementById("tz-toggle");
  if (toggle) toggle.addEventListener("click", () => {
    localStorage.setItem(TZ_KEY, zone() === "utc" ? "local" : "utc");
    renderTimes();
  });
  document.addEventListener("click", (e) => {
    const button = e.target.closest("button[data-action]");
    if (button) { e.preventDefault(); callApi(button); return; }
    const bulkButton = e.target.closest("button[data-bulk]");
    if (bulkButton) { e.preventDefault(); bulk(bulkButton.dataset.bulk); return; }
    const logs = e.target.closest("[data-logs]");
    if (logs) { e.preventDefault(); showLogs(document.body.dataset.run, logs.dataset.logs); }
  });
  for (const details of document.querySelectorAll("details[data-occurrences]")) {
    details.addEventListener("toggle", () => { if (details.open) showOccurrences(details); });
  }
  for (const details of document.querySelectorAll("details[data-diff]")) {
    details.addEventListener("toggle", () => { if (details.open) showDiff(details); });
  }
  const search = document.querySelector("#logs input[type=search]");
  if (search) search.addEventListener("input", searchLogs);
  const body = document.body.dataset;
  if (body.run && body.live === "run") liveRun(body.run);
  if (body.live === "runs") liveRuns(body.workflow || null);
  setInterval(() => {
    for (const el of document.querySelectorAll("[data-duration][data-running]")) {
      el.textContent = duration(el.dataset.running, null);
    }
  }, 1000);
});
