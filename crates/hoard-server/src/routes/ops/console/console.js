// hoard console: plain JavaScript, no build step, no external resources. Every call goes to the
// API with the key typed above (kept in this tab's sessionStorage), so the console can do exactly
// what that key may do; a refused call shows the API's error.
"use strict";

const $ = (id) => document.getElementById(id);
let apiKey = sessionStorage.getItem("hoard-key") || "";
$("api-key").value = apiKey;

function show(id, content, isError) {
  const node = $(id);
  node.textContent = typeof content === "string" ? content : JSON.stringify(content, null, 2);
  node.classList.toggle("error", Boolean(isError));
  $("status").textContent = isError ? "refused" : "ok";
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: Object.assign({ Authorization: "Bearer " + apiKey }, body ? { "Content-Type": "application/json" } : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error((data.error && data.error.message) || data.message || response.statusText);
    error.status = response.status;
    throw error;
  }
  return data;
}

async function run(resultId, work) {
  try {
    show(resultId, await work());
  } catch (error) {
    show(resultId, "Refused (" + error.status + "): " + error.message, true);
  }
}

function target(form) {
  const store = form.querySelector(".store").value;
  const key = form.querySelector(".key").value;
  sessionStorage.setItem("hoard-store", store);
  sessionStorage.setItem("hoard-target", key);
  return "/v1/ops/stores/" + encodeURIComponent(store) + "/keys/" + encodeURIComponent(key);
}

function keyPath(store, key) {
  return "/v1/stores/" + encodeURIComponent(store) + "/keys/" + encodeURIComponent(key);
}

function tree(value) {
  if (value === null || typeof value !== "object") {
    const leaf = document.createElement("span");
    leaf.textContent = JSON.stringify(value);
    return leaf;
  }
  const list = document.createElement("ul");
  for (const [name, child] of Object.entries(value)) {
    const item = document.createElement("li");
    item.textContent = name + ": ";
    item.appendChild(tree(child));
    list.appendChild(item);
  }
  return list;
}

function showPage(name) {
  for (const page of document.querySelectorAll(".page")) page.classList.toggle("active", page.id === "page-" + name);
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.page === name);
  const key = sessionStorage.getItem("hoard-target");
  if (key) for (const input of document.querySelectorAll(".key")) if (!input.value) input.value = key;
}

window.addEventListener("hashchange", () => showPage(location.hash.slice(1) || "search"));
showPage(location.hash.slice(1) || "search");

$("save-key").addEventListener("click", () => {
  apiKey = $("api-key").value;
  sessionStorage.setItem("hoard-key", apiKey);
  $("status").textContent = "key set";
});

function on(formId, handler) {
  $(formId).addEventListener("submit", (event) => {
    event.preventDefault();
    handler(event.target);
  });
}

on("form-user", () =>
  run("search-result", () => api("GET", "/v1/ops/users/" + encodeURIComponent($("user-id").value) + "/keys")));
on("form-item", () =>
  run("search-result", () =>
    api("GET", "/v1/ops/stores/" + encodeURIComponent($("item-store").value) + "/indexes/" +
      encodeURIComponent($("item-index").value) + "/members/" + encodeURIComponent($("item-id").value))));

on("form-profile", async (form) => {
  const path = target(form);
  await run("profile-holder", () => api("GET", path + "/holder"));
  try {
    const document_ = await api("GET", keyPath(form.querySelector(".store").value, form.querySelector(".key").value));
    const node = $("profile-tree");
    node.textContent = "version " + document_.version;
    node.appendChild(tree(document_.value));
  } catch (error) {
    show("profile-tree", "Refused (" + error.status + "): " + error.message, true);
  }
});

on("form-diff", (form) => {
  const to = $("diff-to").value ? "&to=" + $("diff-to").value : "";
  run("history-result", () => api("GET", target(form) + "/diff?from=" + $("diff-from").value + to));
});
on("form-field", () => {
  const form = $("form-diff");
  run("history-result", () => api("GET", target(form) + "/field?path=" + encodeURIComponent($("field-path").value)));
});

on("form-logs", (form) =>
  run("logs-result", async () => {
    const path = target(form);
    return { trades: (await api("GET", path + "/trades")).trades, receipts: (await api("GET", path + "/receipts")).receipts };
  }));

function restoreBody(preview) {
  const except = $("restore-except").value.split(",").map((s) => s.trim()).filter(Boolean);
  return { version: Number($("restore-version").value), except, preview };
}
$("restore-preview").addEventListener("click", () =>
  run("repair-result", () => api("POST", target($("form-restore")) + "/restore", restoreBody(true))));
$("restore-apply").addEventListener("click", () =>
  run("repair-result", () => api("POST", target($("form-restore")) + "/restore", restoreBody(false))));
on("form-grant", () => {
  const currencies = {};
  currencies[$("grant-currency").value] = Number($("grant-amount").value);
  run("repair-result", () =>
    api("POST", target($("form-restore")) + "/grant", { grant_id: $("grant-id").value, currencies, reason: "console" }));
});
$("free-session").addEventListener("click", () => run("repair-result", () => api("POST", target($("form-restore")) + "/free")));
$("force-end").addEventListener("click", () => run("repair-result", () => api("POST", target($("form-restore")) + "/force_end")));

on("form-top", () =>
  run("leaderboard-result", () =>
    api("GET", "/v1/ops/stores/" + encodeURIComponent($("top-store").value) + "/indexes/" +
      encodeURIComponent($("top-index").value) + "/top?limit=10")));

on("form-erase", () =>
  run("erasure-result", () => api("POST", "/v1/ops/erase", { user_id: $("erase-user").value, reason: "console" })));

$("audit-refresh").addEventListener("click", () => run("audit-result", () => api("GET", "/v1/ops/audit?limit=50")));
