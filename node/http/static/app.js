// trauma-node's page: studies, one study's report and volumes, and its Q&A with the
// answer shown as it streams (Server-Sent Events over a POST, read with fetch).
// Plain JavaScript, no build step. Text from the server is only ever set as
// textContent, never as HTML.
"use strict";

const TOKEN_KEY = "trauma-node-token";
const $ = (id) => document.getElementById(id);
let current = null; // study UID shown

function token() { return localStorage.getItem(TOKEN_KEY); }

function showLogin(message) {
  $("app").hidden = true;
  $("forget-token").hidden = true;
  $("signed-in").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token-input").focus();
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {}, { Authorization: `Bearer ${token()}` });
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    localStorage.removeItem(TOKEN_KEY);
    showLogin("The token was not accepted; enter it again.");
    throw new Error("unauthorised");
  }
  return response;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (e) {
    return `HTTP ${response.status}`;
  }
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  row.appendChild(td);
  return td;
}

function fmt(ml) { return typeof ml === "number" ? ml.toFixed(1) : ""; }

async function loadStudies() {
  const response = await api("/studies?summary=true");
  if (!response.ok) { $("studies-empty").hidden = false; $("studies-empty").textContent = await errorText(response); return; }
  const studies = await response.json();
  const total = Number(response.headers.get("X-Total-Count") || studies.length);
  const body = $("studies").querySelector("tbody");
  body.replaceChildren();
  $("studies-empty").hidden = studies.length > 0;
  // The API gives the newest studies a page at a time; say when there are more.
  $("studies-count").hidden = total <= studies.length;
  $("studies-count").textContent = `The newest ${studies.length} of ${total} studies.`;
  for (const s of studies) {
    const row = document.createElement("tr");
    row.dataset.studyUid = s.study_uid;
    if (s.study_uid === current) row.classList.add("selected");
    cell(row, s.study_uid);
    cell(row, s.received_at);
    cell(row, s.state);
    cell(row, s.findings ? s.findings.risk_tier : "");
    cell(row, s.findings && s.findings.volumes_ml ? fmt(s.findings.volumes_ml.hemorrhage) : "");
    cell(row, s.questions);
    row.addEventListener("click", () => openStudy(s.study_uid));
    body.appendChild(row);
  }
}

function addMessage(role, text, meta) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  const label = document.createElement("span");
  label.className = "meta";
  label.textContent = meta;
  const content = document.createElement("span");
  content.className = "text";
  content.textContent = text;
  div.append(label, content);
  $("conversation").appendChild(div);
  return div;
}

async function openStudy(uid) {
  current = uid;
  for (const row of $("studies").querySelectorAll("tbody tr")) {
    row.classList.toggle("selected", row.dataset.studyUid === uid);
  }
  $("study").hidden = false;
  $("study-uid").textContent = uid;
  $("ask-error").textContent = "";
  const enc = encodeURIComponent(uid);
  const [detailR, reportR, findingsR, convR] = await Promise.all([
    api(`/studies/${enc}`), api(`/studies/${enc}/report`), api(`/studies/${enc}/findings`),
    api(`/studies/${enc}/conversation`)]);
  const detail = detailR.ok ? await detailR.json() : null;
  $("study-state").textContent = detail ? detail.state : "";
  $("study-note").textContent = reportR.ok ? "" : await errorText(reportR);
  $("report").textContent = reportR.ok ? (await reportR.json()).report : "";

  const volumes = $("volumes").querySelector("tbody");
  const organs = $("organs").querySelector("tbody");
  volumes.replaceChildren();
  organs.replaceChildren();
  if (findingsR.ok) {
    const f = (await findingsR.json()).findings;
    const rows = [["Hemorrhage (all blood)", f.volumes_ml.hemorrhage],
                  ["Active extravasation", f.volumes_ml.active_extravasation]];
    for (const [region, ml] of Object.entries(f.volumes_by_region_ml || {})) rows.push([`  ${region.replace(/_/g, " ")}`, ml]);
    for (const [name, ml] of rows) { const r = document.createElement("tr"); cell(r, name); cell(r, `${fmt(ml)} mL`); volumes.appendChild(r); }
    const tier = document.createElement("tr"); cell(tier, "Risk tier"); cell(tier, f.risk_tier); volumes.appendChild(tier);
    for (const o of Object.values(f.organs || {})) {
      const r = document.createElement("tr");
      cell(r, o.organ.replace(/_/g, " "));
      cell(r, o.located ? fmt(o.adjacent_blood_ml) : "not located");
      cell(r, o.located ? fmt(o.intraparenchymal_blood_ml) : "");
      cell(r, o.blush_inside ? "within" : (o.blush_outside_adjacent ? "beside" : ""));
      cell(r, o.aast_grade === null ? "" : `≥ ${o.aast_grade}`);
      organs.appendChild(r);
    }
  }
  const deliveries = $("deliveries").querySelector("tbody");
  deliveries.replaceChildren();
  for (const d of (detail && detail.deliveries) || []) {
    const r = document.createElement("tr");
    cell(r, d.kind); cell(r, d.destination); cell(r, d.state); cell(r, d.attempts);
    deliveries.appendChild(r);
  }
  if (!deliveries.children.length) {
    const r = document.createElement("tr");
    cell(r, "none yet").colSpan = 4;
    deliveries.appendChild(r);
  }
  loadVerdicts(uid); // verdicts.js: each finding's verdicts and the reader's controls
  $("conversation").replaceChildren();
  if (convR.ok) {
    for (const m of (await convR.json()).messages) {
      addMessage(m.role, m.text, m.role === "question" ? `Question ${m.id}` : `Answer ${m.id} (${m.answerer}, ${m.state})`);
    }
  }
}

// Server-Sent Events from a fetch body: calls onEvent(type, data) per event.
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let type = "message";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let match;
    // A complete line ends in CRLF, LF or CR (a CR at the very end may be half a CRLF).
    while ((match = /\r\n|\n|\r(?!$)/.exec(buffer)) !== null) {
      const line = buffer.slice(0, match.index);
      buffer = buffer.slice(match.index + match[0].length);
      if (line === "") {
        if (data.length) onEvent(type, data.join("\n"));
        type = "message";
        data = [];
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "data") data.push(val);
        else if (field === "event") type = val;
      }
    }
  }
}

async function ask(event) {
  event.preventDefault();
  const uid = current;
  const question = $("question").value.trim();
  if (!uid || !question) return;
  $("ask-error").textContent = "";
  $("ask").disabled = true;
  const body = { question };
  if ($("hemodynamic").value) body.hemodynamic_status = $("hemodynamic").value;
  try {
    const response = await api(`/studies/${encodeURIComponent(uid)}/questions`, {
      method: "POST", headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(body) });
    if (!response.ok) { $("ask-error").textContent = await errorText(response); return; }
    $("question").value = "";
    const q = addMessage("question", question, "Question");
    const a = addMessage("answer", "", "Answer (streaming...)");
    a.classList.add("streaming");
    a.dataset.chunks = "0";
    const text = a.querySelector(".text");
    await readEvents(response, (type, data) => {
      if (type === "start") {
        q.querySelector(".meta").textContent = `Question ${JSON.parse(data).question_id}`;
      } else if (type === "token") {
        text.textContent += data;
        a.dataset.chunks = String(Number(a.dataset.chunks) + 1);
      } else if (type === "done" || type === "error") {
        const info = JSON.parse(data);
        a.classList.remove("streaming");
        a.dataset.messageId = String(info.message_id);
        a.dataset.state = type === "done" ? info.state : "error";
        a.querySelector(".meta").textContent = `Answer ${info.message_id} (${info.answerer}, ${info.state})`;
        if (type === "error") $("ask-error").textContent = info.error;
      }
    });
    loadStudies();
  } catch (e) {
    if (e.message !== "unauthorised") $("ask-error").textContent = String(e);
  } finally {
    $("ask").disabled = false;
  }
}

async function start() {
  if (!token()) { showLogin(""); return; }
  $("login").hidden = true;
  $("app").hidden = false;
  $("forget-token").hidden = false;
  try { await showWho(); await loadStudies(); } catch (e) { /* 401 handled in api() */ }
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
  $("token-input").value = "";
  start();
});
$("forget-token").addEventListener("click", () => { localStorage.removeItem(TOKEN_KEY); showLogin(""); });
$("refresh").addEventListener("click", () => loadStudies());
$("ask-form").addEventListener("submit", ask);
start();
