// Conveyor web UI: plain JavaScript, no build step. It talks to the API with the same calls as any client.
// Every piece of server data reaches the page as a text node or an attribute value, never as markup.
"use strict";

(() => {
  const TOKEN_KEY = "conveyor-token";
  const TASK_STATUSES = ["queued", "in_progress", "completed", "failed", "stopped"];
  const STATUS_LABELS = {
    created: "Draft", queued: "Queued", in_progress: "Running", stopping: "Stopping", completed: "Completed",
    failed: "Failed", stopped: "Stopped", published: "Published", publishing: "Publishing", closed: "Closed",
  };
  const ENQUEUABLE = new Set(["created", "stopped", "failed", "completed", "closed"]);
  const PALETTE = ["#2f66e8", "#e0762b", "#1f9d63", "#c23b8a", "#7d55d6", "#1a9bb0", "#c8a11a", "#d0433b"];
  const LOG_BATCH = 1000;
  const LOG_MAX_LINES = 20000;

  // --- DOM helpers: text only -----------------------------------------------------------------------------------
  const $ = (selector, root = document) => root.querySelector(selector);
  const PROPS = new Set(["value", "checked", "disabled", "selected", "hidden", "open"]);

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    const props = {};
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "style") Object.assign(el.style, value);
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
      else if (PROPS.has(key)) props[key] = value;
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    append(el, children);
    Object.assign(el, props); // after the children: a <select>'s value needs its options
    return el;
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) el.setAttribute(key, String(value));
    }
    return append(el, children);
  }

  const link = (href, ...children) => h("a", { href }, ...children);
  const taskHref = (id, tab) => "#/task/" + encodeURIComponent(id) + (tab ? "/" + tab : "");
  const projectTasksHref = (id) => "#/tasks/project/" + encodeURIComponent(id);

  // --- formatting -----------------------------------------------------------------------------------------------
  function toMs(value) {
    if (value === null || value === undefined || value === "") return null;
    if (typeof value === "number") return value > 1e11 ? value : value * 1000;
    const ms = Date.parse(value);
    return Number.isNaN(ms) ? null : ms;
  }

  function duration(ms) {
    let s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + "s";
    let m = Math.floor(s / 60);
    s %= 60;
    if (m < 60) return m + "m " + s + "s";
    let hrs = Math.floor(m / 60);
    m %= 60;
    if (hrs < 24) return hrs + "h " + m + "m";
    const days = Math.floor(hrs / 24);
    hrs %= 24;
    return days + "d " + hrs + "h";
  }

  const agoText = (ms) => (Date.now() - ms < 5000 ? "just now" : duration(Date.now() - ms) + " ago");
  const dateText = (ms) => new Date(ms).toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
  });
  const clockText = (ms) => new Date(ms).toLocaleTimeString(undefined, { hour12: false });

  // "3m 2s ago" (kept current by the ticker below) with the exact time as a tooltip.
  function ago(value) {
    const ms = toMs(value);
    if (ms === null) return h("span", { class: "faint" }, "—");
    return h("span", { class: "nowrap", title: dateText(ms), dataset: { ago: String(ms) } }, agoText(ms));
  }
  // A running duration since `value` ("4m 10s").
  function since(value) {
    const ms = toMs(value);
    if (ms === null) return h("span", { class: "faint" }, "—");
    return h("span", { class: "nowrap", title: "since " + dateText(ms), dataset: { since: String(ms) } }, duration(Date.now() - ms));
  }
  function when(value) {
    const ms = toMs(value);
    return ms === null ? h("span", { class: "faint" }, "—") : h("span", { title: new Date(ms).toISOString() }, dateText(ms));
  }
  setInterval(() => {
    for (const el of document.querySelectorAll("[data-ago]")) el.textContent = agoText(Number(el.dataset.ago));
    for (const el of document.querySelectorAll("[data-since]")) el.textContent = duration(Date.now() - Number(el.dataset.since));
  }, 1000);

  const number = (n, digits = 0) => Number(n).toLocaleString(undefined, { maximumFractionDigits: digits });
  const dash = (value) => (value === null || value === undefined || value === "" ? h("span", { class: "faint" }, "—") : String(value));
  const mean = (v) => (Array.isArray(v) ? (v.length ? v.reduce((a, b) => a + Number(b), 0) / v.length : null) : (typeof v === "number" ? v : null));
  const asList = (v) => (Array.isArray(v) ? v : v === null || v === undefined ? [] : [v]);

  // user:password@ in a repository URL is never shown.
  function safeUrl(url) {
    return String(url || "").replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/@\s]*@/i, "$1");
  }

  function statusOf(task) {
    if (task.status === "in_progress" && task.status_message === "stopping") return "stopping";
    return task.status || "created";
  }
  function badge(task) {
    const status = statusOf(task);
    return h("span", { class: "badge st-" + status, title: status }, STATUS_LABELS[status] || status);
  }
  const isActive = (task) => task && (task.status === "queued" || task.status === "in_progress");

  // --- API ------------------------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(endpoint, status, subcode, message) {
      super(message);
      this.endpoint = endpoint;
      this.status = status;
      this.subcode = subcode;
    }
  }

  const session = { token: sessionStorage.getItem(TOKEN_KEY) || "" };

  async function request(endpoint, init) {
    let response;
    try {
      response = await fetch("/" + endpoint, init);
    } catch (err) {
      throw new ApiError(endpoint, 0, 0, "Cannot reach the Conveyor server (" + (err.message || err) + ")");
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch (_) { /* not JSON: a proxy error page, say */ }
    const meta = (payload && payload.meta) || {};
    const code = meta.result_code || response.status;
    if (!response.ok || code >= 400) {
      const message = meta.result_msg || "HTTP " + response.status + " " + (response.statusText || "error");
      throw new ApiError(endpoint, code, meta.result_subcode || 0, message);
    }
    return (payload && payload.data) || {};
  }

  async function api(endpoint, body) {
    try {
      return await request(endpoint, {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: "Bearer " + session.token },
        body: JSON.stringify(body || {}),
      });
    } catch (err) {
      if (err.status === 401) signOut("Your session has ended (" + err.message.replace(/\.$/, "") + "). Sign in again.");
      throw err;
    }
  }

  // A file on this server's files endpoint, fetched with the session's token (an <img> or a plain link would carry
  // none). `serverFile` says whether a URL is one: same origin and under /files/, so the token never goes elsewhere.
  function serverFile(url) {
    try {
      const u = new URL(String(url || ""), location.href);
      if (u.origin === location.origin && u.pathname.startsWith("/files/")) return u.pathname + u.search;
    } catch (_) { /* not a URL */ }
    return null;
  }
  async function fetchFile(path) {
    let response;
    try {
      response = await fetch(path, { headers: { Authorization: "Bearer " + session.token } });
    } catch (err) {
      throw new ApiError(path, 0, 0, "Cannot reach the Conveyor server (" + (err.message || err) + ")");
    }
    if (!response.ok) throw new ApiError(path, response.status, 0, "Cannot download " + path + " (HTTP " + response.status + ")");
    return response.blob();
  }

  async function signIn(key, secret) {
    const bytes = new TextEncoder().encode(key + ":" + secret);
    const basic = btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(""));
    const data = await request("auth.login", { method: "GET", headers: { Authorization: "Basic " + basic } });
    if (!data.token) throw new ApiError("auth.login", 500, 0, "The server answered the login without a token");
    session.token = data.token;
    sessionStorage.setItem(TOKEN_KEY, data.token);
  }

  function claims() {
    try {
      const part = session.token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(part), (c) => c.charCodeAt(0))));
    } catch (_) {
      return {};
    }
  }

  // --- error banner and toasts ----------------------------------------------------------------------------------
  function errorNode(err, onClose) {
    const where = err && err.endpoint ? err.endpoint + (err.status ? " · " + err.status + (err.subcode ? "/" + err.subcode : "") : "") : "";
    return h("div", { class: "banner", role: "alert" },
      h("span", { class: "msg" }, h("strong", null, "Error: "), (err && err.message) || String(err)),
      where ? h("span", { class: "where" }, where) : null,
      onClose ? h("button", { type: "button", title: "Dismiss", "aria-label": "Dismiss", onclick: onClose }, "×") : null);
  }

  let bannerSource = "";
  function reportError(err, source = "action") {
    if (err && err.status === 401) return; // the login screen says it
    if (!(err instanceof ApiError) && !(err && err.user)) console.error(err); // err.user: the user's input was refused
    const wrap = $("#banner-wrap");
    const node = errorNode(err, () => { wrap.hidden = true; bannerSource = ""; });
    node.id = "banner";
    $("#banner").replaceWith(node);
    wrap.hidden = false;
    bannerSource = source;
  }
  function clearError(source) {
    if (bannerSource === source) {
      $("#banner-wrap").hidden = true;
      bannerSource = "";
    }
  }

  function toast(text, href, label) {
    const el = h("div", { class: "toast", role: "status" }, text, href ? link(href, label || "Open") : null);
    $("#toasts").append(el);
    setTimeout(() => el.remove(), 4500);
  }

  // --- menus and dialogs ----------------------------------------------------------------------------------------
  let openMenu = null;
  function closeMenu() {
    if (openMenu) openMenu.remove();
    openMenu = null;
  }
  document.addEventListener("click", (e) => {
    // A click outside closes the menu; a click on the button that opened it is left to that button (a toggle).
    if (openMenu && !openMenu.contains(e.target) && !openMenu.anchor.contains(e.target)) closeMenu();
  }, true);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeMenu(); });
  window.addEventListener("resize", closeMenu);

  function showMenu(anchor, items) {
    closeMenu();
    const menu = h("div", { class: "menu", role: "menu" }, items.map((item) => (item === "-" ? h("hr") :
      h("button", {
        type: "button", role: "menuitem", class: item.danger ? "danger" : "", disabled: !!item.disabled, title: item.title,
        onclick: () => { closeMenu(); item.run(); },
      }, item.label))));
    menu.anchor = anchor;
    document.body.append(menu);
    const box = anchor.getBoundingClientRect();
    const left = Math.max(8, Math.min(box.right - menu.offsetWidth, window.innerWidth - menu.offsetWidth - 8));
    let top = box.bottom + 4;
    if (top + menu.offsetHeight > window.innerHeight - 8) top = box.top - menu.offsetHeight - 4;
    menu.style.left = left + window.scrollX + "px";
    menu.style.top = Math.max(8, top) + window.scrollY + "px";
    openMenu = menu;
    const first = menu.querySelector("button:not(:disabled)");
    if (first) first.focus();
  }

  // A modal with a confirm button; `run` does the work (its errors show inside the dialog). Resolves with what
  // `run` returned, or null when cancelled.
  function modal({ title, body, confirm, danger, run }) {
    return new Promise((resolve) => {
      const errorSlot = h("div");
      const ok = h("button", { type: "submit", class: "btn " + (danger ? "btn-danger-solid" : "btn-primary") }, confirm);
      const form = h("form", { method: "dialog" },
        h("div", { class: "modal-head" }, h("h2", null, title)),
        h("div", { class: "modal-body" }, errorSlot, body),
        h("div", { class: "modal-foot" },
          h("button", { type: "button", class: "btn", onclick: () => dlg.close() }, "Cancel"), ok));
      const dlg = h("dialog", { class: "modal" }, form);
      let result = null;
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        ok.disabled = true;
        try {
          result = await run();
          if (result === undefined) result = true;
          dlg.close();
        } catch (err) {
          if (err.status === 401) { dlg.close(); return; }
          errorSlot.replaceChildren(errorNode(err));
          ok.disabled = false;
        }
      });
      dlg.addEventListener("close", () => {
        dlg.remove();
        resolve(result);
        refreshView();
      });
      document.body.append(dlg);
      dlg.showModal();
      const field = dlg.querySelector("input, select");
      (field || ok).focus();
      if (field && field.select) field.select();
    });
  }

  const uiBusy = () => !!(openMenu || document.querySelector("dialog[open]"));

  // --- polling: no overlap, paused while the tab is hidden or a dialog is open ----------------------------------
  class Poller {
    constructor(fn, ms) {
      this.fn = fn;
      this.ms = ms;
      this.timer = null;
      this.running = false;
      this.stopped = false;
      this.onVisible = () => { if (!document.hidden) this.kick(); };
      document.addEventListener("visibilitychange", this.onVisible);
    }
    start() { this.kick(); return this; }
    schedule() {
      if (!this.stopped && !this.timer && !document.hidden) this.timer = setTimeout(() => this.tick(), this.ms);
    }
    async tick() {
      this.timer = null;
      if (this.stopped || document.hidden) return;
      if (uiBusy()) { this.schedule(); return; }
      this.running = true;
      try {
        await this.fn();
        if (!this.stopped) clearError("refresh");
      } catch (err) {
        if (!this.stopped) reportError(err, "refresh");
      } finally {
        this.running = false;
      }
      this.schedule();
    }
    kick() {
      if (this.stopped || this.running) return;
      clearTimeout(this.timer);
      this.timer = null;
      this.tick();
    }
    stop() {
      this.stopped = true;
      clearTimeout(this.timer);
      document.removeEventListener("visibilitychange", this.onVisible);
    }
  }

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
  }

  // --- names of projects, queues and users (cached) -------------------------------------------------------------
  const names = { projects: new Map(), queues: new Map(), users: new Map(), projectsAt: 0, queuesAt: 0, usersAt: 0 };

  // Tasks name their owner by id; the UI shows the user's name.
  async function userNames(ids) {
    const missing = ids.some((id) => id && !names.users.has(id));
    if (Date.now() - names.usersAt > 30000 || (missing && Date.now() - names.usersAt > 5000)) {
      names.usersAt = Date.now();
      const data = await api("users.get_all", {});
      names.users = new Map((data.users || []).map((u) => [u.id, u.name]));
    }
    return names.users;
  }

  async function projectNames(ids) {
    const missing = ids.some((id) => id && !names.projects.has(id));
    if (Date.now() - names.projectsAt > 30000 || (missing && Date.now() - names.projectsAt > 5000)) {
      names.projectsAt = Date.now();
      const data = await api("projects.get_all", { only_fields: ["id", "name"], search_hidden: true });
      names.projects = new Map((data.projects || []).map((p) => [p.id, p.name]));
    }
    return names.projects;
  }

  async function queueList(force) {
    if (force || Date.now() - names.queuesAt > 10000) {
      names.queuesAt = Date.now();
      const data = await api("queues.get_all", { only_fields: ["id", "name", "system_tags"], order_by: ["name"] });
      names.queueDocs = data.queues || [];
      names.queues = new Map(names.queueDocs.map((q) => [q.id, q.name]));
    }
    return names.queueDocs || [];
  }

  // --- task actions (list rows and the detail page share them) --------------------------------------------------
  const taskActions = {
    async abort(task) {
      await api("tasks.stop", { task: task.id });
      toast("Abort requested for “" + task.name + "”");
    },
    async enqueue(task) {
      const queues = await queueList(true);
      if (!queues.length) {
        reportError(new Error("There is no queue yet: create one on the Queues page first."));
        return null;
      }
      const preferred = queues.find((q) => (q.system_tags || []).includes("default")) || queues[0];
      const select = h("select", { class: "select", value: preferred.id },
        queues.map((q) => h("option", { value: q.id }, q.name)));
      const done = await modal({
        title: "Enqueue task",
        body: [h("div", null, "Put ", h("b", null, task.name), " on a queue; a worker that listens to it will run it."),
          h("label", { class: "field" }, "Queue", select)],
        confirm: "Enqueue",
        run: () => api("tasks.enqueue", { task: task.id, queue: select.value }),
      });
      if (done) toast("Enqueued “" + task.name + "” on " + (names.queues.get(select.value) || "the queue"));
      return done;
    },
    async reset(task) {
      return modal({
        title: "Reset task",
        body: [h("div", null, "Reset ", h("b", null, task.name), " to a draft? Its log, scalars and run times are deleted; "
          + "the code, arguments and environment stay.")],
        confirm: "Reset",
        danger: true,
        run: () => api("tasks.reset", { task: task.id, force: true }),
      });
    },
    async clone(task) {
      const input = h("input", { class: "input", value: "Clone of " + task.name, required: true, maxlength: "512" });
      const created = await modal({
        title: "Clone task",
        body: [h("div", null, "Create a draft with the same code, arguments and environment."),
          h("label", { class: "field" }, "Name of the new task", input)],
        confirm: "Clone",
        run: async () => (await api("tasks.clone", { task: task.id, new_task_name: input.value.trim() || task.name })).id,
      });
      return created;
    },
    async remove(task) {
      return modal({
        title: "Delete task",
        body: [h("div", null, "Delete ", h("b", null, task.name), " and its log for good? This cannot be undone."),
          task.status === "in_progress" ? h("div", { class: "muted" }, "It is running: its worker will find it gone.") : null],
        confirm: "Delete",
        danger: true,
        run: () => api("tasks.delete", { task: task.id, force: true }),
      });
    },
  };

  // The actions a task's status allows, as menu items or buttons; `after(kind, result)` runs on success.
  function actionItems(task, after) {
    const status = task.status || "created";
    const wrap = (kind, fn) => async () => {
      try {
        const result = await fn(task);
        if (result !== null && result !== false) after(kind, result);
      } catch (err) {
        reportError(err);
      }
    };
    return [
      { label: "Abort", disabled: !isActive(task) || statusOf(task) === "stopping", title: "Stop this queued or running task", run: wrap("abort", taskActions.abort) },
      { label: "Enqueue…", disabled: !ENQUEUABLE.has(status), title: "Put this task on a queue", run: wrap("enqueue", taskActions.enqueue) },
      { label: "Reset…", disabled: status === "created", title: "Back to draft, dropping its log", run: wrap("reset", taskActions.reset) },
      { label: "Clone…", title: "Copy as a new draft", run: wrap("clone", taskActions.clone) },
      "-",
      { label: "Delete…", danger: true, run: wrap("delete", taskActions.remove) },
    ];
  }

  // --- views ----------------------------------------------------------------------------------------------------
  let view = null; // { name, destroy(), refresh(), ... }
  function refreshView() { if (view && view.refresh) view.refresh(); }

  function pageHead(title, ...extra) {
    return h("div", { class: "page-head" }, h("h1", null, title), ...extra);
  }
  function liveBadge() {
    const el = h("span", { class: "live", title: "Refreshes every 2 seconds while this tab is visible" }, "Live");
    const update = () => { el.classList.toggle("paused", document.hidden); el.textContent = document.hidden ? "Paused" : "Live"; };
    document.addEventListener("visibilitychange", update);
    return el;
  }

  // Tasks ---------------------------------------------------------------------------------------------------------
  const tasksState = { status: "all", name: "", page: 0, pageSize: 50, order: "-created", project: "" };
  const TASK_FIELDS = ["id", "name", "type", "project", "user", "status", "status_reason", "status_message",
    "last_update", "created", "last_worker", "execution.queue", "failure_class"];
  // A status reason with its failure class (infrastructure: retried when the task's `retries` allow; task: never).
  const reasonOf = (task) => task.status_reason && task.failure_class
    ? `${task.status_reason} [${task.failure_class}]` : task.status_reason;
  // A task's failed runs (Conveyor's `attempts`), one a line: "#1 on host:0: worker lost [infrastructure], retried".
  const attemptsOf = (task) => (task.attempts || []).map((a) => `#${a.attempt}${a.worker ? " on " + a.worker : ""}: `
    + `${a.reason} [${a.failure_class}]${a.retried ? ", retried" : ""}`).join("\n");

  // The task list, of every project or of one (#/tasks/project/<id>, from the projects page).
  function tasksView(main, project) {
    document.title = "Tasks · Conveyor";
    const state = tasksState;
    if (state.project !== project) { state.project = project; state.page = 0; }
    const projectLabel = h("span");
    const projectFilter = project ? h("span", { class: "pill pill-accent project-filter" }, "Project: ", projectLabel,
      h("a", { href: "#/tasks", title: "Show every project's tasks", "aria-label": "Clear the project filter" }, "×")) : null;
    const tbody = h("tbody");
    const pageLabel = h("span");
    const prev = h("button", { class: "btn btn-sm", type: "button", onclick: () => { state.page = Math.max(0, state.page - 1); reload(); } }, "‹ Prev");
    const next = h("button", { class: "btn btn-sm", type: "button", onclick: () => { state.page += 1; reload(); } }, "Next ›");
    const size = h("select", {
      class: "select", title: "Tasks per page", value: String(state.pageSize),
      onchange: () => { state.pageSize = Number(size.value); state.page = 0; reload(); },
    }, [25, 50, 100, 200].map((n) => h("option", { value: String(n) }, n + " / page")));
    const search = h("input", {
      class: "input", type: "search", placeholder: "Search names (regex)", value: state.name,
      spellcheck: "false", "aria-label": "Filter by name",
      oninput: debounce(() => { state.name = search.value.trim(); state.page = 0; reload(); }, 300),
    });
    const filters = [["all", "All"], ...TASK_STATUSES.map((s) => [s, STATUS_LABELS[s]])];
    const seg = h("div", { class: "segmented", role: "group", "aria-label": "Status" },
      filters.map(([value, label]) => h("button", {
        type: "button", class: "seg" + (state.status === value ? " active" : ""), dataset: { status: value },
        onclick: () => {
          state.status = value;
          state.page = 0;
          for (const b of seg.children) b.classList.toggle("active", b.dataset.status === value);
          reload();
        },
      }, label)));
    // [sort field, label, class]: the col-wide columns fold away on a narrow window (app.css).
    const columns = [["name", "Name"], [null, "Project", "col-wide"], [null, "Owner", "col-wide"], ["status", "Status"],
      [null, "Status reason", "col-wide"], [null, "Worker", "col-wide"], ["created", "Created", "col-wide"], ["last_update", "Last update"], [null, ""]];
    const headRow = h("tr");
    const renderHead = () => {
      headRow.replaceChildren(...columns.map(([field, label, cls]) => {
        if (!field) return h("th", { class: label ? cls || "" : "actions" }, label);
        const desc = state.order === "-" + field;
        const asc = state.order === field;
        return h("th", {
          class: "sortable " + (cls || ""), title: "Sort by " + label.toLowerCase(),
          onclick: () => { state.order = desc ? field : "-" + field; state.page = 0; renderHead(); reload(); },
        }, label, desc ? h("span", { class: "arrow" }, "↓") : asc ? h("span", { class: "arrow" }, "↑") : null);
      }));
    };
    renderHead();
    const table = h("table", { class: "table" }, h("thead", null, headRow), tbody);
    const content = h("div", { class: "card table-wrap" }, table);
    main.append(
      pageHead("Tasks", projectFilter, liveBadge()),
      h("div", { class: "toolbar" }, seg, search, h("div", { class: "spacer" }), h("div", { class: "pager" }, prev, pageLabel, next, size)),
      content);

    let lastKey = "";
    async function load() {
      const body = { only_fields: TASK_FIELDS, order_by: [state.order], page: state.page, page_size: state.pageSize };
      if (state.status !== "all") body.status = [state.status];
      if (state.name) body.name = state.name;
      if (project) body.project = [project];
      let data;
      try {
        data = await api("tasks.get_all", body);
        search.classList.remove("invalid");
      } catch (err) {
        if (state.name && err.status === 400) search.classList.add("invalid");
        throw err;
      }
      const tasks = data.tasks || [];
      const [projects, users] = await Promise.all([projectNames([...tasks.map((t) => t.project), project]),
        userNames(tasks.map((t) => t.user))]);
      if (project) projectLabel.textContent = projects.get(project) || project;
      const key = JSON.stringify([tasks, state, [...projects], [...users]]);
      if (key === lastKey) return;
      lastKey = key;
      render(tasks, projects, users);
    }

    function render(tasks, projects, users) {
      prev.disabled = state.page === 0;
      next.disabled = tasks.length < state.pageSize;
      pageLabel.textContent = "Page " + (state.page + 1);
      if (!tasks.length) {
        const filtered = state.status !== "all" || state.name;
        tbody.replaceChildren(h("tr", null, h("td", { colspan: String(columns.length) }, h("div", { class: "empty" },
          state.page > 0 ? [h("strong", null, "No more tasks"), "Go back to the previous page."]
            : filtered ? [h("strong", null, "No tasks match"), "Change the status filter or the name pattern."]
              : [h("strong", null, "No tasks yet"), "Create one with ", h("code", null, "conveyor task create"),
                " or the clearml SDK, then enqueue it."]))));
        return;
      }
      tbody.replaceChildren(...tasks.map((task) => {
        const menuButton = h("button", {
          type: "button", class: "btn btn-sm btn-icon", title: "Actions", "aria-haspopup": "menu",
          onclick: (e) => {
            e.stopPropagation();
            if (openMenu && openMenu.anchor === menuButton) { closeMenu(); return; }
            showMenu(menuButton, actionItems(task, onAction));
          },
        }, "⋯");
        const message = statusOf(task) === "stopping" ? "" : task.status_message; // the badge says "Stopping"
        const reason = [reasonOf(task), message].filter(Boolean).join(" · ");
        return h("tr", null,
          h("td", { class: "cell-name" }, link(taskHref(task.id), task.name || "(unnamed)"),
            h("span", { class: "cell-id", title: task.id }, task.id + (task.type ? "  ·  " + task.type : ""))),
          h("td", { class: "col-wide" }, task.project ? h("a", { class: "clip", title: task.project, href: projectTasksHref(task.project) },
            projects.get(task.project) || task.project) : dash()),
          h("td", { class: "nowrap col-wide" }, task.user ? h("span", { class: "clip", title: task.user }, users.get(task.user) || task.user) : dash()),
          h("td", null, badge(task)),
          h("td", { class: "muted col-wide" }, reason ? h("span", { class: "clip", title: reason }, reason) : dash()),
          h("td", { class: "mono small col-wide" }, task.last_worker ? link("#/workers", h("span", { class: "clip", title: task.last_worker }, task.last_worker)) : dash()),
          h("td", { class: "col-wide" }, ago(task.created)),
          h("td", null, ago(task.last_update)),
          h("td", { class: "actions" }, menuButton));
      }));
    }

    function onAction(kind, result) {
      if (kind === "clone") toast("Cloned as a new draft", taskHref(result, "execution"), "Edit");
      if (kind === "delete") toast("Task deleted");
      if (kind === "reset") toast("Task reset to draft");
      poller.kick();
    }

    const poller = new Poller(load, 2000).start();
    function reload() { lastKey = ""; poller.kick(); }
    return { name: "tasks", destroy: () => poller.stop(), refresh: () => poller.kick() };
  }

  // Task detail ---------------------------------------------------------------------------------------------------
  const ANSI = /\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Za-z0-9]|\x1b[=>]/g;
  // A log message as a terminal would end up showing it: no colour codes, a carriage return overwrites the line.
  function cleanLog(msg) {
    const text = String(msg === null || msg === undefined ? "" : msg).replace(ANSI, "").replace(/\r\n/g, "\n").replace(/\n$/, "");
    if (!text.includes("\r")) return text;
    return text.split("\n").map((line) => {
      const parts = line.split("\r").filter((p) => p !== "");
      return parts.length ? parts[parts.length - 1] : "";
    }).join("\n");
  }

  // The task view's tabs besides the log, registered by the view files (task_edit.js, task_tabs.js) by route name
  // (#/task/<id>/<key>): taskTabs[key] = { label, order, create(ctx) } where ctx = { id, after(kind, result),
  // reload(), shown(key) } and create returns { panel, update(task) (each refresh of the task; fetch what the tab
  // needs), count(task) (a number for the tab's badge, optional), destroy() (optional) }.
  const taskTabs = {};

  // Log search: a case-insensitive plain-text match, highlighted with <mark>, optionally hiding the other lines.
  function logSearch(logBox) {
    const input = h("input", { class: "input input-sm", type: "search", placeholder: "Search the log", spellcheck: "false",
      "aria-label": "Search the log" });
    const only = h("input", { type: "checkbox" });
    const counter = h("span", { class: "log-count" });
    const state = { query: "", marks: [], at: -1 };
    const prev = h("button", { type: "button", class: "btn btn-sm btn-dark", title: "Previous match (Shift+Enter)", onclick: () => jump(-1) }, "↑");
    const next = h("button", { type: "button", class: "btn btn-sm btn-dark", title: "Next match (Enter)", onclick: () => jump(1) }, "↓");

    // Marks the matches in one line; true when it has any.
    function markLine(ln) {
      const msg = ln.querySelector(".msg");
      const text = ln.logText;
      if (!state.query) {
        if (msg.childElementCount) msg.textContent = text;
        ln.classList.remove("no-match");
        return false;
      }
      const lower = text.toLowerCase();
      let from = 0;
      let hit = lower.indexOf(state.query);
      if (hit < 0) {
        if (msg.childElementCount) msg.textContent = text;
        ln.classList.toggle("no-match", only.checked);
        return false;
      }
      const parts = [];
      while (hit >= 0) {
        parts.push(text.slice(from, hit), h("mark", null, text.slice(hit, hit + state.query.length)));
        from = hit + state.query.length;
        hit = lower.indexOf(state.query, from);
      }
      parts.push(text.slice(from));
      msg.replaceChildren(...parts.filter((p) => p !== ""));
      ln.classList.remove("no-match");
      return true;
    }
    function count() {
      state.marks = [...logBox.querySelectorAll("mark")];
      if (state.at >= state.marks.length) state.at = state.marks.length - 1;
      counter.textContent = !state.query ? "" : state.marks.length ? (state.at + 1 || "–") + " / " + number(state.marks.length) : "no matches";
      prev.disabled = next.disabled = !state.marks.length;
    }
    function jump(step) {
      if (!state.marks.length) return;
      if (state.at >= 0) state.marks[state.at].classList.remove("current");
      state.at = (state.at + step + state.marks.length) % state.marks.length;
      const mark = state.marks[state.at];
      mark.classList.add("current");
      // Within the log's own box: the page itself does not scroll.
      logBox.scrollTop += mark.getBoundingClientRect().top - logBox.getBoundingClientRect().top - logBox.clientHeight / 2;
      count();
    }
    function apply() {
      state.query = input.value.toLowerCase();
      state.at = -1;
      for (const ln of logBox.querySelectorAll(".ln")) markLine(ln);
      count();
      if (state.marks.length) jump(1);
    }
    input.addEventListener("input", debounce(apply, 200));
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); jump(e.shiftKey ? -1 : 1); } });
    only.addEventListener("change", apply);
    prev.disabled = next.disabled = true;
    const bar = h("div", { class: "log-search" }, input, counter, prev, next, h("label", { class: "check" }, only, "Only matching lines"));
    return { bar, markLine, added: () => { if (state.query) count(); }, active: () => !!state.query };
  }

  function taskView(main, id, initialTab) {
    let tab = initialTab;
    let task = null;
    let gone = false;
    const header = h("div");
    const facts = h("div", { class: "card" });
    const ctx = { id, after: (kind, result) => after(kind, result), reload: () => taskPoller.kick(), shown: (key) => tab === key };
    const extra = Object.entries(taskTabs).sort((a, b) => (a[1].order || 0) - (b[1].order || 0))
      .map(([key, spec]) => ({ key, spec, tab: spec.create(ctx) }));
    const tabLinks = {};
    const counts = {};
    const tabs = h("nav", { class: "tabs", "aria-label": "Task" }, [["log", "Log"], ...extra.map((t) => [t.key, t.spec.label])].map(([key, label]) => {
      counts[key] = h("span", { class: "count", hidden: true });
      tabLinks[key] = h("a", { href: taskHref(id, key), dataset: { tab: key } }, label, counts[key]);
      return tabLinks[key];
    }));

    // log
    const logBox = h("div", { class: "log wrap", role: "log", "aria-live": "off" });
    const logEmpty = h("div", { class: "note" }, "Loading the log…");
    logBox.append(logEmpty);
    const lineCount = h("span", null, "");
    const follow = h("input", { type: "checkbox", checked: true });
    const wrapLines = h("input", { type: "checkbox", checked: true, onchange: () => logBox.classList.toggle("wrap", wrapLines.checked) });
    const following = h("span", { class: "live" }, "Following");
    const search = logSearch(logBox);
    const logPanel = h("div", { class: "log-wrap" },
      h("div", { class: "log-bar" }, lineCount, following, h("div", { class: "spacer" }), search.bar,
        h("label", { class: "check" }, follow, "Scroll to new lines"), h("label", { class: "check" }, wrapLines, "Wrap lines")),
      logBox);
    const log = { scroll: "", lines: 0, trimmed: 0, loaded: false, tail: 0 };

    const body = h("div");
    const panels = { log: logPanel };
    for (const t of extra) panels[t.key] = t.tab.panel;
    main.append(header, facts, tabs, body);

    async function updateTabs() {
      if (!task) return;
      await Promise.all(extra.map(async (t) => {
        if (t.tab.count) {
          const n = t.tab.count(task);
          counts[t.key].hidden = !n;
          counts[t.key].textContent = String(n || "");
        }
        await t.tab.update(task);
      }));
    }

    function setTab(next) {
      tab = panels[next] ? next : "log";
      for (const [key, a] of Object.entries(tabLinks)) a.classList.toggle("active", key === tab);
      body.replaceChildren(panels[tab]);
      if (tab === "log" && follow.checked && !search.active()) logBox.scrollTop = logBox.scrollHeight;
      updateTabs().catch((err) => reportError(err, "refresh"));
    }

    function after(kind, result) {
      if (kind === "delete") { toast("Task deleted"); location.hash = "#/tasks"; return; }
      // A clone is a draft: it opens on its execution tab, ready to edit.
      if (kind === "clone") { toast("Cloned as a new draft: edit it, then enqueue it"); location.hash = taskHref(result, "execution"); return; }
      if (kind === "reset") {
        toast("Task reset to draft");
        log.scroll = ""; log.lines = 0; log.trimmed = 0; log.loaded = false;
        logBox.replaceChildren(logEmpty);
      }
      taskPoller.kick();
    }

    let lastKey = "";
    function render(projects, queues) {
      const key = JSON.stringify([task, [...projects], [...queues], names.users.get(task.user)]);
      if (key === lastKey) return;
      lastKey = key;
      document.title = (task.name || task.id) + " · Conveyor";
      const buttons = actionItems(task, after).filter((item) => item !== "-").map((item) => h("button", {
        type: "button", class: "btn" + (item.danger ? " btn-danger" : ""), disabled: !!item.disabled, title: item.title, onclick: item.run,
      }, item.label));
      const copy = h("button", {
        type: "button", class: "link-btn",
        onclick: async () => {
          try { await navigator.clipboard.writeText(task.id); toast("Task id copied"); } catch (_) { toast("Copy failed: select the id by hand"); }
        },
      }, "Copy");
      const projectName = task.project ? projects.get(task.project) || task.project : "";
      header.replaceChildren(
        h("div", { class: "crumbs" }, link("#/tasks", "Tasks"), " / ",
          task.project ? [link(projectTasksHref(task.project), projectName), " / "] : null, task.name || task.id),
        h("div", { class: "task-head" },
          h("div", null,
            h("div", { class: "task-title" }, h("h1", null, task.name || "(unnamed)"), badge(task)),
            h("div", { class: "task-id" }, h("code", null, task.id), copy),
            task.comment ? h("p", { class: "comment" }, task.comment) : null),
          h("div", { class: "task-actions" }, buttons)));
      const started = toMs(task.started);
      const completed = toMs(task.completed);
      const queueId = (task.execution || {}).queue;
      const fact = (label, value, cls) => h("div", { class: "fact" }, h("dt", null, label), h("dd", { class: cls || "" }, value));
      facts.replaceChildren(h("dl", { class: "facts" },
        fact("Status", [badge(task), task.status_message && task.status_message !== "stopping" ? h("span", { class: "muted" }, "  " + task.status_message) : null]),
        fact("Status reason", dash(reasonOf(task))),
        (task.attempts || []).length ? fact("Failed attempts", h("span", { style: { whiteSpace: "pre-line" } }, attemptsOf(task))) : null,
        fact("Project", task.project ? link(projectTasksHref(task.project), projectName) : dash()),
        fact("Owner", task.user ? names.users.get(task.user) || task.user : dash()),
        fact("Type", dash(task.type)),
        fact("Queue", queueId ? (queues.get(queueId) || queueId) : dash()),
        fact("Last worker", task.last_worker ? link("#/workers", task.last_worker) : dash(), "mono"),
        fact("Created", when(task.created)),
        fact("Started", when(task.started)),
        fact("Completed", when(task.completed)),
        fact(task.status === "in_progress" ? "Running for" : "Duration",
          started && completed ? duration(completed - started) : started && task.status === "in_progress" ? since(task.started) : dash()),
        fact("Last update", ago(task.last_update)),
        task.last_iteration ? fact("Last iteration", number(task.last_iteration)) : null,
        task.parent ? fact("Parent", link(taskHref(task.parent), task.parent), "mono") : null));
      following.hidden = !isActive(task);
    }

    async function loadTask() {
      if (gone) return;
      let data;
      try {
        data = await api("tasks.get_by_id", { task: id });
      } catch (err) {
        if (err.status === 400 && err.subcode === 101) {
          gone = true;
          main.replaceChildren(h("div", { class: "crumbs" }, link("#/tasks", "Tasks")), h("div", { class: "card empty" },
            h("strong", null, "Task not found"), "No task has the id ", h("code", null, id), ": it may have been deleted."));
          destroy();
          return;
        }
        throw err;
      }
      const wasActive = isActive(task);
      task = data.task;
      if (wasActive && !isActive(task)) log.tail = 3; // a few more reads catch the lines sent just before the end
      const [projects] = await Promise.all([projectNames([task.project]), queueList(false), userNames([task.user])]);
      render(projects, names.queues);
      logPoller.kick();
      await updateTabs();
    }

    function appendEvents(events) {
      if (!events.length) return;
      const atBottom = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 40;
      if (!log.lines) logEmpty.remove();
      const frag = document.createDocumentFragment();
      for (const ev of events) {
        const level = String(ev.level || "info").toLowerCase();
        const text = cleanLog(ev.msg);
        const ln = h("div", { class: "ln lvl-" + level },
          h("span", { class: "ts", title: ev.timestamp ? dateText(ev.timestamp) : "" }, ev.timestamp ? clockText(ev.timestamp) : ""),
          h("span", { class: "msg" }, text));
        ln.logText = text;
        if (search.active()) search.markLine(ln);
        frag.append(ln);
      }
      logBox.append(frag);
      search.added();
      log.lines += events.length;
      const excess = log.lines - log.trimmed - LOG_MAX_LINES;
      if (excess > 0) {
        const lines = logBox.querySelectorAll(".ln");
        for (let i = 0; i < excess && i < lines.length; i++) lines[i].remove();
        log.trimmed += excess;
        let note = logBox.querySelector(".trim-note");
        if (!note) { note = h("div", { class: "note trim-note" }); logBox.prepend(note); }
        note.textContent = number(log.trimmed) + " earlier lines are not shown (the page keeps the last " + number(LOG_MAX_LINES) + ").";
      }
      if (follow.checked && !search.active() && (atBottom || !log.loaded)) logBox.scrollTop = logBox.scrollHeight;
    }

    async function loadLog() {
      if (!task || gone) return;
      if (log.loaded && !isActive(task)) {
        if (log.tail <= 0) return;
        log.tail -= 1;
      }
      for (let page = 0; page < 20; page++) {
        const data = await api("events.get_task_log", { task: id, order: "asc", scroll_id: log.scroll, batch_size: LOG_BATCH });
        const events = data.events || [];
        appendEvents(events);
        if (data.scroll_id) log.scroll = data.scroll_id;
        if (events.length < LOG_BATCH) break;
      }
      if (!log.loaded) {
        log.loaded = true;
        if (!log.lines) logEmpty.textContent = isActive(task) ? "No log lines yet: they appear here as the task prints them." : "This task has no log.";
      }
      lineCount.textContent = number(log.lines) + (log.lines === 1 ? " line" : " lines");
    }

    const taskPoller = new Poller(loadTask, 2000);
    const logPoller = new Poller(loadLog, 1000);
    function destroy() {
      taskPoller.stop();
      logPoller.stop();
      for (const t of extra) if (t.tab.destroy) t.tab.destroy();
    }
    setTab(tab);
    taskPoller.start();
    return {
      name: "task", id, destroy, setTab,
      refresh: () => { taskPoller.kick(); logPoller.kick(); },
    };
  }

  // --- the seam for the other view files (orchestration.js, …) -------------------------------------------------
  // Each registers its views in `views` by route name (#/<name>/<rest>) and builds them from these helpers.
  const views = {};
  window.Conveyor = Object.freeze({
    h, svg, append, api, toast, reportError, clearError, modal, showMenu, closeMenu, debounce, names, queueList,
    userNames, projectNames, Poller, pageHead, liveBadge, toMs, duration, ago, since, when, badge, statusOf, isActive,
    link, taskHref, mean, asList, number, dash, safeUrl, actionItems, taskActions, refreshView, PALETTE, views,
    taskTabs, projectTasksHref, serverFile, fetchFile, dateText, STATUS_LABELS, ENQUEUABLE, cleanLog,
  });

  // --- login, logout, routing -----------------------------------------------------------------------------------
  function showLogin(message) {
    $("#shell").hidden = true;
    $("#login").hidden = false;
    document.title = "Sign in · Conveyor";
    const error = $("#login-error");
    error.textContent = message || "";
    error.hidden = !message;
    const key = $("#login-key");
    (key.value ? $("#login-secret") : key).focus();
  }

  function signOut(message) {
    session.token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    if (view) { view.destroy(); view = null; }
    closeMenu();
    for (const dlg of document.querySelectorAll("dialog")) dlg.remove();
    $("#banner-wrap").hidden = true;
    $("#main").replaceChildren();
    showLogin(message);
  }

  $("#login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const button = $("#login-submit");
    const key = $("#login-key").value.trim();
    const secret = $("#login-secret").value.trim();
    button.disabled = true;
    button.textContent = "Signing in…";
    try {
      await signIn(key, secret);
      $("#login-secret").value = "";
      route();
    } catch (err) {
      const hint = err.status === 401 ? ". Check the access key and secret (api.credentials in ~/clearml.conf)." : "";
      showLogin(err.message.replace(/\.$/, "") + hint);
    } finally {
      button.disabled = false;
      button.textContent = "Sign in";
    }
  });
  $("#logout").addEventListener("click", () => signOut("You are signed out."));

  function route() {
    if (!session.token) { showLogin(); return; }
    const exp = claims().exp;
    if (exp && exp * 1000 < Date.now()) { signOut("Your session expired: sign in again."); return; }
    $("#login").hidden = true;
    $("#shell").hidden = false;
    const who = claims().identity || {};
    $("#who").textContent = who.user_name || "";
    closeMenu();
    const hash = location.hash || "#/tasks";
    const taskMatch = hash.match(/^#\/task\/([^/?#]+)(?:\/([a-z-]+))?$/);
    const tasksMatch = hash.match(/^#\/tasks(?:\/project\/([^/?#]+))?$/);
    if (taskMatch && view && view.name === "task" && view.id === decodeURIComponent(taskMatch[1])) {
      view.setTab(taskMatch[2] || "log"); // same task, another tab: keep the log we have
      return;
    }
    if (view) { view.destroy(); view = null; }
    $("#banner-wrap").hidden = true; // an error belongs to the page it happened on
    bannerSource = "";
    const main = $("#main");
    main.replaceChildren();
    let navKey = "tasks";
    if (tasksMatch) view = tasksView(main, tasksMatch[1] ? decodeURIComponent(tasksMatch[1]) : "");
    else if (taskMatch) view = taskView(main, decodeURIComponent(taskMatch[1]), taskMatch[2] || "log");
    else {
      const other = hash.match(/^#\/([a-z-]+)(?:\/(.*))?$/);
      if (other && Object.hasOwn(views, other[1])) { navKey = other[1]; view = views[other[1]](main, other[2] || ""); }
      else { history.replaceState(null, "", "#/tasks"); view = tasksView(main, ""); }
    }
    for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === navKey);
    window.scrollTo(0, 0);
  }

  window.addEventListener("hashchange", route);
  // The other view files load after this one (all deferred) and register their views before the DOM is ready.
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", route);
  else route();
})();
