// The review page: no build step, no dependency. Reads /v1/review/* and /v1/profiles; writes
// with /v1/review/decision and the bearer token typed in the page (kept for this tab only).
"use strict";

const $ = (sel) => document.querySelector(sel);

function status(msg, isError) {
  const s = $("#status");
  s.textContent = msg;
  s.className = isError ? "error" : "";
}

async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
  return body;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);   // strings become text nodes: nothing is parsed as HTML
  return e;
}

function fmt(v, digits) {
  return v === null || v === undefined ? "-" : Number(v).toFixed(digits === undefined ? 2 : digits);
}

async function loadGallery() {
  const list = $("#gallery");
  try {
    const profiles = await getJSON("/v1/profiles");
    list.replaceChildren(...profiles.map((p) =>
      el("li", { class: "profile", "data-name": p.name }, `${p.name} (${p.used ?? p.support} images)`)));
    if (!profiles.length) list.replaceChildren(el("li", {}, "(no profiles)"));
    return profiles;
  } catch (e) {
    status(`gallery: ${e.message}`, true);
    return [];
  }
}

async function loadFolders() {
  try {
    const res = await getJSON("/v1/review/folders");
    const sel = $("#folder");
    sel.replaceChildren(...res.folders.map((f) =>
      el("option", { value: f.folder }, `${f.root} / ${f.path}`)));
    if (!res.folders.length) status("no discover output under the review roots", true);
  } catch (e) {
    status(`folders: ${e.message}`, true);
  }
}

function decisionText(d) {
  if (!d) return "";
  if (d.action === "dismiss") return "dismissed";
  if (d.action === "enroll") return `enrolled as ${d.profile}`;
  if (d.action === "add") return `added to ${d.profile}`;
  return d.action;
}

function clusterCard(folder, c, profiles) {
  const id = c.id;
  const card = el("div", { class: "cluster" + (c.decision ? " decided" : ""), "data-cluster": String(id) });
  card.append(el("h3", {}, `cluster ${id}`));
  card.append(el("div", { class: "facts" },
    el("span", { class: "size" }, `size ${c.size}`),
    el("span", { class: "cohesion" }, `cohesion ${fmt(c.cohesion)}`),
    el("span", { class: "nearest" }, c.nearest_profile
      ? `nearest ${c.nearest_profile} (score ${fmt(c.nearest_score)}, threshold ${fmt(c.nearest_threshold)})`
      : "nearest: no profile enrolled")));
  if (c.pictures.includes("contact.png")) {
    const q = new URLSearchParams({ folder, cluster: String(id), name: "contact.png" });
    card.append(el("img", { src: `/v1/review/picture?${q}`, alt: `contact sheet of cluster ${id}`,
                            class: "contact" }));
  }
  if (c.outliers && c.outliers.length) {
    card.append(el("div", { class: "outliers" },
      `outliers (framed in red): ${c.outliers.map((s) => s.split("/").pop()).join(", ")}`));
  }
  const name = el("input", { class: "name", placeholder: "new profile name" });
  const target = el("select", { class: "target" },
    ...profiles.map((p) => el("option", { value: p.name }, p.name)));
  const enroll = el("button", { class: "enroll", type: "button" }, "Enroll as new");
  const add = el("button", { class: "add", type: "button" }, "Add to profile");
  const dismiss = el("button", { class: "dismiss", type: "button" }, "Dismiss");
  if (!profiles.length) add.disabled = true;
  enroll.onclick = () => decide(folder, id, "enroll", name.value.trim());
  add.onclick = () => decide(folder, id, "add", target.value);
  dismiss.onclick = () => decide(folder, id, "dismiss", null);
  card.append(el("div", { class: "actions" }, name, enroll, target, add, dismiss));
  card.append(el("div", { class: "decision" }, decisionText(c.decision)));
  return card;
}

async function loadClusters() {
  const folder = $("#folder").value;
  if (!folder) return;
  status("loading ...");
  try {
    const [res, profiles] = await Promise.all([
      getJSON(`/v1/review/clusters?${new URLSearchParams({ folder })}`), loadGallery()]);
    $("#clusters").replaceChildren(...res.clusters.map((c) => clusterCard(folder, c, profiles)));
    status(`${res.images} images: ${res.clusters.length} clusters, ${res.noise} noise (${res.method})`);
  } catch (e) {
    status(e.message, true);
  }
}

async function decide(folder, cluster, action, name) {
  if (action !== "dismiss" && !name) { status(`${action}: give a profile name`, true); return; }
  const token = $("#token").value;
  sessionStorage.setItem("ofa-token", token);
  status(`${action} cluster ${cluster} ...`);
  try {
    const r = await fetch("/v1/review/decision", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify({ folder, cluster, action, name }),
    });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
    await loadClusters();
    status(`cluster ${cluster}: ${decisionText(body)}`);
  } catch (e) {
    status(`cluster ${cluster}: ${e.message}`, true);
  }
}

$("#load").onclick = loadClusters;
$("#token").value = sessionStorage.getItem("ofa-token") || "";
loadFolders().then(loadGallery);
