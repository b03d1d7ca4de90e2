// The radiologist's verdict on the study page: who is signed in, and per finding of the
// study's latest analysis the verdicts given so far (who, when) and the signed-in
// reader's controls: Accept, Reject, Correct (a corrected volume in mL and/or a note).
// Loaded before app.js, whose helpers ($, api, cell, errorText, fmt) it uses when called.
// Text from the server is only ever set as textContent.
"use strict";

let whoami = null; // {name, kind, display_name, role} of the token in use

async function showWho() {
  const response = await api("/me");
  whoami = response.ok ? await response.json() : null;
  const label = $("signed-in");
  label.hidden = !whoami;
  if (!whoami) return;
  label.textContent = whoami.kind === "reader"
    ? `Signed in as ${whoami.display_name} (${whoami.name}, ${whoami.role})`
    : `Service token (${whoami.name}): read only`;
  label.dataset.account = whoami.kind === "reader" ? whoami.name : "";
}

function verdictText(v) {
  let text = `${v.verdict}`;
  if (v.corrected_volume_ml !== null && v.corrected_volume_ml !== undefined) text += ` to ${fmt(v.corrected_volume_ml)} mL`;
  text += ` by ${v.reader_display_name} (${v.reader}) at ${v.created_at}`;
  if (v.note) text += ` — ${v.note}`;
  return text;
}

async function saveVerdict(uid, jobId, finding, verdict, row) {
  $("verdict-error").textContent = "";
  const body = { finding: finding.key, verdict, job_id: jobId };
  if (verdict === "corrected") {
    const ml = row.querySelector(".corrected-volume").value.trim();
    if (ml !== "") body.corrected_volume_ml = Number(ml);
  }
  const note = row.querySelector(".verdict-note").value.trim();
  if (note) body.note = note;
  try {
    const response = await api(`/studies/${encodeURIComponent(uid)}/verdicts`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    if (!response.ok) { $("verdict-error").textContent = await errorText(response); return; }
  } catch (e) {
    if (e.message !== "unauthorised") $("verdict-error").textContent = String(e);
    return;
  }
  if (uid === current) await loadVerdicts(uid);
}

async function loadVerdicts(uid) {
  const enc = encodeURIComponent(uid);
  $("verdicts-json").href = `/studies/${enc}/verdicts.json`;
  $("verdicts-dcm").href = `/studies/${enc}/verdicts.dcm`;
  for (const id of ["verdicts-json", "verdicts-dcm"]) {
    // Downloads need the token too: fetched, then handed to the browser as a file.
    $(id).onclick = async (event) => {
      event.preventDefault();
      const response = await api($(id).getAttribute("href"));
      if (!response.ok) { $("verdict-error").textContent = await errorText(response); return; }
      const link = document.createElement("a");
      link.href = URL.createObjectURL(await response.blob());
      link.download = $(id).getAttribute("href").split("/").pop().replace("verdicts", `verdicts-${uid}`);
      link.click();
    };
  }
  const body = $("verdicts").querySelector("tbody");
  const response = await api(`/studies/${enc}/verdicts`);
  if (uid !== current) return;
  body.replaceChildren();
  $("verdict-error").textContent = "";
  if (!response.ok) { $("verdict-note").textContent = await errorText(response); return; }
  const view = await response.json();
  const reader = whoami && whoami.kind === "reader";
  $("verdict-note").textContent = !view.findings.length ? "Nothing to judge until the study is analysed."
    : reader ? `Judging analysis ${view.job_id} (series version ${view.series_version}). A new verdict replaces your earlier one; all are kept.`
    : "Verdicts need your own reader account: sign out and sign in with your reader token.";
  for (const f of view.findings) {
    const row = document.createElement("tr");
    row.dataset.finding = f.key;
    cell(row, f.label);
    cell(row, f.ai_value).title = `${f.backend} ${f.backend_version}`;
    const shown = cell(row, "");
    shown.className = "verdict-shown";
    for (const v of f.verdicts) {
      const line = document.createElement("div");
      line.className = `verdict ${v.verdict}`;
      line.textContent = verdictText(v);
      shown.appendChild(line);
    }
    const controls = cell(row, "");
    if (reader) {
      const mine = f.mine;
      for (const [label, verdict] of [["Accept", "accepted"], ["Reject", "rejected"], ["Correct", "corrected"]]) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = `verdict-${verdict}`;
        button.textContent = label;
        if (mine && mine.verdict === verdict) button.classList.add("chosen");
        button.addEventListener("click", () => saveVerdict(uid, view.job_id, f, verdict, row));
        controls.appendChild(button);
      }
      const volume = document.createElement("input");
      volume.type = "number"; volume.min = "0"; volume.step = "0.1";
      volume.className = "corrected-volume";
      volume.placeholder = "mL";
      volume.title = "corrected volume in mL (with Correct)";
      volume.hidden = f.ai_volume_ml === null;
      const note = document.createElement("input");
      note.type = "text"; note.maxLength = 2000;
      note.className = "verdict-note";
      note.placeholder = "note";
      controls.append(volume, note);
    }
    body.appendChild(row);
  }
}
