// phoenix console: the approval queue, one request in full, recent faults and breakers.
// Uses only the public /v1 API with the token the user pastes (sessionStorage, bearer header).
// Live: /v1/events read through fetch (EventSource cannot send an Authorization header).
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "phoenix.token";
const THEME_KEY = "phoenix.theme";
const ROLES = ["reporter", "approver", "admin"];

const state = {
  token: null, // null: not signed in; "": no token (phoenix runs without tokens)
  who: null,
  view: "approvals",
  approvals: [],
  selected: null,
  stream: null,
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Every API error, in words a person at 3 a.m. can act on.
function explain(status, body, text) {
  const said = (body && body.message) || text || "";
  switch (status) {
    case 401: return `phoenix did not accept this token (401): ${said}. Paste a valid token.`;
    case 403: return `Your token's role may not do this (403): ${said}`;
    case 404: return `Not found (404): ${said}`;
    case 409: return `Not possible any more (409): ${said}`;
    case 429: return `Too many requests for this token (429): ${said}. Wait a moment.`;
    case 503: return `phoenix is not ready (503): ${said}`;
    case 507: return `phoenix's disk is full (507): ${said}`;
    default: return `phoenix answered ${status}: ${said}`;
  }
}

async function api(method, path, body) {
  const headers = {};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiError(0, "unreachable", `phoenix cannot be reached: ${error.message}`);
  }
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!response.ok) {
    throw new ApiError(response.status, (json && json.code) || `http_${response.status}`,
      explain(response.status, json, text));
  }
  return json;
}

// ---- small helpers --------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

function notify(message) {
  const notice = $("notice");
  notice.textContent = message;
  notice.hidden = false;
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => { notice.hidden = true; }, 8000);
}

function duration(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  const h = Math.floor(m / 60);
  return `${h} h ${String(m % 60).padStart(2, "0")} min`;
}

function ago(at) {
  return `${duration(Date.now() - Date.parse(at))} ago`;
}

function countdown(at) {
  const left = Date.parse(at) - Date.now();
  return left <= 0 ? "expired" : `expires in ${duration(left)}`;
}

function roleAtLeast(role) {
  return state.who && ROLES.indexOf(state.who.role) >= ROLES.indexOf(role);
}

function short(hash) {
  return hash ? hash.slice(0, 12) : "";
}

// An action of a plan, as a sentence.
function describe(action) {
  switch (action.kind) {
    case "exec": return `Run the policy's command “${action.command}”`;
    case "restart": return `Restart the supervised program “${action.program}”`;
    case "signal": return `Send ${action.signal} to the supervised program “${action.program}”`;
    case "write_file": return `Replace the file ${action.path} (${action.content.length} bytes; the old content is backed up)`;
    case "http": return `HTTP ${action.method || "POST"} ${action.url}${action.body ? ` with a ${action.body.length}-byte body` : ""}`;
    default: return `${action.kind}: ${JSON.stringify(action)}`;
  }
}

// ---- sign-in ----------------------------------------------------------------------------------

async function signIn(token) {
  state.token = token;
  try {
    state.who = await api("GET", "/v1/whoami");
  } catch (error) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn();
    showError(error.message);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  clearError();
  $("signin").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  $("who").textContent = state.who.authenticated
    ? `${state.who.name} · ${state.who.role}`
    : "no tokens configured (loopback only) · admin";
  await refreshAll();
  startStream();
}

function showSignIn() {
  $("signin").hidden = false;
  $("app").hidden = true;
  $("signout").hidden = true;
  $("who").textContent = "";
  $("token").focus();
}

function signOut() {
  if (state.stream) state.stream.abort();
  state.stream = null;
  state.token = null;
  state.who = null;
  sessionStorage.removeItem(TOKEN_KEY);
  setLive("not connected", "");
  showSignIn();
}

// ---- views ------------------------------------------------------------------------------------

function showView(view) {
  state.view = view;
  for (const button of document.querySelectorAll(".tabs button")) {
    if (button.dataset.view === view) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  for (const name of ["approvals", "faults", "breakers"]) {
    $(`view-${name}`).hidden = name !== view;
  }
  refreshView();
}

async function refreshAll() {
  await Promise.all([refreshApprovals(), refreshView()]);
}

async function refreshView() {
  if (state.view === "faults") await refreshFaults();
  if (state.view === "breakers") await refreshBreakers();
}

async function refreshApprovals() {
  const note = $("queue-note");
  if (!roleAtLeast("approver")) {
    state.approvals = [];
    renderQueue();
    note.textContent = `This token has the ${state.who.role} role: it may report and read faults, ` +
      "but approval requests need an approver or admin token. You cannot approve or reject here.";
    $("detail").replaceChildren(el("p", { class: "muted" }, "Approving needs an approver or admin token."));
    return;
  }
  try {
    const body = await api("GET", "/v1/approvals");
    state.approvals = body.approvals;
  } catch (error) {
    showError(error.message);
    return;
  }
  note.textContent = state.approvals.length
    ? ""
    : "Nothing waits for a decision. New requests appear here as they arrive.";
  renderQueue();
  if (state.selected && !state.approvals.some((a) => a.fault_id === state.selected)) {
    // Decided elsewhere (another person, or expired): keep the detail but say so.
    const detail = $("detail");
    if (!detail.querySelector(".outcome")) {
      detail.append(el("p", { class: "outcome bad", role: "status" },
        "This request is no longer waiting: it was decided (here or elsewhere) or has expired."));
    }
  }
}

function renderQueue() {
  $("count").textContent = String(state.approvals.length);
  const list = $("queue");
  const focused = document.activeElement && document.activeElement.dataset.fault;
  list.replaceChildren(...state.approvals.map((approval) => {
    const button = el("button", {
      type: "button",
      "data-fault": approval.fault_id,
      "aria-pressed": String(approval.fault_id === state.selected),
      onclick: () => select(approval.fault_id),
    },
    el("span", { class: "title" }, `${approval.app} · ${approval.kind}`),
    el("span", { class: "meta" }, `${approval.patch.name} ${approval.patch.version} · confidence ${approval.patch.confidence}`),
    el("span", { class: "meta" },
      el("span", { "data-since": approval.requested_at }, `requested ${ago(approval.requested_at)}`),
      " · ",
      el("span", { "data-until": approval.expires_at }, countdown(approval.expires_at))));
    return el("li", {}, button);
  }));
  if (focused) {
    const again = list.querySelector(`[data-fault="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
}

function tick() {
  for (const node of document.querySelectorAll("[data-since]")) {
    node.textContent = `requested ${ago(node.dataset.since)}`;
  }
  for (const node of document.querySelectorAll("[data-until]")) {
    node.textContent = countdown(node.dataset.until);
    node.classList.toggle("soon", Date.parse(node.dataset.until) - Date.now() < 5 * 60 * 1000);
  }
}

async function select(faultId) {
  state.selected = faultId;
  renderQueue();
  const detail = $("detail");
  detail.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  let body;
  try {
    body = await api("GET", `/v1/approvals/${encodeURIComponent(faultId)}`);
  } catch (error) {
    detail.replaceChildren(el("p", { class: "outcome bad", role: "alert" }, error.message));
    return;
  }
  renderDetail(body);
}

function renderDetail({ approval, fault, shadow }) {
  const patch = approval.patch;
  const tests = patch.tests.length
    ? el("ul", { class: "history" }, patch.tests.map((t) => el("li", {},
      el("span", { class: `badge ${t.passed ? "ok" : "bad"}` }, t.passed ? "passed" : "failed"), " ", t.name,
      t.detail ? ` — ${t.detail}` : "")))
    : el("p", { class: "muted" }, "This patch declares no contract tests.");
  const plan = approval.plan.length
    ? el("ol", { class: "plan" }, approval.plan.map((a) => el("li", {}, describe(a))))
    : el("p", { class: "muted" }, "The plan is empty: nothing would be changed.");
  const decisions = approval.decisions.length
    ? el("ul", { class: "history" }, approval.decisions.map((d) => el("li", {},
      `${d.approve ? "approved" : "rejected"} by ${d.by}${d.comment ? `: “${d.comment}”` : ""}`)))
    : null;
  const labels = Object.entries(fault.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");

  const detail = $("detail");
  const parts = [
    el("h2", {}, `${approval.app} · ${approval.kind}`),
    approval.message ? el("p", {}, approval.message) : null,
    el("p", {}, el("strong", {}, "Why a person decides: "), approval.reason),
    el("dl", { class: "facts" },
      el("dt", {}, "Fault"), el("dd", { class: "mono" }, approval.fault_id),
      el("dt", {}, "State"), el("dd", {}, fault.state),
      el("dt", {}, "Severity"), el("dd", {}, fault.severity),
      el("dt", {}, "Occurrences"), el("dd", {}, String(fault.occurrences)),
      el("dt", {}, "First seen"), el("dd", {}, `${fault.first_seen} (${ago(fault.first_seen)})`),
      labels ? el("dt", {}, "Labels") : null, labels ? el("dd", { class: "mono" }, labels) : null,
      el("dt", {}, "Requested"), el("dd", {}, el("span", { "data-since": approval.requested_at }, `requested ${ago(approval.requested_at)}`)),
      el("dt", {}, "Expires"), el("dd", {}, el("span", { "data-until": approval.expires_at }, countdown(approval.expires_at))),
      el("dt", {}, "Approvals needed"), el("dd", {}, `${approval.decisions.filter((d) => d.approve).length} of ${approval.quorum}`)),
    el("h3", {}, "The patch"),
    el("dl", { class: "facts" },
      el("dt", {}, "Name"), el("dd", {}, `${patch.name} ${patch.version}`),
      el("dt", {}, "Hash"), el("dd", { class: "mono", title: patch.hash }, short(patch.hash)),
      el("dt", {}, "Confidence"), el("dd", {}, String(patch.confidence)),
      el("dt", {}, "Author"), el("dd", {}, patch.claimed_author === undefined
        ? (patch.author || "(not given)")
        : `uploaded by ${patch.author} (its manifest claims: ${patch.claimed_author || "nobody"})`),
      el("dt", {}, "Policy"), el("dd", {}, approval.policy)),
    el("h3", {}, "Contract tests"), tests,
    el("h3", {}, "What phoenix wants to do (dry run)"), plan,
    el("h3", {}, "Compared with another version"), renderShadow(shadow, approval.plan),
    decisions ? el("h3", {}, "Decisions so far") : null, decisions,
    el("h3", {}, "History"),
    el("ol", { class: "history" }, (fault.history || []).map((h) => el("li", {}, `${h.at}: ${h.detail}`))),
    renderDecide(approval),
  ];
  detail.replaceChildren(...parts.filter((part) => part !== null));
}

function renderShadow(shadow, plan) {
  if (!shadow) return el("p", { class: "muted" }, "There is no other usable version of this patch to compare with.");
  const against = `the ${shadow.against.role} version ${shadow.against.version} (${short(shadow.against.hash)})`;
  if (shadow.error) return el("p", {}, el("span", { class: "badge bad" }, "differs"), ` ${against} fails on this fault: ${shadow.error}`);
  if (shadow.same) return el("p", {}, el("span", { class: "badge ok" }, "same plan"), ` ${against} plans exactly the same actions.`);
  return el("div", {},
    el("p", {}, el("span", { class: "badge warn" }, "differs"), ` ${against} would plan instead:`),
    shadow.plan.length
      ? el("ol", { class: "plan" }, shadow.plan.map((a) => el("li", {}, describe(a))))
      : el("p", { class: "muted" }, "nothing (an empty plan)."),
    el("p", { class: "muted" }, `This request: ${plan.length} action(s); that version: ${shadow.plan.length}.`));
}

function renderDecide(approval) {
  if (!roleAtLeast("approver")) {
    return el("p", { class: "outcome bad" }, `Your token has the ${state.who.role} role: approving needs an approver or admin token.`);
  }
  const by = el("input", { id: "decide-by", value: state.who.authenticated ? state.who.name : "", autocomplete: "name" });
  const comment = el("textarea", { id: "decide-comment", placeholder: "Why (kept in the fault's history and the audit log)" });
  const outcome = el("div", { id: "decide-outcome", role: "status", "aria-live": "polite" });
  const decide = async (approve, button) => {
    if (!by.value.trim()) {
      outcome.replaceChildren(el("p", { class: "outcome bad" }, "Say who decides: your name is recorded with the decision."));
      by.focus();
      return;
    }
    for (const b of button.parentElement.querySelectorAll("button")) b.disabled = true;
    try {
      await api("POST", `/v1/approvals/${encodeURIComponent(approval.fault_id)}/${approve ? "approve" : "reject"}`,
        { by: by.value.trim(), comment: comment.value });
      outcome.replaceChildren(el("p", { class: "outcome ok" }, approve
        ? "Approved. phoenix applies the plan once the quorum is met; the fault's state follows in Recent faults."
        : "Rejected. Nothing of the plan will run."));
      clearError();
      await refreshApprovals();
    } catch (error) {
      outcome.replaceChildren(el("p", { class: "outcome bad", role: "alert" }, error.message));
      for (const b of button.parentElement.querySelectorAll("button")) b.disabled = false;
    }
  };
  const approveButton = el("button", { type: "button", class: "approve", onclick: (e) => decide(true, e.currentTarget) }, "Approve");
  const rejectButton = el("button", { type: "button", class: "reject", onclick: (e) => decide(false, e.currentTarget) }, "Reject");
  return el("form", { class: "decide", onsubmit: (e) => e.preventDefault() },
    el("label", { for: "decide-by" }, "Your name"), by,
    el("label", { for: "decide-comment" }, "Comment"), comment,
    el("div", { class: "buttons" }, approveButton, rejectButton),
    outcome);
}

async function refreshFaults() {
  let body;
  try {
    body = await api("GET", "/v1/faults?order=newest&limit=50");
  } catch (error) {
    showError(error.message);
    return;
  }
  $("faults").replaceChildren(...body.faults.map((f) => el("tr", {},
    el("td", {}, ago(f.first_seen)),
    el("td", {}, f.app),
    el("td", {}, f.kind),
    el("td", { class: `state-${f.state}` }, f.state),
    el("td", {}, f.reason || ""),
    el("td", { class: "mono" }, f.id))));
}

async function refreshBreakers() {
  let body;
  try {
    body = await api("GET", "/v1/breakers");
  } catch (error) {
    $("breakers-note").textContent = error.status === 403
      ? `Breakers need an approver or admin token; this one has the ${state.who.role} role.`
      : error.message;
    $("breakers").replaceChildren();
    return;
  }
  $("breakers-note").textContent = roleAtLeast("admin")
    ? "Resetting closes a breaker and forgets its recent failures."
    : "Only an admin token may reset a breaker.";
  $("breakers").replaceChildren(...body.breakers.map((b) => {
    const buckets = (b.recent && b.recent.buckets) || [];
    const attempts = buckets.reduce((n, x) => n + x.attempts, 0);
    const failures = buckets.reduce((n, x) => n + x.failures, 0);
    const last = b.changes && b.changes.length ? b.changes[b.changes.length - 1] : null;
    let action = "";
    if (roleAtLeast("admin")) {
      const reason = el("input", { "aria-label": `Why reset ${b.name}`, placeholder: "why" });
      action = el("form", { onsubmit: async (e) => {
        e.preventDefault();
        try {
          await api("POST", `/v1/breakers/${encodeURIComponent(b.name)}/reset`,
            { by: state.who.name, reason: reason.value || "reset from the console" });
          notify(`Breaker ${b.name} reset.`);
          await refreshBreakers();
        } catch (error) {
          showError(error.message);
        }
      } }, reason, " ", el("button", { type: "submit" }, "Reset"));
    }
    return el("tr", {},
      el("td", {}, b.name),
      el("td", {}, b.position),
      el("td", {}, `${attempts} (${failures} failed)`),
      el("td", {}, last ? `${last.at}: ${last.reason} (${last.by})` : "never changed"),
      el("td", {}, action));
  }));
}

// ---- live updates -----------------------------------------------------------------------------

function setLive(text, kind) {
  const pill = $("live");
  pill.textContent = text;
  pill.className = `pill ${kind}`;
}

async function startStream() {
  if (state.stream) state.stream.abort();
  if (!roleAtLeast("approver")) {
    setLive("no live updates for this role", "down");
    return;
  }
  const control = new AbortController();
  state.stream = control;
  let backoff = 500;
  while (!control.signal.aborted) {
    try {
      const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
      const response = await fetch("/v1/events", { headers, signal: control.signal });
      if (!response.ok) {
        const text = await response.text();
        let json = null;
        try { json = JSON.parse(text); } catch { json = null; }
        throw new ApiError(response.status, "events", explain(response.status, json, text));
      }
      setLive("live", "live");
      backoff = 500;
      await refreshAll(); // catch up on anything missed while disconnected
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const chunk = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          onEvent(chunk);
        }
      }
    } catch (error) {
      if (control.signal.aborted) return;
      if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
        setLive("no live updates", "down");
        showError(error.message);
        return;
      }
    }
    setLive("reconnecting…", "down");
    await new Promise((resolve) => setTimeout(resolve, backoff));
    backoff = Math.min(backoff * 2, 10000);
  }
}

function onEvent(chunk) {
  let kind = "message";
  let data = "";
  for (const line of chunk.split("\n")) {
    if (line.startsWith("event:")) kind = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  if (!data) return; // keep-alive comment
  let event = null;
  try { event = JSON.parse(data); } catch { event = null; }
  if (event && event.summary) notify(event.summary);
  if (kind === "lagged") {
    refreshAll();
    return;
  }
  refreshApprovals();
  refreshView();
}

// ---- start ------------------------------------------------------------------------------------

function applyTheme(theme) {
  if (theme === "dark" || theme === "light") document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
  $("theme").textContent = `Theme: ${theme || "system"}`;
}

document.addEventListener("DOMContentLoaded", () => {
  applyTheme(localStorage.getItem(THEME_KEY));
  $("theme").addEventListener("click", () => {
    const order = [null, "dark", "light"];
    const next = order[(order.indexOf(localStorage.getItem(THEME_KEY)) + 1) % order.length];
    if (next) localStorage.setItem(THEME_KEY, next);
    else localStorage.removeItem(THEME_KEY);
    applyTheme(next);
  });
  $("error-close").addEventListener("click", clearError);
  $("signout").addEventListener("click", signOut);
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    if (!token) {
      showError("Paste a token first, or choose “No token” if phoenix runs without tokens.");
      return;
    }
    $("token").value = "";
    signIn(token);
  });
  $("no-token").addEventListener("click", () => signIn(""));
  for (const button of document.querySelectorAll(".tabs button")) {
    button.addEventListener("click", () => showView(button.dataset.view));
  }
  setInterval(tick, 1000);
  // Lists that are not pushed (faults' progress) refresh now and then too.
  setInterval(() => { if (state.who) refreshView(); }, 5000);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved !== null) signIn(saved);
  else showSignIn();
});
