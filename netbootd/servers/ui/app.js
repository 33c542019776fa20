// netbootd's dashboard: plain JavaScript, no build step, served by netbootd itself.
// Every value shown comes from the admin API and is put in the page with textContent (never
// innerHTML): what a client sent (hostnames, event details) is shown, never run.
"use strict";

const S = { token: sessionStorage.getItem("netbootd-token"), csrf: null, scope: null,
            timer: null, stream: null };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}

async function api(method, path, body) {
  const headers = { "Authorization": "Bearer " + S.token, "Accept": "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    headers["X-CSRF-Token"] = S.csrf || "";
  }
  const r = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined,
                                credentials: "omit", cache: "no-store" });
  const data = await r.json().catch(() => null);
  if (r.status === 401) { signOut("the token was refused (revoked?)"); throw new Error("401"); }
  if (!r.ok) throw new Error((data && data.error) || r.statusText);
  return data;
}

function say(text, error) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = error ? "error" : "";
}

function ago(iso) {
  if (!iso) return "never";
  const d = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  for (const [u, n] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (d >= n) return Math.floor(d / n) + u + " ago";
  }
  return Math.floor(d) + "s ago";
}

function stale(iso, enrolled) {
  const t = Date.parse(iso || enrolled);
  return Date.now() - t > 7 * 86400 * 1000;
}

function stateCell(h) {
  const p = h.provision;
  const text = (h.state === "armed" || h.state === "provisioning") && p
    ? `${h.state} (${p.boots}/${p.max_boots})` : h.state;
  return el("td", { class: "state-" + h.state, "data-field": "state" }, text);
}

async function reprovision(h, cancel) {
  try {
    const out = await api("POST", `/api/v1/hosts/${encodeURIComponent(h.mac)}/reprovision`,
                          { cancel: !!cancel });
    say(out.messages.join("; "));
  } catch (e) { say("reprovision: " + e.message, true); }
  route();
}

async function arm(h) {
  try {
    const out = await api("POST", `/api/v1/hosts/${encodeURIComponent(h.mac)}/identity/arm`, {});
    say(out.messages.join("; "));
  } catch (e) { say("arm: " + e.message, true); }
  route();
}

// Power (issue 16): the BMC's settings are read-scope; asking the BMC and acting are admin's.
// The BMC call runs on the server with its deadline: a BMC that does not answer is a 502 with
// the reason, shown in the status line. The page re-renders every 2 s; the BMC is asked at
// most once per 30 s per host (and after an action), never twice at once.
const POWER = {};  // mac -> { text, error, at, pending }

function showPower(mac) {
  const s = document.getElementById("power-state");
  const p = POWER[mac];
  if (!s || s.dataset.mac !== mac || !p || p.text === undefined) return;
  s.textContent = p.text;
  s.className = p.error ? "error" : "";
}

function askPower(mac) {
  const p = POWER[mac] = POWER[mac] || {};
  if (p.pending || (p.at && Date.now() - p.at < 30000)) return;
  p.pending = true;
  api("GET", `/api/v1/hosts/${encodeURIComponent(mac)}/power`)
    .then(out => { p.text = out.result.state; p.error = false; })
    .catch(e => { p.text = "unknown: " + e.message; p.error = true; })
    .finally(() => { p.pending = false; p.at = Date.now(); showPower(mac); });
}

async function power(h, action) {
  const path = `/api/v1/hosts/${encodeURIComponent(h.mac)}/` +
    (action === "boot-once" ? "boot-once" : "power");
  say(`${h.hostname || h.mac}: ${action}...`);
  try {
    const out = await api("POST", path, action === "boot-once" ? { device: "pxe" }
                                                               : { action });
    say(out.messages.join("; "));
  } catch (e) { say(`${action}: ${e.message}`, true); }
  if (POWER[h.mac]) POWER[h.mac].at = 0;
  route();
}

async function reprovisionReboot(h) {
  say(`${h.hostname || h.mac}: re-provision and reboot...`);
  try {
    const out = await api("POST", `/api/v1/hosts/${encodeURIComponent(h.mac)}/reprovision`,
                          { reboot: true });
    say(out.messages.join("; "), out.result && out.result.failed);
  } catch (e) { say("reprovision --reboot: " + e.message, true); }
  if (POWER[h.mac]) POWER[h.mac].at = 0;
  route();
}

async function powerSection(h) {
  let bmc = null;
  try {
    bmc = (await api("GET", `/api/v1/hosts/${encodeURIComponent(h.mac)}/bmc`)).bmc;
  } catch (e) {  // the rest of the host's page is shown all the same
    return el("div", { id: "power" }, el("p", { class: "error" }, "BMC: " + e.message));
  }
  const state = el("dd", { id: "power-state", "data-field": "power", "data-mac": h.mac },
                   bmc ? (S.scope === "admin" ? "asking the BMC..." : "(admin token)") : "-");
  const section = el("div", { id: "power" }, el("dl", {},
    el("dt", {}, "BMC"), el("dd", { id: "bmc", class: "mono" },
      bmc ? `${bmc.kind} ${bmc.target}, user ${bmc.user}, password ${bmc.password}`
          : "none (netbootd bmc set)"),
    el("dt", {}, "Power"), state));
  if (bmc && S.scope === "admin") {
    section.append(el("p", {},
      ...[["on", "Power on"], ["off", "Power off"], ["cycle", "Power cycle"],
          ["boot-once", "Next boot PXE"]].flatMap(([a, label]) => [
        el("button", { type: "button", class: "power", "data-action": a,
                       onclick: () => power(h, a) }, label), " "]),
      el("button", { type: "button", class: "reprovision-reboot",
                     onclick: () => reprovisionReboot(h) }, "Reprovision + reboot")));
  }
  return section;
}

function actionButtons(h) {
  if (S.scope !== "admin") return el("td", {}, "");
  return el("td", {},
    el("button", { type: "button", class: "reprovision", "data-mac": h.mac,
                   onclick: () => reprovision(h, false) }, "Reprovision"), " ",
    el("button", { type: "button", class: "arm", "data-mac": h.mac,
                   onclick: () => arm(h) }, "Arm identity"));
}

async function hostsView(view) {
  const hosts = await api("GET", "/api/v1/hosts");
  const rows = hosts.map(h => el("tr", { "data-mac": h.mac },
    el("td", { class: "mono" }, el("a", { href: "#host/" + encodeURIComponent(h.mac) }, h.mac)),
    el("td", { "data-field": "hostname" }, h.hostname || "-"),
    el("td", {}, h.role), el("td", {}, String(h.generation ?? "-")), stateCell(h),
    el("td", {}, (h.tags || []).join(",") || "-"),
    el("td", { "data-field": "last_boot", class: stale(h.last_boot, h.enrolled) ? "stale" : "" },
       ago(h.last_boot) + (h.last_boot_ip ? " from " + h.last_boot_ip : "")),
    el("td", { "data-field": "last_provisioned" }, ago(h.last_provisioned)),
    actionButtons(h)));
  view.replaceChildren(el("h2", {}, `Hosts (${hosts.length})`),
    el("table", { id: "hosts" }, el("thead", {}, el("tr", {},
      ...["MAC", "Hostname", "Role", "Gen", "State", "Tags", "Last boot", "Last provisioned",
          ""].map(t => el("th", {}, t)))), el("tbody", {}, ...rows)));
}

function eventsTable(events, id) {
  return el("table", { id }, el("thead", {}, el("tr", {},
    ...["Time", "Host", "Event", "From", "Boot", "Detail"].map(t => el("th", {}, t)))),
    el("tbody", {}, ...events.map(eventRow)));
}

function eventRow(e) {
  const detail = Object.keys(e.detail || {}).sort().map(k => `${k}=${e.detail[k]}`).join(" ");
  return el("tr", {}, el("td", { class: "mono" }, e.time.slice(0, 19) + "Z"),
    el("td", {}, e.host || e.mac || "-"), el("td", {}, e.event), el("td", {}, e.source_ip || "-"),
    el("td", { class: "mono" }, e.boot || "-"), el("td", {}, detail));
}

async function hostView(view, mac) {
  const h = await api("GET", `/api/v1/hosts/${encodeURIComponent(mac)}`);
  const events = await api("GET", `/api/v1/hosts/${encodeURIComponent(mac)}/events`);
  const shown = await api("GET", `/api/v1/hosts/${encodeURIComponent(mac)}/inventory`);
  const id = h.identity;
  const p = h.provision;
  view.replaceChildren(el("h2", {}, h.hostname ? `${h.hostname} (${h.mac})` : h.mac),
    el("dl", { id: "host" },
      el("dt", {}, "Role"), el("dd", {}, `${h.role}, generation ${h.generation ?? "-"}`),
      el("dt", {}, "State"), el("dd", { "data-field": "state" }, h.state),
      el("dt", {}, "Re-provision"), el("dd", {}, p ? `${p.state}, ${p.boots}/${p.max_boots} ` +
        `boots, until ${p.expires}` + (p.reason ? `: ${p.reason}` : "") : "none pending"),
      el("dt", {}, "Last boot"), el("dd", {}, ago(h.last_boot) +
        (h.last_boot_ip ? " from " + h.last_boot_ip : "")),
      el("dt", {}, "Last provisioned"), el("dd", {}, ago(h.last_provisioned)),
      el("dt", {}, "SSH ed25519"), el("dd", { class: "mono" },
        id ? id.ssh_ed25519_fingerprint : "no identity"),
      el("dt", {}, "SSH RSA"), el("dd", { class: "mono" },
        id ? (id.ssh_rsa_fingerprint || "pending") : "-"),
      el("dt", {}, "hostId / WireGuard"), el("dd", { class: "mono" },
        id ? `${id.hostid} / ${id.wireguard_public}` : "-"),
      el("dt", {}, "Inventory"), inventoryDd(shown)),
    S.scope === "admin" ? el("p", {},
      el("button", { type: "button", class: "reprovision", onclick: () => reprovision(h) },
         "Reprovision"), " ",
      el("button", { type: "button", onclick: () => reprovision(h, true) }, "Cancel"), " ",
      el("button", { type: "button", class: "arm", onclick: () => arm(h) }, "Arm identity"))
      : "",
    el("h3", {}, "Power"), await powerSection(h),
    el("h3", {}, "Events"), eventsTable(events.slice(-200).reverse(), "host-events"));
  if (S.scope === "admin" && document.getElementById("power-state")) {
    showPower(h.mac);
    if (document.querySelector("#power button.power")) askPower(h.mac);
  }
}

function size(bytes) {
  for (const [u, n] of [["TB", 1e12], ["GB", 1e9], ["MB", 1e6]]) {
    if (bytes >= n) return (bytes / n).toFixed(1) + " " + u;
  }
  return String(bytes) + " B";
}

// What a machine reported about itself (serials, models, vendor strings) is the machine's
// text: shown as text nodes only, like everything else here.
function disksText(disks) {
  return (disks || []).map(d => `${d.name} ${d.serial || "-"} ${size(d.size_bytes)}`).join("; ");
}

function nicsText(nics) {
  return (nics || []).map(n => `${n.mac} ${n.driver || "-"}`).join("; ");
}

async function enroll(d, form) {
  const role = form.querySelector("select").value;
  const hostname = form.querySelector("input").value.trim();
  try {
    const out = await api("POST", "/api/v1/hosts",
                          { mac: d.mac, role, hostname: hostname || null });
    say(out.messages.join("; "));
  } catch (e) { say("enroll: " + e.message, true); }
  route();
}

function enrollForm(d, roles) {
  if (S.scope !== "admin") return el("td", {}, "");
  const form = el("form", { class: "enroll", "data-mac": d.mac },
    el("select", { "aria-label": "role" }, ...roles.map(r => el("option", { value: r.name },
                                                                 r.name))), " ",
    el("input", { type: "text", placeholder: "hostname", size: "12", "aria-label": "hostname" }),
    " ", el("button", { type: "submit", class: "enroll" }, "Enroll"));
  form.addEventListener("submit", ev => { ev.preventDefault(); enroll(d, form); });
  return el("td", {}, form);
}

async function discoveredView(view) {
  const found = await api("GET", "/api/v1/discovered");
  const roles = S.scope === "admin" ? await api("GET", "/api/v1/roles") : [];
  const rows = found.map(d => el("tr", { "data-mac": d.mac },
    el("td", { class: "mono" }, d.mac),
    el("td", { "data-field": "system" }, `${d.vendor || "-"} ${d.product || ""}`.trim()),
    el("td", { "data-field": "serial" }, d.serial || "-"),
    el("td", {}, `${d.cpu || "-"} (${d.threads})`), el("td", {}, size(d.memory_bytes)),
    el("td", { "data-field": "disks" }, disksText(d.disks)),
    el("td", { "data-field": "nics", class: "mono" }, nicsText(d.nics)),
    el("td", {}, d.firmware + (d.secure_boot === "enabled" ? " SB" : "")),
    el("td", {}, ago(d.first_seen)), el("td", {}, ago(d.last_seen)),
    el("td", {}, d.source_ip || "-"), enrollForm(d, roles)));
  view.replaceChildren(el("h2", {}, `Discovered machines (${found.length})`),
    el("button", { type: "button", id: "refresh", onclick: () => route() }, "Refresh"),
    el("p", {}, found.length ? "" : 'None: with dhcp.unknown_policy = "discover" an unknown ' +
       "machine that PXE-boots reports its hardware here."),
    el("table", { id: "discovered" }, el("thead", {}, el("tr", {},
      ...["MAC", "System", "Serial", "CPU", "Memory", "Disks", "NICs", "Firmware",
          "First seen", "Last seen", "From", ""].map(t => el("th", {}, t)))),
      el("tbody", {}, ...rows)));
}

function inventoryDd(shown) {
  const inv = shown && shown.inventory;
  if (!inv) return el("dd", { "data-field": "inventory" }, "none reported");
  const s = inv.summary;
  return el("dd", { "data-field": "inventory" },
    `${s.vendor || "-"} ${s.product || ""}, ${s.cpu || "-"} (${s.threads}), ` +
    `${size(s.memory_bytes)}, ${s.firmware}; disks: ${disksText(s.disks)}; ` +
    `NICs: ${nicsText(s.nics)}; reported ${ago(inv.reported)}` +
    (inv.changes.length ? `; changed: ${inv.changes.join("; ")}` : ""));
}

async function rolesView(view) {
  const roles = await api("GET", "/api/v1/roles");
  const parts = [el("h2", {}, `Roles (${roles.length})`)];
  for (const r of roles) {
    const gens = await api("GET", `/api/v1/roles/${encodeURIComponent(r.name)}/generations`);
    const rows = gens.map(g => el("tr", {},
      el("td", {}, g.current ? "*" : ""), el("td", {}, String(g.generation)),
      el("td", {}, g.created || "-"), el("td", {}, (g.size / 1e6).toFixed(1) + " MB"),
      el("td", {}, g.mode || "import"), el("td", {}, g.source),
      el("td", {}, S.scope === "admin" && !g.current ? el("button", { type: "button",
        onclick: async () => {
          try {
            const out = await api("POST", `/api/v1/roles/${encodeURIComponent(r.name)}/switch`,
                                  { generation: g.generation });
            say(out.messages.join("; "));
          } catch (e) { say("switch: " + e.message, true); }
          route();
        } }, "Switch to") : "")));
    parts.push(el("h3", {}, r.name), el("table", { class: "generations" }, el("thead", {},
      el("tr", {}, ...["", "Gen", "Created", "Size", "Mode", "Source", ""].map(t =>
        el("th", {}, t)))), el("tbody", {}, ...rows)));
    if (S.scope === "admin" && gens.length > 1) {
      parts.push(el("button", { type: "button", onclick: async () => {
        try {
          const out = await api("POST", `/api/v1/roles/${encodeURIComponent(r.name)}/rollback`,
                                {});
          say(out.messages.join("; "));
        } catch (e) { say("rollback: " + e.message, true); }
        route();
      } }, "Roll back"));
    }
  }
  view.replaceChildren(...parts);
}

async function eventsView(view) {
  const recent = await api("GET", "/api/v1/events?since=1d");
  const table = eventsTable(recent.slice(-100).reverse(), "events");
  view.replaceChildren(el("h2", {}, "Events (live)"), table);
  const tbody = table.querySelector("tbody");
  const ctl = new AbortController();
  S.stream = ctl;
  const r = await fetch("/api/v1/events?follow=1", { signal: ctl.signal, cache: "no-store",
    headers: { "Authorization": "Bearer " + S.token, "Accept": "text/event-stream" } });
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read().catch(() => ({ done: true }));
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const chunk = buf.slice(0, i);
      buf = buf.slice(i + 2);
      for (const line of chunk.split("\n")) {
        if (line.startsWith("data: ")) tbody.prepend(eventRow(JSON.parse(line.slice(6))));
      }
    }
  }
}

async function route() {
  clearTimeout(S.timer);
  if (S.stream) { S.stream.abort(); S.stream = null; }
  const view = document.getElementById("view");
  const hash = location.hash.slice(1) || "hosts";
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.getAttribute("href") === "#" + hash.split("/")[0]);
  }
  try {
    if (hash.startsWith("host/")) await hostView(view, decodeURIComponent(hash.slice(5)));
    else if (hash === "roles") await rolesView(view);
    else if (hash === "discovered") await discoveredView(view);
    else if (hash === "events") { eventsView(view).catch(e => say(e.message, true)); return; }
    else await hostsView(view);
    document.body.dataset.loaded = String(Date.now());
  } catch (e) {
    if (e.message !== "401") say(e.message, true);
  }
  // not on pages with forms (a redraw would drop what the operator is typing)
  if (hash !== "roles" && hash !== "discovered") S.timer = setTimeout(route, 2000);
}

function signOut(why) {
  sessionStorage.removeItem("netbootd-token");
  S.token = null;
  document.getElementById("login").hidden = false;
  document.getElementById("view").replaceChildren();
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  document.getElementById("login-error").textContent = why || "";
}

async function signIn(token) {
  S.token = token;
  try {
    const me = await api("GET", "/api/v1/whoami");
    S.csrf = me.csrf;
    S.scope = me.scope;
    sessionStorage.setItem("netbootd-token", token);
    document.getElementById("login").hidden = true;
    document.getElementById("logout").hidden = false;
    document.getElementById("who").textContent = `token ${me.name} (${me.scope})`;
    route();
  } catch (e) {
    if (e.message !== "401") signOut(e.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login-form").addEventListener("submit", ev => {
    ev.preventDefault();
    signIn(document.getElementById("token").value.trim());
  });
  document.getElementById("logout").addEventListener("click", () => signOut(""));
  window.addEventListener("hashchange", route);
  if (S.token) signIn(S.token); else signOut("");
});
