// Drover console: renders the volume state the server streams (SSE) and
// sends actions to the JSON API. No framework, nothing fetched from
// elsewhere. Data is always inserted as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let state = null;
const rendered = {}; // part -> JSON last rendered, so unchanged parts keep focus

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) e.append(c);
  return e;
}

// part re-renders one part of the page when its data changed, keeping
// the keyboard focus on the element with the same id.
function part(name, data, render) {
  const json = JSON.stringify(data);
  if (rendered[name] === json) return;
  rendered[name] = json;
  const focused = document.activeElement && document.activeElement.id;
  render(data);
  if (focused && document.activeElement && document.activeElement.id !== focused) {
    const again = $(focused);
    if (again) again.focus();
  }
}

function say(text, isError) {
  const m = $("message");
  m.textContent = text;
  m.className = isError ? "error" : "";
}

async function api(method, path, body) {
  const opt = { method, headers: {} };
  if (body !== undefined) {
    opt.headers["Content-Type"] = "application/json";
    opt.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opt);
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(data.error || resp.status + " " + resp.statusText);
  return data;
}

async function act(what, method, path, body) {
  say(what + "…");
  try {
    await api(method, path, body);
    say(what + ": done.");
    return true;
  } catch (e) {
    say(what + " failed: " + e.message, true);
    return false;
  }
}

function confirmThen(text, fn) {
  const d = $("confirm");
  $("confirm-text").textContent = text;
  d.returnValue = "";
  d.addEventListener("close", function once() {
    d.removeEventListener("close", once);
    if (d.returnValue === "ok") fn();
  });
  d.showModal();
  $("confirm-cancel").focus();
}

function renderHeader(s) {
  $("volume-name").textContent = s.volume;
  document.title = "Drover: " + s.volume;
  const ph = $("phase");
  ph.textContent = s.phase;
  ph.className = "badge " + s.phase;
  const rb = $("robustness");
  rb.textContent = s.robustness;
  rb.className = "badge " + s.robustness;
  const why = $("why");
  why.hidden = !s.why;
  why.textContent = s.why || "";
}

function renderVolume(s) {
  $("size").textContent = bytes(s.sizeBytes);
  $("actual").textContent = bytes(s.actualBytes);
  const m = $("actual-meter");
  m.max = Math.max(s.sizeBytes, 1);
  m.value = Math.min(s.actualBytes, m.max);
  $("epoch").textContent = String(s.epoch);
  $("attached").textContent = s.attached ? "attached (hosts may do IO)" : "detached (IO is refused)";
  $("attach-btn").disabled = s.attached;
  $("detach-btn").disabled = !s.attached;
  const ul = $("endpoints");
  ul.replaceChildren(...(s.frontends || []).map((f) =>
    el("li", { text: f.kind + ": " + f.address + " (" + f.connections + " connected)" })));
  if (!ul.children.length) ul.append(el("li", { text: "none" }));
  const io = s.io || {};
  const r = io.read || {}, w = io.write || {};
  $("io").textContent = (r.ops || 0) + " reads (" + bytes(r.bytes || 0) + "), " + (w.ops || 0) +
    " writes (" + bytes(w.bytes || 0) + "), " + ((r.errors || 0) + (w.errors || 0)) + " errors";
}

function renderReplicas(s) {
  const rows = (s.replicas || []).map((r) => el("tr", { id: "replica-" + r.id },
    el("th", { scope: "row", text: r.id }),
    el("td", { text: r.address }),
    el("td", {}, el("span", { class: "badge " + r.mode, text: r.mode })),
    el("td", { text: r.connected ? "connected" : "not connected" }),
    el("td", { text: r.why || "" }),
    el("td", {}, el("button", { type: "button", id: "remove-" + r.id, class: "danger",
      "aria-label": "Remove replica " + r.id,
      onclick: () => confirmThen("Take replica " + r.id + " out of the volume? Its data stays on its disk; adding it back rebuilds it.",
        () => act("Remove replica " + r.id, "DELETE", "/api/replicas/" + encodeURIComponent(r.id))),
      text: "Remove" }))));
  $("replica-rows").replaceChildren(...rows);
  const sp = [];
  if ((s.spares || []).length) sp.push("Spares: " + s.spares.join(", "));
  if ((s.removed || []).length) sp.push("Removed: " + s.removed.join(", "));
  $("spares").textContent = sp.join(". ");
}

function renderRebuild(s) {
  const box = $("rebuild");
  const rb = s.rebuild;
  box.hidden = !rb;
  if (rb) {
    const p = $("rebuild-progress");
    p.max = Math.max(rb.totalBytes, 1);
    p.value = rb.doneBytes;
    p.setAttribute("aria-valuetext", Math.floor(100 * rb.doneBytes / p.max) + "%");
    $("rebuild-label").textContent = "Rebuild of " + rb.target + " from " + rb.source + " (" + rb.stage + ")";
    const copyRate = rb.elapsedSeconds > 0 ? rb.copiedBytes / rb.elapsedSeconds : 0;
    let t = bytes(rb.doneBytes) + " of " + bytes(rb.totalBytes) + " compared, " + bytes(rb.copiedBytes) + " copied (" +
      (copyRate / 1048576).toFixed(1) + " MiB/s)";
    if (rb.limitBytesPerSec) t += " (limit " + (rb.limitBytesPerSec / 1048576).toFixed(1) + " MiB/s)";
    if (rb.etaSeconds) t += ", about " + Math.ceil(rb.etaSeconds) + " s left";
    $("rebuild-text").textContent = t;
  }
  const lr = s.lastRebuild;
  $("last-rebuild").textContent = lr ? "Last rebuild: " + lr.target + " from " + lr.source + ", " + lr.stage + ": " +
    bytes(lr.totalBytes) + " compared, " + bytes(lr.copiedBytes) + " copied in " + lr.elapsedSeconds.toFixed(1) + " s" : "";
}

function renderSnapshots(s) {
  const snaps = s.snapshots || [];
  const items = snaps.map((sn, i) => {
    const label = sn.head ? "volume head (live data)" : sn.name;
    const li = el("li", { class: sn.head ? "head" : "", id: "snapshot-" + (sn.head ? "head" : sn.name) });
    li.style.setProperty("--depth", Math.min(i, 12) * 1.2 + "rem"); // CSSOM: the CSP allows no style attributes
    li.append(el("span", { class: "name", text: (i ? "└ " : "") + label }));
    li.append(el("span", { class: "meta", text: bytes(sn.sizeBytes) + " held" }));
    if (sn.reclaimBytes) li.append(el("span", { class: "meta", text: bytes(sn.reclaimBytes) + " reclaimable" }));
    if (sn.createdMs) li.append(el("span", { class: "meta", text: new Date(sn.createdMs).toLocaleString() }));
    if (sn.labels) li.append(el("span", { class: "meta", text: Object.entries(sn.labels).map(([k, v]) => k + "=" + v).join(" ") }));
    if (sn.name.startsWith("rebuild-")) {
      li.append(el("span", { class: "meta", text: "(taken by a rebuild; merged away once every replica is RW)" }));
    } else if (!sn.head && !sn.name.startsWith("backing-")) {
      li.append(el("button", { type: "button", id: "revert-" + sn.name, "aria-label": "Revert the volume to snapshot " + sn.name,
        onclick: () => confirmThen("Revert the volume to snapshot " + sn.name + "? Everything written since is lost. The volume is " +
          "detached for the revert: unmount it on the host first.",
          () => act("Revert to " + sn.name, "POST", "/api/snapshots/" + encodeURIComponent(sn.name) + "/revert")),
        text: "Revert" }));
      li.append(el("button", { type: "button", id: "delete-" + sn.name, class: "danger", "aria-label": "Delete snapshot " + sn.name,
        onclick: () => confirmThen("Delete snapshot " + sn.name + "? Its blocks merge into the next layer; the volume's data does not change.",
          () => act("Delete snapshot " + sn.name, "DELETE", "/api/snapshots/" + encodeURIComponent(sn.name))),
        text: "Delete" }));
    }
    return li;
  });
  $("snapshot-tree").replaceChildren(...items);
  if (!items.length) $("snapshot-tree").append(el("li", { text: s.phase === "serving" ? "no layers" : "not serving" }));
}

const counterNames = { corruptBlocks: "Corrupt blocks read", repairedBlocks: "Blocks repaired", replicaFailures: "Replica failures",
  staleAtOpen: "Stale replicas at open", rebuildsDone: "Rebuilds done", rebuildsFailed: "Rebuilds failed",
  heartbeatFailures: "Heartbeat failures", replacements: "Replaced by spares" };

function renderEvents(s) {
  const c = s.counters || {};
  $("counters").replaceChildren(...Object.keys(counterNames).flatMap((k) =>
    [el("dt", { text: counterNames[k] }), el("dd", { id: "counter-" + k, text: String(c[k] || 0) })]));
  const rows = (s.events || []).map((e) => el("tr", { class: e.warn ? "warn" : "" },
    el("td", { text: new Date(e.timeMs).toLocaleTimeString() }),
    el("td", { text: e.kind }),
    el("td", { text: e.replica || "" }),
    el("td", { text: e.block === undefined ? "" : String(e.block) }),
    el("td", { text: e.why || "" })));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "5", text: "no events since the engine started" })));
  $("event-rows").replaceChildren(...rows);
}

function renderBackups(b) {
  $("backup-controls").hidden = !b || !!b.error;
  if (b && b.error) {
    $("backup-target").textContent = "Backups are off: " + b.error;
    return;
  }
  if (!b) {
    $("backup-target").textContent = "No backup target: start drover dev with --backup-target DIR (or s3://…) to back up and restore here.";
    return;
  }
  $("backup-target").textContent = "Target: " + b.target;
  const job = b.running;
  $("backup-btn").disabled = !!job;
  $("backup-job").hidden = !job;
  if (job) {
    const p = $("backup-progress");
    p.max = Math.max(job.chunksTotal, 1);
    p.value = job.chunksDone;
    $("backup-label").textContent = (job.kind === "backup" ? "Backing up" : "Restoring " + job.name) + ": " +
      job.chunksDone + " of " + (job.chunksTotal || "?") + " chunks, " + bytes(job.bytes);
  }
  const last = (b.recent || [])[0];
  $("backup-last").textContent = last ? "Last " + last.kind + (last.name ? " " + last.name : "") + ": " +
    (last.error ? "failed: " + last.error : "done at " + new Date(last.ended).toLocaleString()) : "";
}

let backupsListed = null;

async function listBackups(b) {
  if (b && b.error) return;
  const key = JSON.stringify(b && (b.recent || []).map((j) => j.ended));
  if (!b || key === backupsListed) return;
  backupsListed = key;
  let list;
  try {
    list = await api("GET", "/api/backups");
  } catch (e) {
    say("Cannot list backups: " + e.message, true);
    return;
  }
  const rows = list.map((bk) => el("tr", { id: "backup-" + bk.id },
    el("th", { scope: "row", text: bk.name }),
    el("td", { text: new Date(bk.createdMs).toLocaleString() }),
    el("td", { text: bytes(bk.sizeBytes) }),
    el("td", { text: String(bk.chunks) }),
    el("td", { text: bk.parent ? "incremental" : "full" }),
    el("td", {}, el("button", { type: "button", id: "restore-" + bk.id, "aria-label": "Restore backup " + bk.name,
      onclick: () => confirmThen("Restore backup " + bk.name + " over the volume's content? Everything written since is " +
        "overwritten. Hosts must not use the volume meanwhile: unmount it first.",
        () => act("Start restoring " + bk.name, "POST", "/api/backups/" + encodeURIComponent(bk.id) + "/restore")),
      text: "Restore" }))));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "6", text: "no backups of this volume yet" })));
  $("backup-rows").replaceChildren(...rows);
}

function secs(v) {
  return v < 0 ? "never" : v + " s";
}

function renderSettings(c) {
  const rows = [
    ["Fewest RW replicas for writes", String(c.minHealthy)],
    ["Replica timeout (then ERR)", secs(c.replicaTimeoutSeconds)],
    ["Rebuild an ERR replica after", secs(c.rebuildAfterSeconds)],
    ["Replace a failed replica by a spare after", secs(c.replaceAfterSeconds)],
    ["Rebuild rate limit", c.rebuildRateBytesPerSec ? bytes(c.rebuildRateBytesPerSec) + "/s" : "none"],
    ["Backing image", c.backingImage || "none"],
  ];
  $("settings-list").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
}

function render(s) {
  state = s;
  part("header", [s.volume, s.phase, s.robustness, s.why], () => renderHeader(s));
  part("volume", [s.sizeBytes, s.actualBytes, s.epoch, s.attached, s.frontends, s.io], () => renderVolume(s));
  part("replicas", [s.replicas, s.spares, s.removed], () => renderReplicas(s));
  part("rebuild", [s.rebuild, s.lastRebuild], () => renderRebuild(s));
  part("snapshots", [s.snapshots, s.phase], () => renderSnapshots(s));
  part("events", [s.events, s.counters], () => renderEvents(s));
  part("backups", s.backups || null, () => renderBackups(s.backups));
  part("settings", s.settings, () => renderSettings(s.settings));
  listBackups(s.backups);
}

function connect() {
  const live = $("live");
  const es = new EventSource("/api/stream");
  es.addEventListener("state", (ev) => {
    live.textContent = "live";
    live.className = "live on";
    render(JSON.parse(ev.data));
  });
  es.addEventListener("error", (ev) => {
    live.textContent = "reconnecting";
    live.className = "live";
    if (ev.data) say("Cannot read the volume: " + JSON.parse(ev.data).error, true);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("create-snapshot").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("snapshot-name").value.trim();
    if (await act("Create snapshot " + name, "POST", "/api/snapshots", { name })) $("snapshot-name").value = "";
  });
  $("add-replica").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const address = $("replica-address").value.trim();
    const rate = Math.round(parseFloat($("replica-rate").value || "0") * 1048576);
    const body = { address, id: $("replica-id").value.trim(), rateBytesPerSec: rate > 0 ? rate : 0 };
    if (await act("Add replica " + (body.id || address), "POST", "/api/replicas", body)) {
      $("replica-address").value = "";
      $("replica-id").value = "";
    }
  });
  $("attach-btn").addEventListener("click", () => act("Attach", "POST", "/api/attach"));
  $("backup-btn").addEventListener("click", () => act("Start a backup", "POST", "/api/backups"));
  $("detach-btn").addEventListener("click", () =>
    confirmThen("Detach the volume? Hosts' IO is refused until it is attached again.", () => act("Detach", "POST", "/api/detach")));
  connect();
});
