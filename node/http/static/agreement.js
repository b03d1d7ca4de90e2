// The agreement page: GET /verdicts/agreement with the token the studies page keeps, shown
// as tables per finding type, per backend version and over time. Plain JavaScript; text
// from the server only ever set as textContent.
"use strict";

const TOKEN_KEY = "trauma-node-token";
const $ = (id) => document.getElementById(id);

function token() { return localStorage.getItem(TOKEN_KEY); }

async function api(path) {
  return fetch(path, { headers: { Authorization: `Bearer ${token()}` } });
}

function pct(x) { return x === null || x === undefined ? "" : `${(100 * x).toFixed(1)} %`; }

function fill(table, rows, columns) {
  const body = $(table).querySelector("tbody");
  body.replaceChildren();
  for (const r of rows) {
    const tr = document.createElement("tr");
    for (const c of columns) {
      const td = document.createElement("td");
      const value = typeof c === "function" ? c(r) : r[c];
      td.textContent = value === null || value === undefined ? "" : String(value);
      if (typeof value === "number" || /%$/.test(td.textContent)) td.className = "num";
      tr.appendChild(td);
    }
    tr.dataset.findingType = r.finding_type || "";
    if (r.backend) tr.dataset.backend = r.backend;
    if (r.bucket) tr.dataset.bucket = r.bucket;
    body.appendChild(tr);
  }
}

const COUNTS = ["judged", "accepted", "rejected", "corrected", (r) => pct(r.agreement),
                (r) => r.mean_abs_volume_difference_ml];

function query() {
  const q = new URLSearchParams({ by: $("agreement-by").value });
  if ($("agreement-since").value) q.set("since", $("agreement-since").value);
  if ($("agreement-until").value) q.set("until", $("agreement-until").value);
  return q;
}

async function show(event) {
  if (event) event.preventDefault();
  $("agreement-error").textContent = "";
  if (!token()) { $("agreement-login").hidden = false; return; }
  const me = await api("/me");
  if (me.status === 401) { $("agreement-login").hidden = false; return; }
  if (me.ok) {
    const who = await me.json();
    $("signed-in").hidden = false;
    $("signed-in").textContent = who.kind === "reader" ? `Signed in as ${who.display_name} (${who.name})` : `Service token (${who.name})`;
  }
  const response = await api(`/verdicts/agreement?${query()}`);
  if (!response.ok) {
    let detail = `HTTP ${response.status}`;
    try { detail = (await response.json()).detail; } catch (e) { /* not JSON */ }
    $("agreement-error").textContent = detail;
    return;
  }
  const data = await response.json();
  const o = data.overall;
  $("agreement-overall").textContent = o.judged
    ? `Overall: ${o.accepted} of ${o.judged} verdicts accepted (${pct(o.agreement)}), ${o.rejected} rejected, ${o.corrected} corrected.`
    : "No verdicts in this period.";
  $("agreement-overall").dataset.judged = String(o.judged);
  fill("agreement-by-type", data.by_finding_type, ["finding_type", ...COUNTS]);
  fill("agreement-by-backend", data.by_backend, ["finding_type", "backend", ...COUNTS]);
  fill("agreement-series", data.series, ["bucket", "finding_type", "backend", ...COUNTS]);
  document.body.dataset.loaded = "true";
}

$("agreement-form").addEventListener("submit", show);
$("agreement-export").addEventListener("click", async (event) => {
  event.preventDefault();
  const q = query();
  q.delete("by");
  const response = await api(`/verdicts/export?${q}`);
  if (!response.ok) { $("agreement-error").textContent = `HTTP ${response.status}`; return; }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = "verdicts.json";
  link.click();
});
show();
