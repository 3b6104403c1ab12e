// The dashboard page: fetch /api/status every few seconds and show it.
// Everything the master sends is put in the page as text (textContent), never as HTML.
"use strict";

const REFRESH_MS = 2000;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  n = Number(n) || 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}

function rate(n) { return bytes(n) + "/s"; }
function perSecond(n) { return (Number(n) || 0).toFixed(n < 10 ? 1 : 0) + "/s"; }

function setText(id, text) { document.getElementById(id).textContent = text; }

function replaceRows(tableId, rows) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...rows);
}

function renderChecks(checks) {
  const list = document.getElementById("checks");
  document.getElementById("no-checks").hidden = checks.length > 0;
  list.replaceChildren(...checks.map((c) => el("li", { "data-severity": c.severity, "data-code": c.code },
    el("span", { class: "code" }, c.code), c.summary,
    c.detail.length ? el("ul", {}, ...c.detail.map((d) => el("li", {}, d))) : null,
    el("p", { class: "advice" }, "What to do: " + c.advice))));
}

function daemonRow(d) {
  const state = el("td", {},
    el("span", { class: d.up ? "state-up" : "state-down" }, d.up ? "up" : "down"), ", ",
    el("span", { class: d.in ? "" : "state-out" }, d.in ? "in" : "out"),
    d.full ? el("span", { class: "state-down" }, ", full") : null,
    d.nearfull && !d.full ? el("span", { class: "state-out" }, ", nearly full") : null);
  let disk = el("td", { class: "muted" }, "–");
  if (d.disk_total) {
    const used = d.disk_used / d.disk_total;
    const bar = el("span", { class: "bar" + (d.full ? " full" : d.nearfull ? " near" : "") }, el("span"));
    bar.firstChild.style.width = Math.min(100, used * 100).toFixed(1) + "%";
    disk = el("td", {}, bar, (used * 100).toFixed(0) + "% of " + bytes(d.disk_total));
  }
  const r = d.rates;
  const io = r ? rate(r.read_bytes) + " rd, " + rate(r.write_bytes) + " wr" : "–";
  return el("tr", { "data-osd": d.id, "data-up": d.up ? "true" : "false", "data-in": d.in ? "true" : "false" },
    el("td", {}, "osd." + d.id), el("td", {}, d.host), el("td", { class: "muted" }, d.addr), state, disk,
    el("td", {}, d.objects === undefined ? "–" : d.objects),
    el("td", {}, d.pgs_primary === undefined ? "–" : d.pgs_primary + " PGs"),
    el("td", { class: "muted" }, io));
}

function poolRow(p) {
  const states = Object.entries(p.pg_states).map(([s, n]) => n + " " + s).join(", ") || "–";
  return el("tr", { "data-pool": p.name },
    el("td", {}, p.name), el("td", {}, p.size + " (min " + p.min_size + ")"), el("td", {}, p.pg_num),
    el("td", {}, p.encrypt ? "yes" : "no"), el("td", { class: "muted" }, states));
}

function render(s) {
  const badge = document.getElementById("health");
  badge.textContent = s.health;
  badge.dataset.health = s.health;
  setText("cluster", "cluster " + s.fsid + " · epoch " + s.epoch);
  setText("updated", "updated " + new Date().toLocaleTimeString());
  setText("user", "logged in as " + s.user);
  renderChecks(s.checks);
  setText("tile-osds", s.osds.up + " up / " + s.osds.total);
  setText("tile-osds-in", s.osds.in + " in");
  const clean = s.pgs.states["active+clean"] || 0;
  setText("tile-pgs", clean + " / " + s.pgs.total + " clean");
  setText("tile-pgs-detail", Object.entries(s.pgs.states).map(([k, n]) => n + " " + k).join(", "));
  setText("tile-data", bytes(s.usage.bytes));
  setText("tile-objects", s.usage.objects + " object copies");
  const t = s.throughput;
  setText("tile-io", rate(t.read_bytes + t.write_bytes));
  setText("tile-io-ops", perSecond(t.read_ops) + " reads, " + perSecond(t.write_ops) + " writes");
  const rec = s.recovery;
  setText("tile-recovery", rec.pgs_recovering || rec.pgs_degraded ? perSecond(rec.objects_per_s) + " objects" : "idle");
  setText("tile-recovery-detail", rec.pgs_recovering + " recovering, " + rec.pgs_degraded + " degraded, " + rate(rec.bytes_per_s));
  replaceRows("daemons", s.daemons.map(daemonRow));
  replaceRows("pools", s.pools.map(poolRow));
  replaceRows("pg-states", Object.entries(s.pgs.states).map(([k, n]) => el("tr", { "data-state": k }, el("td", {}, k), el("td", {}, n))));
}

async function refresh() {
  try {
    const answer = await fetch("/api/status", { credentials: "same-origin", cache: "no-store" });
    if (answer.status === 401) { window.location.assign("/login"); return; }
    if (!answer.ok) throw new Error("status " + answer.status);
    render(await answer.json());
    document.getElementById("stale").hidden = true;
  } catch (err) {
    document.getElementById("stale").hidden = false;
  } finally {
    window.setTimeout(refresh, REFRESH_MS);
  }
}

document.addEventListener("DOMContentLoaded", refresh);
