// The admin panel: its "Audit logs" and "Lost events" tabs. No build step, no framework.
//
// Records are untrusted data: every value reaches the page through textContent or a
// DOM property, never through HTML parsing (no innerHTML, no insertAdjacentHTML). The
// page runs under a Content-Security-Policy without inline script or style.
//
// The session is an HttpOnly cookie set by POST /api/v1/session: this script never
// holds the token after signing in, and the CSV download is a plain link.
"use strict";

(() => {
  const COLUMNS = [
    ["Type", "type"], ["Target", "target"], ["Principal", "principal"],
    ["Status", "status"], ["Organization ID", "org_id"],
    ["Organization name", "org_name"], ["Workspace ID", "workspace_id"],
    ["Workspace name", "workspace_name"], ["Client IP", "client_ip"],
    ["Creation date", "created"],
  ];
  const FILTERS = ["type", "principal", "target", "status", "org", "org_name", "workspace",
                   "workspace_name", "client_ip", "since", "until", "order", "limit"];
  const PANEL_PATH = "/admin/audit-logs";
  const $ = (id) => document.getElementById(id);

  // cursors[i] is the cursor of page i (null for the first page).
  const state = { cursors: [null], page: 0, query: new URLSearchParams() };

  // The seed's form of "Creation date": YYYY-MM-DD-HH-MM-SS (UTC).
  function seedDate(created) {
    if (typeof created !== "string" || created.length < 19) return String(created ?? "");
    return `${created.slice(0, 10)}-${created.slice(11, 13)}-${created.slice(14, 16)}-` +
           created.slice(17, 19);
  }

  // Characters that change how the text around them is drawn without being seen
  // (bidi overrides such as U+202E, zero-width characters: format characters, Cf),
  // controls, line and paragraph separators, spaces other than " " (Z), marks that draw
  // nothing (the combining grapheme joiner, variation and Mongolian free variation
  // selectors, Khmer inherent vowels) and blank-looking fillers: shown as \u escapes,
  // so "\u202Egnp.exe" does not read as "exe.png" and no value passes for another
  // ("root" followed by U+034F looked exactly like "root"). The same characters the
  // CLI's table escapes (collector/render.py: not str.isprintable(), _INVISIBLE_MARKS,
  // _BLANK_LOOKING).
  const INVISIBLE =
    /(?! )[\p{C}\p{Z}\u034F\u17B4\u17B5\u180B-\u180D\u180F\uFE00-\uFE0F\u{E0100}-\u{E01EF}\u115F\u1160\u3164\uFFA0\u2800]/gu;

  // Above U+FFFF eight digits after \U, as the CLI writes them (Python's
  // unicode_escape): "\uE0100" for U+E0100 read as U+E010 and a "0", which is how that
  // pair is shown, so two values passed for one.
  function visible(text) {
    return text.replace(INVISIBLE, (ch) => {
      const code = ch.codePointAt(0);
      const hex = code.toString(16).toUpperCase();
      return code > 0xFFFF ? `\\U${hex.padStart(8, "0")}` : `\\u${hex.padStart(4, "0")}`;
    });
  }

  function display(record, field) {
    const value = record[field];
    if (field === "created") return seedDate(value);
    return value === undefined || value === null ? "" : visible(String(value));
  }

  function showError(id, message) {
    const el = $(id);
    el.textContent = message || "";
    el.hidden = !message;
  }

  async function call(path, options = {}) {
    let response;
    try {
      response = await fetch(path, {
        credentials: "same-origin",
        headers: { Accept: "application/json", ...(options.headers || {}) },
        ...options,
      });
    } catch (err) {
      return { status: 0, body: { message: "The collector cannot be reached." } };
    }
    let body = null;
    try { body = await response.json(); } catch (err) { body = null; }
    return { status: response.status, body: body || {} };
  }

  // -- signing in and out ---------------------------------------------------------
  function showSignIn(message) {
    $("admin").hidden = true;
    $("who").hidden = true;
    $("sign-in").hidden = false;
    showError("sign-in-error", message);
    $("token").focus();
  }

  function signedIn(me) {
    $("sign-in").hidden = true;
    $("who-name").textContent = me.name;
    $("who").hidden = false;
    $("admin").hidden = false;
    loadTypes();
    showTab();
  }

  // -- tabs: one page, the tab in its URL's fragment ------------------------------
  const LOSSES_HASH = "#lost-events";

  function showTab() {
    const losses = location.hash === LOSSES_HASH;
    $("losses-view").hidden = !losses;
    $("audit-logs-view").hidden = losses;
    for (const [id, current] of [["tab-losses", losses], ["tab-audit-logs", !losses]]) {
      if (current) $(id).setAttribute("aria-current", "page");
      else $(id).removeAttribute("aria-current");
    }
    if (losses) loadLosses();
    else loadPage();
  }

  // The audit logs tab's URL holds the selection it shows (bookmarked, shared, reloaded
  // as it is); the lost events tab's holds none.
  function openTab(event, hash) {
    event.preventDefault();
    const text = state.query.toString();
    const search = hash || !text ? "" : `?${text}`;
    history.pushState(null, "", PANEL_PATH + search + hash);
    showTab();
  }

  // Back or forward to the audit logs tab: the selection is the one in that URL, not
  // whatever the form held when the reader left it.
  function selectionFromUrl() {
    $("filters").reset();
    formFromQuery(new URLSearchParams(location.search));
    const query = queryFromForm();
    if (query.toString() === state.query.toString()) return;
    state.query = query;
    state.cursors = [null];
    state.page = 0;
    $("download").href = exportLink(query);
    $("detail").hidden = true;
  }

  // -- lost events ----------------------------------------------------------------
  async function loadLosses() {
    $("ack-form").hidden = true;
    $("losses-summary").textContent = "Loading…";
    const result = await call("/api/v1/sources/losses");
    if (result.status === 401) return showSignIn("Your session has ended: sign in again.");
    if (result.status !== 200) {
      $("losses-summary").textContent = "";
      showError("losses-error", result.body.message || `The sources cannot be read (HTTP ${result.status}).`);
      return;
    }
    showError("losses-error", "");
    const { sources } = result.body;
    const rows = sources.map((row) => {
      const open = row.unacknowledged_gap_events + row.unacknowledged_tail_events;
      const tr = document.createElement("tr");
      tr.dataset.source = String(row.source);
      const cells = [visible(String(row.source)), String(open), String(row.gap_events),
                     String(row.unreceived_tail_events),
                     row.acknowledged_through ? String(row.acknowledged_through) : "",
                     row.last_seen ? seedDate(row.last_seen) : ""];
      for (const text of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      const td = document.createElement("td");
      if (open) {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = "Acknowledge…";
        button.addEventListener("click", () => askAck(String(row.source), row.latest));
        td.append(button);
      } else {
        td.textContent = "Acknowledged";
      }
      tr.append(td);
      return tr;
    });
    $("losses").tBodies[0].replaceChildren(...rows);
    const open = result.body.unacknowledged_gap_events + result.body.unacknowledged_tail_events;
    $("losses-summary").textContent = sources.length
      ? `${open} lost event${open === 1 ? "" : "s"} not acknowledged.`
      : "No source has lost events.";
  }

  // ``latest``: the number the row's counts reach. Acknowledged through it, a loss
  // that happens while the form is open is not acknowledged unseen. A number past what
  // a double holds exactly is left out (the collector then takes its latest).
  function askAck(source, latest) {
    $("ack-source").textContent = visible(source);
    $("ack-form").dataset.source = source;
    $("ack-form").dataset.through = Number.isSafeInteger(latest) ? String(latest) : "";
    $("ack-reason").value = "";
    $("ack-form").hidden = false;
    $("ack-reason").focus();
  }

  async function acknowledge(event) {
    event.preventDefault();
    const { source, through } = $("ack-form").dataset;
    const reason = $("ack-reason").value.trim();
    const body = through ? { source, reason, through: Number(through) } : { source, reason };
    const result = await call("/api/v1/sources/acknowledge-losses", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (result.status === 401) return showSignIn("Your session has ended: sign in again.");
    if (result.status !== 200) {
      showError("losses-error", result.body.message || `Not acknowledged (HTTP ${result.status}).`);
      return;
    }
    loadLosses();
  }

  async function signIn(event) {
    event.preventDefault();
    const token = $("token").value.trim();
    const result = await call("/api/v1/session", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token }),
    });
    $("token").value = "";
    if (result.status === 200) {
      signedIn(result.body);
    } else if (result.status === 403) {
      showSignIn("This reader is not root: only root users may view audit logs.");
    } else if (result.status === 401) {
      showSignIn("This token is not valid.");
    } else {
      showSignIn(result.body.message || `Sign-in failed (HTTP ${result.status}).`);
    }
  }

  async function signOut() {
    await call("/api/v1/session", { method: "DELETE" });
    $("events").tBodies[0].replaceChildren();
    $("detail").hidden = true;
    showSignIn("");
  }

  // -- filters and the URL --------------------------------------------------------
  function queryFromForm() {
    const query = new URLSearchParams();
    const form = $("filters");
    for (const name of FILTERS) {
      // Sent exactly as typed or linked: "admin " is another principal than "admin".
      // Only a field of nothing but spaces counts as empty.
      const value = form.elements[name].value;
      if (value.trim()) query.set(name, value);
    }
    return query;
  }

  function formFromQuery(query) {
    const form = $("filters");
    for (const name of FILTERS) {
      const value = query.get(name);
      if (value !== null) form.elements[name].value = value;
    }
  }

  function exportLink(query) {
    const q = new URLSearchParams(query);
    q.delete("limit");
    const text = q.toString();
    return "/api/v1/audit-logs/export.csv" + (text ? `?${text}` : "");
  }

  function applyFilters(event) {
    if (event) event.preventDefault();
    state.query = queryFromForm();
    state.cursors = [null];
    state.page = 0;
    const text = state.query.toString();
    history.replaceState(null, "", PANEL_PATH + (text ? `?${text}` : ""));
    $("download").href = exportLink(state.query);
    $("detail").hidden = true;
    loadPage();
  }

  function clearFilters() {
    $("filters").reset();
    applyFilters();
  }

  // -- the table ------------------------------------------------------------------
  async function loadPage() {
    const query = new URLSearchParams(state.query);
    const cursor = state.cursors[state.page];
    if (cursor) query.set("cursor", cursor);
    $("summary").textContent = "Loading…";
    const result = await call(`/api/v1/audit-logs?${query}`);
    if (result.status === 401) return showSignIn("Your session has ended: sign in again.");
    if (result.status !== 200) {
      $("summary").textContent = "";
      showError("error", result.body.message || `The query failed (HTTP ${result.status}).`);
      return;
    }
    showError("error", "");
    const { records, next_cursor: next } = result.body;
    state.cursors[state.page + 1] = next;
    state.cursors.length = state.page + 2;
    renderRows(records);
    $("previous").disabled = state.page === 0;
    $("next").disabled = !next;
    $("page-label").textContent = `Page ${state.page + 1}`;
    $("summary").textContent = records.length
      ? `${records.length} event${records.length === 1 ? "" : "s"} on this page` +
        (next ? "; more on the next page." : ".")
      : "No events match these filters.";
  }

  function renderRows(records) {
    const rows = records.map((record) => {
      const tr = document.createElement("tr");
      tr.tabIndex = 0;
      tr.dataset.id = String(record.id);
      for (const [, field] of COLUMNS) {
        const td = document.createElement("td");
        td.textContent = display(record, field);
        tr.append(td);
      }
      tr.addEventListener("click", () => openDetail(record.id));
      tr.addEventListener("keydown", (event) => {
        if (event.key === "Enter") openDetail(record.id);
      });
      return tr;
    });
    $("events").tBodies[0].replaceChildren(...rows);
  }

  function turnPage(step) {
    const page = state.page + step;
    if (page < 0 || (step > 0 && !state.cursors[page])) return;
    state.page = page;
    $("detail").hidden = true;
    loadPage();
  }

  // The suggestions: the API lists a bounded number of stored types. When it says there
  // are more, it is asked again as a type is typed, for the types beginning with it
  // (the typed text up to a glob's first wildcard, of its last comma-separated part),
  // so a store flooded with types still suggests the one being typed.
  const types = { truncated: false, asked: null, timer: 0 };

  async function loadTypes(prefix = "") {
    types.asked = prefix;
    const query = prefix ? `?prefix=${encodeURIComponent(prefix)}` : "";
    const result = await call(`/api/v1/event-types${query}`);
    if (types.asked !== prefix) return;  // a later ask won
    if (result.status !== 200) {
      types.asked = null;  // asked again at the next keystroke, not only for another prefix
      return;
    }
    const options = result.body.types.map((type) => {
      const option = document.createElement("option");
      option.value = type;
      return option;
    });
    $("types").replaceChildren(...options);
    if (!prefix) types.truncated = result.body.truncated === true;
    // Without this note an operator whose type is not suggested takes it for one never
    // stored, and filters no further.
    $("types-more").hidden = !types.truncated;
  }

  function typePrefix(text) {
    const last = text.split(",").pop().trimStart();
    return last.split(/[*?[]/)[0].slice(0, 64);
  }

  function typeTyped() {
    if (!types.truncated) return;  // every stored type is suggested already
    clearTimeout(types.timer);
    const prefix = typePrefix($("filters").elements.type.value);
    if (prefix === types.asked) return;
    types.timer = setTimeout(() => loadTypes(prefix), 200);
  }

  // -- one event ------------------------------------------------------------------
  async function openDetail(id) {
    const result = await call(`/api/v1/audit-logs/${encodeURIComponent(id)}`);
    if (result.status === 401) return showSignIn("Your session has ended: sign in again.");
    if (result.status !== 200) {
      showError("error", result.body.message || `The event cannot be read (HTTP ${result.status}).`);
      return;
    }
    const { record, trace_url: traceUrl } = result.body;
    const items = [];
    for (const [field, value] of Object.entries(record)) {
      const dt = document.createElement("dt");
      dt.textContent = field;
      const dd = document.createElement("dd");
      if (field === "trace_id" && value && isHttpUrl(traceUrl)) {
        const a = document.createElement("a");
        a.href = traceUrl;
        a.textContent = String(value);
        a.target = "_blank";
        a.rel = "noopener noreferrer";
        dd.append(a);
      } else if (field === "created") {
        dd.textContent = `${seedDate(value)} (${value})`;
      } else {
        dd.textContent = value === null || value === undefined ? "" : visible(String(value));
      }
      items.push(dt, dd);
    }
    $("detail-fields").replaceChildren(...items);
    $("detail").hidden = false;
    $("detail").scrollIntoView({ block: "nearest" });
    $("detail-close").focus({ preventScroll: true });
  }

  function isHttpUrl(value) {
    if (typeof value !== "string") return false;
    try {
      const url = new URL(value);
      return url.protocol === "https:" || url.protocol === "http:";
    } catch (err) {
      return false;
    }
  }

  // -- start ----------------------------------------------------------------------
  async function start() {
    $("sign-in-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    $("filters").addEventListener("submit", applyFilters);
    $("filters").elements.type.addEventListener("input", typeTyped);
    $("clear").addEventListener("click", clearFilters);
    $("previous").addEventListener("click", () => turnPage(-1));
    $("next").addEventListener("click", () => turnPage(1));
    $("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
    $("tab-losses").addEventListener("click", (event) => openTab(event, LOSSES_HASH));
    $("tab-audit-logs").addEventListener("click", (event) => openTab(event, ""));
    $("ack-form").addEventListener("submit", acknowledge);
    $("ack-cancel").addEventListener("click", () => { $("ack-form").hidden = true; });
    window.addEventListener("popstate", () => {
      if ($("admin").hidden) return;
      if (location.hash !== LOSSES_HASH) selectionFromUrl();
      showTab();
    });
    const fromUrl = new URLSearchParams(location.search);
    formFromQuery(fromUrl);
    state.query = queryFromForm();
    $("download").href = exportLink(state.query);
    const me = await call("/api/v1/session");
    if (me.status === 200 && me.body.root) signedIn(me.body);
    else if (me.status === 200 || me.status === 403) showSignIn("This reader is not root: only root users may view audit logs.");
    else showSignIn("");
  }

  document.addEventListener("DOMContentLoaded", start);
})();
