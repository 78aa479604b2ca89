// DLM's operator page: a few views over DLM's own API, signed in with a DLM token. No library, no
// inline script, no other host: every text from the API goes into the page as text, never as HTML.
"use strict";

const STATES = ["INITIALISED", "READY", "CORRUPTED", "EXPIRED", "DELETING", "DELETED"];
const PHASES = ["PLASMA", "GAS", "LIQUID", "SOLID"];
const MIGRATION_STATUSES = ["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"];
const ROLES = ["reader", "ingest", "operator", "admin"];
const PAGE_SIZE = 50;
const TOKEN_KEY = "dlm-token";

const session = {
  token: sessionStorage.getItem(TOKEN_KEY), who: null, storages: new Map(), refresh: null,
  // Aborted when the user moves to another view, so that a slow answer for the old one cannot paint over it.
  requests: new AbortController(),
};

// --- building the page -----------------------------------------------------------------------------

function h(tag, attributes, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attributes, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes || {})) element.setAttribute(name, value);
  for (const child of children.flat()) element.append(child instanceof Node ? child : String(child));
  return element;
}

function show(...content) {
  document.getElementById("main").replaceChildren(...content.filter((part) => part !== null && part !== undefined));
}

function toast(message, ok = false) {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.className = ok ? "ok" : "";
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

function bytes(count) {
  if (count === null || count === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
  let value = Number(count), unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${unit ? value.toFixed(value < 10 ? 2 : 1) : value} ${units[unit]}`;
}

function when(iso) {
  if (!iso) return "–";
  const moment = new Date(iso);
  return h("time", { datetime: iso, title: iso }, moment.toLocaleString());
}

function badge(text) {
  return h("span", { class: `badge ${text}` }, text);
}

function percent(done, total) {
  if (!total) return done ? 100 : 0;
  return Math.min(100, Math.floor((100 * done) / total));
}

function bar(value, label, { high = false, name = "" } = {}) {
  const fill = h("div", { class: "fill" });
  fill.style.width = `${value}%`;  // CSSOM, which the Content-Security-Policy allows (style attributes it would not)
  return h("div", {},
    h("div", { class: high ? "bar high" : "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
      "aria-valuenow": value, "aria-label": name || label }, fill),
    h("div", { class: "bar-label" }, label));
}

function table(headings, rows, empty = "Nothing here.") {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h("table", {},
    h("thead", {}, h("tr", {}, headings.map((heading) => h("th", { class: heading.endsWith(" ") ? "num" : null }, heading.trim())))),
    h("tbody", {}, rows));
}

// --- talking to DLM --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super(typeof body === "object" && body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
  }
}

function headers() {
  return session.token ? { Authorization: `Bearer ${session.token}` } : {};
}

async function api(method, path, params = {}, body = undefined) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== "" && value !== null && value !== undefined) url.searchParams.set(name, value);
  }
  const options = { method, headers: headers(), signal: session.requests.signal };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(url, options);
  const type = response.headers.get("Content-Type") || "";
  const content = type.includes("json") ? await response.json() : await response.text();
  if (response.status === 401) {
    askForToken(content.message || "Sign in to continue.");
  }
  if (!response.ok) throw new ApiError(response.status, content);
  return content;
}

function may(role) {
  return session.who && session.who.role && ROLES.indexOf(session.who.role) >= ROLES.indexOf(role);
}

async function loadStorages() {
  const rows = await api("GET", "/storage/query_storage");
  session.storages = new Map(rows.map((row) => [row.storage_id, row]));
}

function storageName(id) {
  const storage = session.storages.get(id);
  return storage ? storage.storage_name : (id ? id.slice(0, 8) : "–");
}

// --- signing in ------------------------------------------------------------------------------------

function askForToken(reason) {
  stopRefreshing();
  document.getElementById("sign-in").hidden = false;
  document.getElementById("sign-in-error").textContent = session.token ? reason : "";
  document.getElementById("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const field = document.getElementById("token");
  session.token = field.value.trim();
  field.value = "";
  try {
    await whoAmI();
    sessionStorage.setItem(TOKEN_KEY, session.token);
    document.getElementById("sign-in").hidden = true;
    route();
  } catch (error) {
    session.token = null;
    document.getElementById("sign-in-error").textContent = error.message;
  }
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  session.token = null;
  session.who = null;
  document.getElementById("who").textContent = "";
  document.getElementById("sign-out").hidden = true;
  show();
  askForToken("");
}

async function whoAmI() {
  session.who = await api("GET", "/auth/whoami");
  const who = document.getElementById("who");
  who.textContent = `${session.who.subject} · ${session.who.role || "no role"}`;
  who.title = `signed in via ${session.who.via}`;
  document.getElementById("sign-out").hidden = session.who.via === "open";
}

// --- views -----------------------------------------------------------------------------------------

function stopRefreshing() {
  clearTimeout(session.refresh);
  session.refresh = null;
}

function refreshIn(seconds, view) {
  stopRefreshing();
  session.refresh = setTimeout(() => view().catch(failed), seconds * 1000);
}

function failed(error) {
  if (error instanceof ApiError && error.status === 401) return;  // the sign-in form is up
  if (error.name === "AbortError") return;  // the user went elsewhere
  show(h("p", { class: "error" }, error.message));
}

async function overview() {
  const [data] = await Promise.all([api("GET", "/ui/overview"), loadStorages()]);
  show(
    h("h1", {}, "Overview"),
    h("h2", {}, "Storages"),
    h("div", { class: "cards" }, data.storages.map(storageCard)),
    h("div", { class: "grid2" },
      h("section", { id: "backlog" }, h("h2", {}, "Backlog"), backlog(data.backlog)),
      h("section", {}, h("h2", {}, "Copy queue"), copyQueue(data.migrations))),
    h("section", { id: "replicas" }, h("h2", {}, "Replicas by storage and state"), replicaCounts(data.replicas)),
    h("section", { id: "sites" }, h("h2", {}, "Sites"), sitesView(data.sites)),
    h("h2", {}, "Bytes copied per hour, last 24 hours"),
    chart(data.copied_per_hour),
    h("div", { class: "grid2" },
      h("section", {}, h("h2", {}, "Engines (this DLM process)"), engines(data.engines)),
      h("section", {}, h("h2", {}, "Recent storage events"), storageEvents(data.storage_events))),
  );
  refreshIn(5, overview);
}

function storageCard(storage) {
  const capacity = storage.capacity_bytes ?? storage.filesystem_total_bytes;
  const used = storage.used_bytes;
  const share = capacity ? percent(used, capacity) : 0;
  const of = capacity ? ` of ${bytes(capacity)}${storage.capacity_bytes === null ? " (file system)" : ""}` : " (no capacity known)";
  return h("div", { class: "card", "data-storage": storage.storage_name },
    h("h3", {}, h("a", { href: storageLink(storage.storage_name) }, storage.storage_name), badge(storage.storage_phase)),
    bar(share, `${bytes(used)}${of} · ${storage.objects} replicas`, { high: share >= 90, name: `${storage.storage_name} used` }),
    h("div", { class: "bar-label" }, storage.storage_interface,
      storage.filesystem_free_bytes !== null ? ` · ${bytes(storage.filesystem_free_bytes)} free on its file system` : ""));
}

// Replicas, not items: an item has a replica on each storage that holds it.
function replicaCounts(counts) {
  const cell = new Map(counts.map((row) => [`${row.storage_id}/${row.item_state}`, row.count]));
  const storages = [...new Set(counts.map((row) => row.storage_id))];
  const rows = storages.map((id) => h("tr", { "data-storage-id": id || "" },
    h("td", {}, id ? h("a", { href: storageLink(storageName(id)) }, storageName(id)) : "(no storage)"),
    STATES.map((state) => h("td", { class: "num", "data-state": state }, cell.get(`${id}/${state}`) || 0))));
  return table(["storage", ...STATES.map((state) => `${state} `)], rows, "No replica yet.");
}

// Where copy workers run, and the links between locations: limits, transfers under way, copies queued.
function sitesView(sites) {
  return h("div", { class: "grid2" },
    table(["copy workers at", "processes ", "copies at once ", "queued from there "], sites.workers.map((row) =>
      h("tr", { "data-site": row.location || "*" }, h("td", {}, row.location || "anywhere (no location)"),
        h("td", { class: "num" }, row.processes), h("td", { class: "num" }, row.copies),
        h("td", { class: "num" }, row.queued))),
      "No copy worker is running, and no copy waits."),
    h("div", {},
      sites.unplaceable ? h("p", { class: "error", id: "unplaceable" },
        `${sites.unplaceable} queued copies cannot be placed: no running worker reaches both of their storages (see Copies).`) : null,
      table(["link", "running ", "queued ", "limit"], sites.links.map((link) =>
        h("tr", { "data-link": `${link.source_location}>${link.destination_location}` },
          h("td", {}, `${link.source_location} → ${link.destination_location}`),
          h("td", { class: "num" }, link.running), h("td", { class: "num" }, link.queued),
          h("td", {}, [link.max_transfers ? `${link.max_transfers} at once` : "",
            link.max_bytes_per_second ? `${bytes(link.max_bytes_per_second)}/s` : ""].filter(Boolean).join(", ") || "none"))),
        "No copy between locations, and no link limits.")));
}

function counted(part) {
  return `${part.count.toLocaleString()}${part.more ? "+" : ""}`;
}

function backlog(data) {
  const below = data.below_target;
  const targets = Object.entries(below.by_target_phase).map(([phase, count]) => `${count} to ${phase}`).join(", ");
  const line = (key, ...content) => h("li", { "data-backlog": key }, ...content);
  return h("div", {},
    h("ul", { class: "plain" },
      line("below-target", h("strong", {}, counted(below)), " items below their target phase",
        targets ? ` (${targets})` : "", below.oldest ? [", the oldest registered ", when(below.oldest)] : ""),
      line("items-expiring", h("strong", {}, counted(data.items_expiring)), " items expire in the next 24 hours"),
      line("replicas-expiring", h("strong", {}, counted(data.replicas_expiring)),
        " replicas reach their own expiry in the next 24 hours (kept where their item needs them)"),
      line("corrupted", h("strong", {}, data.corrupted_replicas.toLocaleString()), " corrupted replicas")),
    table(["failed copies", "to", "error", "last"], data.failures.map((failure) => h("tr", {},
      h("td", { class: "num" }, failure.count),
      h("td", {}, failure.destination_storage_id ? storageName(failure.destination_storage_id) : ""),
      h("td", { title: failure.example }, failure.error), h("td", {}, failure.last ? when(failure.last) : ""))),
    "No copy has failed lately."));
}

function copyQueue(migrations) {
  const counts = Object.entries(migrations.by_status).map(([status, count]) => h("span", {}, badge(status), ` ${count}  `));
  return h("div", {},
    h("p", {}, counts),
    h("p", { class: "muted" }, migrations.oldest_due ? ["oldest copy waiting since ", when(migrations.oldest_due)] : "no copy is waiting for a worker"),
    table(["copy", "item", "to", "progress"], migrations.active.map((copy) => h("tr", {},
      h("td", {}, h("a", { href: "#/migrations" }, `#${copy.migration_id}`)),
      h("td", {}, itemLink(copy)),
      h("td", {}, storageName(copy.destination_storage_id)),
      h("td", {}, progress(copy)))), "No copy under way."));
}

function chart(hours) {
  return columns(hours.map((hour) => ({ at: hour.hour, bytes: hour.bytes })), {
    what: "bytes copied per hour", empty: "nothing copied", every: 4,
    tick: (at) => new Date(at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }),
    title: (at) => new Date(at).toLocaleString(),
  });
}

// Columns of bytes over time: points are {at, bytes}, oldest first.
function columns(points, { what, empty, every, tick, title }) {
  const width = 960, height = 180, left = 60, bottom = 22, top = 12;
  const most = Math.max(1, ...points.map((point) => point.bytes));
  const step = (width - left - 8) / points.length;
  const scale = (height - top - bottom) / most;
  const drawing = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${what}; most: ${bytes(most)}` });
  drawing.append(svg("line", { x1: left, x2: width - 4, y1: height - bottom, y2: height - bottom }));
  drawing.append(svg("text", { x: 4, y: top + 8 }, points.some((point) => point.bytes) ? bytes(most) : empty));
  drawing.append(svg("text", { x: 4, y: height - bottom }, "0"));
  points.forEach((point, index) => {
    const tall = point.bytes * scale;
    const column = svg("rect", { class: "column", x: left + index * step + 1, y: height - bottom - tall,
      width: Math.max(1, step - 2), height: tall, "data-bytes": point.bytes });
    column.append(svg("title", {}, `${title(point.at)}: ${bytes(point.bytes)}`));
    drawing.append(column);
    if (index % every === 0) drawing.append(svg("text", { x: left + index * step, y: height - 6 }, tick(point.at)));
  });
  return drawing;
}

function engines(passes) {
  const rows = Object.entries(passes).map(([name, last]) => h("tr", { "data-engine": name },
    h("td", {}, name), h("td", {}, when(last.finished)), h("td", { class: "num" }, `${last.seconds.toFixed(2)} s`),
    h("td", {}, badge(last.ok ? "ok" : "bad")), h("td", {}, last.summary)));
  return table(["engine", "last pass", "took ", "", "said"], rows, "No engine has finished a pass in this process yet.");
}

function storageEvents(events) {
  return table(["when", "storage", "event", "detail", "by"], events.map((event) => h("tr", {},
    h("td", {}, when(event.event_time)), h("td", {}, event.storage_name), h("td", {}, event.event),
    h("td", {}, event.detail || ""), h("td", {}, event.actor))), "No storage events.");
}

// Items: search by name, state, phase and storage, a page at a time.
async function items(query) {
  await loadStorages();
  const page = Math.max(0, Number(query.get("page") || 0));
  const filters = { order: "uid_creation.desc", limit: PAGE_SIZE + 1, offset: page * PAGE_SIZE };
  if (query.get("name")) filters.item_name = `ilike.*${query.get("name")}*`;
  if (query.get("state")) filters.item_state = `eq.${query.get("state")}`;
  if (query.get("phase")) filters.oid_phase = `eq.${query.get("phase")}`;
  if (query.get("storage")) filters.storage_id = `eq.${query.get("storage")}`;
  const rows = await api("GET", "/request/query_data_item", { params: JSON.stringify(filters) });
  const more = rows.length > PAGE_SIZE;
  const storages = [...session.storages.values()];
  const form = searchForm("item-search", "items", query,
    h("label", {}, "name contains", h("input", { name: "name", value: query.get("name") || "", size: 28 })),
    h("label", {}, "state", choice(query, "state", STATES)),
    h("label", {}, "phase", choice(query, "phase", PHASES)),
    h("label", {}, "storage", choice(query, "storage", storages.map((s) => s.storage_id), storages.map((s) => s.storage_name))));
  show(
    h("h1", {}, "Items"),
    form,
    table(["name", "replica", "state", "phase", "storage", "size ", "created"], rows.slice(0, PAGE_SIZE).map((row) =>
      h("tr", { "data-uid": row.uid },
        h("td", {}, h("a", { href: `#/item?uid=${row.uid}` }, row.item_name)),
        h("td", { class: "mono" }, row.uid.slice(0, 8)),
        h("td", {}, badge(row.item_state)), h("td", {}, row.oid_phase),
        h("td", {}, storageName(row.storage_id)), h("td", { class: "num" }, bytes(row.item_size)),
        h("td", {}, when(row.uid_creation)))), "No item matches."),
    pager("items", query, page, more),
  );
}

// A search form whose fields become the view's query (empty ones left out), and its pages.
function choice(query, name, options, labels = options) {
  return h("select", { name },
    h("option", { value: "" }, "any"),
    options.map((option, index) => h("option", { value: option, selected: query.get(name) === option }, labels[index])));
}

function searchForm(id, view, query, ...fields) {
  return h("form", { class: "search", id, onsubmit: (event) => {
    event.preventDefault();
    const values = new URLSearchParams(new FormData(event.target));
    for (const [name, value] of [...values]) if (!value) values.delete(name);
    location.hash = `#/${view}?${values}`;
  } }, ...fields, h("button", { type: "submit" }, "Search"));
}

function pager(view, query, page, more) {
  const link = (to) => { const next = new URLSearchParams(query); next.set("page", to); return `#/${view}?${next}`; };
  return h("div", { class: "pager" },
    page > 0 ? h("a", { href: link(page - 1) }, "‹ newer") : null,
    h("span", { class: "muted" }, `page ${page + 1}`),
    more ? h("a", { href: link(page + 1), "data-page": "older" }, "older ›") : null);
}

// One item: its facts, every replica, its history as a timeline, and its payload.
async function item(query) {
  await loadStorages();
  const named = query.get("uid") ? { uid: query.get("uid") } : { oid: query.get("oid") };
  const found = await api("GET", "/request/query_data_item", named);
  if (!found.length) { show(h("h1", {}, "No such item"), h("p", { class: "muted" }, JSON.stringify(named))); return; }
  const chosen = found[0];
  const [replicas, history] = await Promise.all([
    api("GET", "/request/query_data_item", { oid: chosen.oid }),
    api("GET", "/request/query_item_history", { oid: chosen.oid }),
  ]);
  const ready = replicas.filter((replica) => replica.item_state === "READY");
  show(
    h("h1", {}, chosen.item_name, " ", badge(chosen.oid_phase)),
    h("dl", { class: "facts" },
      h("dt", {}, "oid"), h("dd", { class: "mono" }, chosen.oid),
      h("dt", {}, "type"), h("dd", {}, chosen.item_type || "file"),
      h("dt", {}, "size"), h("dd", {}, bytes(chosen.item_size)),
      h("dt", {}, "owner"), h("dd", {}, `${chosen.item_owner} (group ${chosen.item_group})`),
      h("dt", {}, "expires"), h("dd", {}, when(chosen.uid_expiration)),
      h("dt", {}, "checksum"), h("dd", { class: "mono" }, chosen.item_checksum ? `${chosen.checksum_method || ""} ${chosen.item_checksum}` : "–")),
    h("h2", {}, `Replicas (${replicas.length})`),
    table(["replica", "storage", "state", "phase", "uri", "size ", "created"], replicas.map((replica) =>
      h("tr", { "data-uid": replica.uid, class: replica.uid === chosen.uid ? "current" : null },
        h("td", { class: "mono" }, replica.uid), h("td", {}, storageName(replica.storage_id)),
        h("td", {}, badge(replica.item_state)), h("td", {}, replica.uid_phase),
        h("td", { class: "mono" }, replica.uri || "–"), h("td", { class: "num" }, bytes(replica.item_size)),
        h("td", {}, when(replica.uid_creation))))),
    h("h2", {}, "Payload"),
    ready.length ? downloader(chosen) : h("p", { class: "muted" }, "No READY replica: nothing to download."),
    h("h2", {}, `History (${history.length})`),
    h("ol", { class: "timeline", id: "history" }, history.map((event) => h("li", { "data-event": event.event },
      when(event.event_time), h("strong", {}, event.event), " ",
      event.old_value !== null ? [h("span", { class: "muted" }, event.old_value), " → "] : "",
      event.new_value ?? "", createdWith(event.detail),
      h("span", { class: "muted" }, ` · replica ${event.uid.slice(0, 8)} · by ${event.actor}`)))),
  );
}

// A replica's creation is one event; its other initial values (where, which phase, until when) beside it.
function createdWith(detail) {
  if (!detail) return "";
  const parts = [];
  if (detail.uri) parts.push(`uri ${detail.uri}`);
  if (detail.storage_id) parts.push(`on ${storageName(detail.storage_id)}`);
  if (detail.uid_phase) parts.push(`${detail.uid_phase} (target ${detail.target_phase})`);
  if (detail.uid_expiration) parts.push(`expires ${detail.uid_expiration.slice(0, 10)}`);
  return h("span", { class: "muted" }, ` · ${parts.join(", ")}`);
}

function downloader(chosen) {
  const path = `/request/retrieve?oid=${encodeURIComponent(chosen.oid)}`;
  const name = (chosen.item_name.split("/").pop() || "payload") + (chosen.item_type === "container" ? ".tar" : "");
  const button = h("button", { type: "button", id: "download", onclick: async () => {
    // A link cannot carry the token, so the page fetches the payload and hands it to the browser;
    // for large payloads the command below streams without holding the payload in the browser.
    button.disabled = true;
    try {
      const response = await fetch(path, { headers: headers() });
      if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
      const link = h("a", { href: URL.createObjectURL(await response.blob()), download: name });
      link.click();
      setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    } catch (error) {
      toast(`Download failed: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  } }, `Download ${name}`);
  return h("div", {}, button,
    h("p", { class: "muted" }, "Large payloads stream better from the command line: ",
      h("code", {}, `dlm request get --oid ${chosen.oid}`), " or ",
      h("code", {}, `curl -H "Authorization: Bearer $DLM_TOKEN" -o ${shellQuoted(name)} ${shellQuoted(location.origin + path)}`)));
}

// One shell word whatever the text holds: an item's name is its owner's to choose, and an operator
// pastes this line into a shell ('x$(touch PWNED)' must stay a file name).
function shellQuoted(text) {
  const printable = text.replace(/[\u0000-\u001f\u007f-\u009f]/g, "_");
  return `'${printable.replace(/'/g, "'\\''")}'`;
}

// Copies: every migration the caller may see, with live progress and, for operators, cancel and retry.
// Copies: by status, storage and item, a page at a time; live while any on the page is under way.
async function migrations(query) {
  if (!session.storages.size) await loadStorages();
  const page = Math.max(0, Number(query.get("page") || 0));
  const filters = { limit: PAGE_SIZE + 1, offset: page * PAGE_SIZE };
  for (const [name, key] of [["status", "status"], ["storage", "storage_id"], ["item", "item_name"]]) {
    if (query.get(name)) filters[key] = query.get(name);
  }
  const rows = await api("GET", "/migration/query_migrations", filters);
  const more = rows.length > PAGE_SIZE;
  const active = rows.some((row) => row.status === "PENDING" || row.status === "RUNNING");
  const operator = may("operator");
  const action = (label, path, copy, style) => h("button", {
    type: "button", class: style, "data-action": label.toLowerCase(),
    disabled: !operator, title: operator ? null : "needs the operator role",
    onclick: () => act(label, path, copy.migration_id),
  }, label);
  const storages = [...session.storages.values()];
  show(
    h("h1", {}, "Copies"),
    operator ? null : h("p", { class: "muted" }, "Cancelling and retrying copies needs the operator role."),
    searchForm("copy-search", "migrations", query,
      h("label", {}, "status", choice(query, "status", MIGRATION_STATUSES)),
      h("label", {}, "storage", choice(query, "storage", storages.map((s) => s.storage_id), storages.map((s) => s.storage_name))),
      h("label", {}, "item name", h("input", { name: "item", value: query.get("item") || "", size: 28 }))),
    table(["copy", "item", "from", "to", "status", "progress", "attempts ", "queued", "finished", "last error", ""],
      rows.slice(0, PAGE_SIZE).map((copy) =>
      h("tr", { "data-migration": copy.migration_id },
        h("td", {}, `#${copy.migration_id}${copy.move ? " (move)" : ""}`),
        h("td", {}, itemLink(copy)),
        h("td", {}, storageName(copy.source_storage_id)), h("td", {}, storageName(copy.destination_storage_id)),
        h("td", { class: "status" }, badge(copy.status)), h("td", {}, progress(copy)),
        h("td", { class: "num" }, copy.attempts), h("td", {}, when(copy.date)),
        h("td", {}, copy.completion_date ? when(copy.completion_date) : ""), h("td", { class: "error" }, copy.last_error || ""),
        h("td", {},
          ["PENDING", "RUNNING"].includes(copy.status) ? action("Cancel", "/migration/cancel_migration", copy, "danger") : null,
          ["FAILED", "CANCELLED"].includes(copy.status) ? action("Retry", "/migration/retry_migration", copy, "secondary") : null))),
    operator ? "No copy matches." : "No copies of yours match (a reader sees the copies they queued)."),
    pager("migrations", query, page, more),
  );
  refreshIn(active ? 1 : 10, () => migrations(query));
}

// A copy's item by name (the id's start when its source replica is gone), linked to the item's page.
function itemLink(copy) {
  return h("a", { href: `#/item?oid=${copy.oid}`, title: copy.oid }, copy.item_name || copy.oid.slice(0, 8));
}

function storageLink(name) {
  return `#/storage?name=${encodeURIComponent(name)}`;
}

function progress(copy) {
  const done = copy.status === "SUCCEEDED" ? copy.bytes_total ?? copy.bytes_done : copy.bytes_done;
  const value = copy.status === "SUCCEEDED" ? 100 : percent(done, copy.bytes_total);
  const total = copy.bytes_total === null ? "" : ` of ${bytes(copy.bytes_total)}`;
  return bar(value, `${value} % · ${bytes(done)}${total}`, { name: `copy ${copy.migration_id}` });
}

async function act(label, path, migrationId) {
  try {
    await api("POST", path, { migration_id: migrationId });
    toast(`${label} of copy #${migrationId}: done`, true);
  } catch (error) {
    toast(`${label} of copy #${migrationId} refused: ${error.message}`);
  }
  await route();
}

// One storage: how full it is and was, its replicas, the copies into and out of it, its events.
async function storage(query) {
  await loadStorages();
  const data = await api("GET", "/ui/storage", { storage_name: query.get("name") || "" });
  const facts = data.storage;
  const capacity = facts.capacity_bytes ?? facts.filesystem_total_bytes;
  const share = capacity ? percent(facts.used_bytes, capacity) : 0;
  show(
    h("h1", {}, facts.storage_name, " ", badge(facts.storage_phase)),
    h("dl", { class: "facts", id: "storage-facts" },
      h("dt", {}, "interface"), h("dd", {}, `${facts.storage_interface} (${facts.storage_type})`),
      h("dt", {}, "root"), h("dd", { class: "mono" }, facts.root_directory),
      h("dt", {}, "state"), h("dd", {}, facts.storage_retired ? "retired" : facts.storage_available ? "available" : "unavailable",
        facts.storage_permissions === "RO" ? ", read-only" : ""),
      h("dt", {}, "holds"), h("dd", {}, `${bytes(facts.used_bytes)} in ${facts.objects.toLocaleString()} replicas`),
      h("dt", {}, "capacity"), h("dd", { id: "capacity" }, capacityFacts(facts))),
    capacity ? bar(share, `${share} % used`, { high: share >= 90, name: `${facts.storage_name} used` }) : null,
    h("h2", {}, `Held over the last ${data.fill.length} days`),
    columns(data.fill.map((day) => ({ at: day.day, bytes: day.bytes })), {
      what: `bytes DLM held on ${facts.storage_name} at the end of each day`, empty: "nothing held", every: 5,
      tick: (at) => at.slice(5), title: (at) => at,
    }),
    h("div", { class: "grid2" },
      h("section", { id: "storage-replicas" }, h("h2", {}, "Replicas by state"),
        table(STATES.map((state) => `${state} `), [h("tr", {}, STATES.map((state) =>
          h("td", { class: "num", "data-state": state }, (data.replicas[state] || 0).toLocaleString())))])),
      h("section", { id: "under-way" }, h("h2", {}, "Copies under way"),
        table(["", "PENDING ", "RUNNING "], ["in", "out"].map((way) => h("tr", { "data-way": way },
          h("td", {}, way === "in" ? "into it" : "out of it"),
          h("td", { class: "num" }, data.copies_under_way[way].PENDING),
          h("td", { class: "num" }, data.copies_under_way[way].RUNNING)))))),
    h("h2", {}, "Latest copies"),
    table(["copy", "item", "from", "to", "status", "finished", "last error"], data.latest_copies.map((copy) =>
      h("tr", { "data-migration": copy.migration_id },
        h("td", {}, h("a", { href: `#/migrations?storage=${facts.storage_id}` }, `#${copy.migration_id}`)),
        h("td", {}, itemLink(copy)), h("td", {}, storageName(copy.source_storage_id)),
        h("td", {}, storageName(copy.destination_storage_id)), h("td", {}, badge(copy.status)),
        h("td", {}, copy.completion_date ? when(copy.completion_date) : ""),
        h("td", { class: "error" }, copy.last_error || ""))), "No copy to or from this storage yet."),
    h("h2", {}, "Events"),
    table(["when", "event", "detail", "by"], data.events.map((event) => h("tr", {},
      h("td", {}, when(event.event_time)), h("td", {}, event.event), h("td", {}, event.detail || ""),
      h("td", {}, event.actor))), "No events."),
  );
  refreshIn(30, () => storage(query));
}

// S3 reports no size, so DLM knows a capacity only when it is given one: say so, and how (admins here).
function capacityFacts(facts) {
  if (facts.capacity_bytes !== null) return bytes(facts.capacity_bytes);
  const why = h("span", { class: "muted" },
    facts.filesystem_total_bytes !== null
      ? `none set: DLM may fill its file system (${bytes(facts.filesystem_total_bytes)}). `
      : facts.storage_interface === "s3"
        ? "no capacity known: an S3 bucket reports no size, so DLM counts only what it holds there. "
        : "no capacity known: DLM cannot see this storage's file system from here. ",
    "Set one so that the capacity engine and this page warn before it fills: ",
    h("code", {}, `dlm storage update ${shellQuoted(facts.storage_name)} --capacity BYTES`));
  if (!may("admin")) return why;
  const field = h("input", { name: "capacity", type: "number", min: 0, placeholder: "bytes", size: 18, required: true });
  const form = h("form", { class: "search", id: "set-capacity", onsubmit: async (event) => {
    event.preventDefault();
    try {
      await api("PATCH", "/storage/update_storage", { storage_id: facts.storage_id, storage_capacity: field.value });
      toast(`Capacity of ${facts.storage_name} set`, true);
      await route();
    } catch (error) {
      toast(`Capacity refused: ${error.message}`);
    }
  } }, h("label", {}, "capacity", field), h("button", { type: "submit" }, "Set capacity"));
  return h("div", {}, why, form);
}

// Deliveries: what was shipped where, a page at a time; the owner (or an operator) may cancel one under way.
async function deliveries(query) {
  const page = Math.max(0, Number(query.get("page") || 0));
  const rows = await api("GET", "/request/query_deliveries",
    { status: query.get("status") || "", limit: PAGE_SIZE + 1, offset: page * PAGE_SIZE });
  const active = rows.some((row) => row.status === "PENDING" || row.status === "RUNNING");
  show(
    h("h1", {}, "Deliveries"),
    searchForm("delivery-search", "deliveries", query, h("label", {}, "status", choice(query, "status", MIGRATION_STATUSES))),
    table(["delivery", "by", "items ", "to", "packaging", "status", "progress", "requested", "finished", "last error", ""],
      rows.slice(0, PAGE_SIZE).map((delivery) => h("tr", { "data-delivery": delivery.delivery_id },
        h("td", {}, `#${delivery.delivery_id}`), h("td", {}, delivery.user),
        h("td", { class: "num" }, delivery.item_count), h("td", { class: "mono" }, destinationText(delivery.destination)),
        h("td", {}, delivery.packaging), h("td", { class: "status" }, badge(delivery.status)),
        h("td", {}, bar(percent(delivery.bytes_done, delivery.bytes_total),
          `${bytes(delivery.bytes_done)} of ${bytes(delivery.bytes_total)}`, { name: `delivery ${delivery.delivery_id}` })),
        h("td", {}, when(delivery.created)), h("td", {}, delivery.finished ? when(delivery.finished) : ""),
        h("td", { class: "error" }, delivery.last_error || ""),
        h("td", {}, ["PENDING", "RUNNING"].includes(delivery.status)
          ? h("button", { type: "button", class: "danger", "data-action": "cancel", onclick: async () => {
            try {
              await api("POST", "/request/cancel_delivery", { delivery_id: delivery.delivery_id });
              toast(`Delivery #${delivery.delivery_id} cancelled`, true);
            } catch (error) {
              toast(`Cancel of delivery #${delivery.delivery_id} refused: ${error.message}`);
            }
            await route();
          } }, "Cancel") : null))),
      may("operator") ? "No delivery matches." : "No deliveries of yours match (a reader sees the deliveries they asked for)."),
    pager("deliveries", query, page, rows.length > PAGE_SIZE),
  );
  refreshIn(active ? 2 : 15, () => deliveries(query));
}

function destinationText(destination) {
  if (destination.s3) return `s3://${destination.s3.bucket}/${destination.s3.prefix || ""}`;
  if (destination.storage_name) return `${destination.storage_name}:${destination.path || ""}`;
  if (destination.posix) return destination.posix;
  return JSON.stringify(destination);
}

// API tokens, for admins: who holds which role until when; a new one's secret is shown once, here.
async function tokens() {
  if (!may("admin")) {
    show(h("h1", {}, "Tokens"), h("p", { class: "muted" }, "Managing API tokens needs the admin role."));
    return;
  }
  const name = h("input", { name: "name", required: true, size: 24 });
  const role = h("select", { name: "role" }, ROLES.map((value) => h("option", { value }, value)));
  const expires = h("input", { name: "expires", placeholder: "e.g. 90d (empty: never)", size: 18 });
  const secret = h("div", { id: "new-secret", hidden: true });
  const form = h("form", { class: "search", id: "create-token", onsubmit: async (event) => {
    event.preventDefault();
    try {
      const made = await api("POST", "/auth/create_token", { name: name.value, role: role.value, expires: expires.value });
      secret.replaceChildren(
        h("p", {}, h("strong", {}, `The secret of ${name.value}'s token, shown this once: `), "DLM keeps only its hash."),
        h("code", { class: "secret" }, made));
      secret.hidden = false;
      name.value = expires.value = "";
      await tokenTable();
    } catch (error) {
      toast(`Token refused: ${error.message}`);
    }
  } }, h("label", {}, "name", name), h("label", {}, "role", role), h("label", {}, "expires", expires),
  h("button", { type: "submit" }, "Create token"));
  const list = h("section", { id: "token-list" });
  async function tokenTable() {
    const current = await api("GET", "/auth/list_tokens");
    list.replaceChildren(table(["name", "role", "created", "by", "expires", "last used", ""], current.map((token) =>
      h("tr", { "data-token": token.name },
        h("td", {}, token.name), h("td", {}, token.role), h("td", {}, when(token.created)), h("td", {}, token.created_by),
        h("td", {}, token.expires ? when(token.expires) : "never"), h("td", {}, token.last_used ? when(token.last_used) : "never"),
        h("td", {}, h("button", { type: "button", class: "danger", "data-action": "revoke", onclick: async () => {
          try {
            await api("POST", "/auth/revoke_token", { name: token.name });
            toast(`Token ${token.name} revoked`, true);
          } catch (error) {
            toast(`Revoking ${token.name} refused: ${error.message}`);
          }
          await tokenTable();
        } }, "Revoke")))), "No API token yet."));
  }
  await tokenTable();
  show(h("h1", {}, "Tokens"), form, secret, list);
}

// --- routing ---------------------------------------------------------------------------------------

const VIEWS = { "": overview, items, item, migrations, storage, deliveries, tokens };

async function route() {
  stopRefreshing();
  session.requests.abort();
  session.requests = new AbortController();
  const [path, search] = location.hash.replace(/^#\/?/, "").split("?");
  const view = VIEWS[path] || overview;
  for (const link of document.querySelectorAll("nav a[data-page]")) {
    link.classList.toggle("current", link.dataset.page === (path || "overview") || (path === "item" && link.dataset.page === "items"));
  }
  if (!session.who) {
    try { await whoAmI(); } catch (error) { if (!(error instanceof ApiError && error.status === 401)) failed(error); return; }
  }
  for (const link of document.querySelectorAll("nav a[data-role]")) link.hidden = !may(link.dataset.role);
  try {
    await view(new URLSearchParams(search || ""));
  } catch (error) {
    failed(error);
  }
}

document.getElementById("sign-in-form").addEventListener("submit", signIn);
document.getElementById("sign-out").addEventListener("click", signOut);
window.addEventListener("hashchange", route);
route();
