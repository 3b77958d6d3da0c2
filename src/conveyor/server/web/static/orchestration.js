// Conveyor web UI, the Orchestration pages: queues and workers. Built on app.js's helpers (window.Conveyor);
// like app.js, every piece of server data reaches the page as a text node or an attribute value.
"use strict";

(() => {
  const {
    h, api, toast, reportError, names, Poller, pageHead, liveBadge, toMs, duration, ago, since, badge, link, taskHref,
    mean, asList, number, dash, views,
  } = window.Conveyor;

  // Queues --------------------------------------------------------------------------------------------------------
  function queuesView(main) {
    document.title = "Queues · Conveyor";
    const nameInput = h("input", { class: "input", placeholder: "New queue name", required: true, maxlength: "512", "aria-label": "Queue name" });
    const form = h("form", {
      class: "inline-form",
      onsubmit: async (e) => {
        e.preventDefault();
        const name = nameInput.value.trim();
        if (!name) return;
        try {
          await api("queues.create", { name });
          nameInput.value = "";
          toast("Queue “" + name + "” created");
          names.queuesAt = 0;
          poller.kick();
        } catch (err) {
          reportError(err);
        }
      },
    }, nameInput, h("button", { class: "btn btn-primary", type: "submit" }, "Create queue"));
    const list = h("div", { class: "queues" });
    main.append(pageHead("Queues", liveBadge(), h("div", { class: "spacer" }), form), list);

    let lastKey = "";
    async function load() {
      const [queueData, workerData] = await Promise.all([
        api("queues.get_all", { order_by: ["name"] }),
        api("workers.get_all", {}),
      ]);
      const queues = queueData.queues || [];
      const ids = [...new Set(queues.flatMap((q) => (q.entries || []).map((e) => e.task)))];
      const tasks = new Map();
      if (ids.length) {
        const data = await api("tasks.get_all", { id: ids, only_fields: ["id", "name", "status"] });
        for (const t of data.tasks || []) tasks.set(t.id, t);
      }
      const listeners = new Map();
      for (const w of workerData.workers || []) {
        for (const q of w.queues || []) listeners.set(q.id, (listeners.get(q.id) || 0) + 1);
      }
      const key = JSON.stringify([queues, [...tasks], [...listeners]]);
      if (key === lastKey) return;
      lastKey = key;
      render(queues, tasks, listeners);
    }

    async function act(fn, message) {
      try {
        await fn();
        if (message) toast(message);
      } catch (err) {
        reportError(err);
      }
      poller.kick();
    }

    function render(queues, tasks, listeners) {
      if (!queues.length) {
        list.replaceChildren(h("div", { class: "card empty" }, h("strong", null, "No queues yet"),
          "Create one above; workers pull tasks from the queues they listen to."));
        return;
      }
      list.replaceChildren(...queues.map((queue) => {
        const entries = queue.entries || [];
        const oldest = entries.reduce((min, e) => Math.min(min, toMs(e.added) || Infinity), Infinity);
        const workers = listeners.get(queue.id) || 0;
        const head = h("div", { class: "queue-head" },
          h("h2", null, queue.name),
          (queue.system_tags || []).includes("default") ? h("span", { class: "pill pill-accent" }, "default") : null,
          h("span", { class: "stat" }, h("b", null, String(entries.length)), entries.length === 1 ? " task queued" : " tasks queued"),
          h("span", { class: "stat" }, "· ", h("b", null, String(workers)), workers === 1 ? " worker listening" : " workers listening"),
          entries.length ? h("span", { class: "stat" }, "· oldest waiting ", since(oldest)) : null,
          h("div", { class: "spacer" }),
          h("code", { class: "faint small", title: "Queue id" }, queue.id));
        if (!entries.length) {
          return h("section", { class: "card" }, head, h("div", { class: "queue-empty" }, "Empty"));
        }
        const rows = entries.map((entry, index) => {
          const task = tasks.get(entry.task);
          const name = task ? task.name : entry.task;
          return h("tr", null,
            h("td", { class: "pos" }, String(index + 1)),
            h("td", { class: "cell-name" }, link(taskHref(entry.task), name || "(unnamed)"), h("span", { class: "cell-id" }, entry.task)),
            h("td", null, task ? badge(task) : h("span", { class: "faint" }, "deleted")),
            h("td", null, since(entry.added)),
            h("td", { class: "actions" },
              h("button", {
                type: "button", class: "btn btn-sm", disabled: index === 0, title: "Run this task next",
                onclick: () => act(() => api("queues.move_task_to_front", { queue: queue.id, task: entry.task }), "Moved to the front"),
              }, "Move to front"),
              h("button", {
                type: "button", class: "btn btn-sm btn-danger", title: "Take this task off the queue (it goes back to draft)",
                onclick: () => act(() => api("queues.remove_task", { queue: queue.id, task: entry.task }), "Removed from " + queue.name),
              }, "Remove")));
        });
        return h("section", { class: "card" }, head, h("table", { class: "table" },
          h("thead", null, h("tr", null, h("th", null, "#"), h("th", null, "Task"), h("th", null, "Status"),
            h("th", null, "Queued for"), h("th", { class: "actions" }, ""))),
          h("tbody", null, rows)));
      }));
    }

    const poller = new Poller(load, 2000).start();
    return { name: "queues", destroy: () => poller.stop(), refresh: () => poller.kick() };
  }

  // Workers -------------------------------------------------------------------------------------------------------
  function meter(label, fraction, text) {
    const pct = Math.max(0, Math.min(1, fraction || 0));
    return h("div", { class: "meter", title: label },
      h("span", { class: "bar" }, h("span", { class: "fill" + (pct > 0.85 ? " hot" : ""), style: { width: (pct * 100).toFixed(1) + "%" } })),
      h("span", null, text));
  }

  function workersView(main) {
    document.title = "Workers · Conveyor";
    const tbody = h("tbody");
    const table = h("table", { class: "table" },
      h("thead", null, h("tr", null, ["Worker", "Queues", "Current task", "Last report", "CPU", "Memory", "GPU"].map((t) => h("th", null, t)))),
      tbody);
    const card = h("div", { class: "card table-wrap" }, table);
    main.append(pageHead("Workers", liveBadge()), card);

    let lastKey = "";
    async function load() {
      const data = await api("workers.get_all", {});
      const workers = data.workers || [];
      const key = JSON.stringify(workers);
      if (key === lastKey) return;
      lastKey = key;
      if (!workers.length) {
        tbody.replaceChildren(h("tr", null, h("td", { colspan: "7" }, h("div", { class: "empty" },
          h("strong", null, "No workers are reporting"), "Start one with ", h("code", null, "conveyor daemon --queue default"),
          " on a machine that should run tasks."))));
        return;
      }
      tbody.replaceChildren(...workers.map(workerRow));
    }

    // What a Conveyor daemon reports besides its task: "forced off until 14:05", "idle by schedule until 20:00".
    function stateNote(w) {
      if (!w.state || w.state === "active") return null;
      return h("span", { class: "cell-id worker-state", title: w.state }, w.state_reason || w.state.replace(/_/g, " "));
    }

    function workerRow(w) {
      const stats = w.machine_stats || {};
      const cpu = mean(stats.cpu_usage);
      const used = mean(stats.memory_used);
      const free = mean(stats.memory_free);
      const gpus = asList(stats.gpu_usage);
      const gpuUsed = asList(stats.gpu_memory_used);
      const gpuFree = asList(stats.gpu_memory_free);
      const task = w.task;
      return h("tr", null,
        h("td", null, h("span", { class: "mono nowrap" }, w.id), w.ip ? h("span", { class: "cell-id" }, w.ip) : null),
        h("td", null, (w.queues || []).length ? w.queues.map((q) => h("span", { class: "pill", title: q.id }, (q.name || q.id) + " · " + (q.num_tasks || 0)))
          : dash()),
        h("td", { class: "cell-name" }, task ? [link(taskHref(task.id), task.name || task.id),
          h("span", { class: "cell-id" }, "running ", task.running_time !== undefined ? duration(task.running_time) : "")] : h("span", { class: "faint" }, "idle"),
          stateNote(w)),
        h("td", null, ago(w.last_report_time || w.last_activity_time)),
        h("td", null, cpu === null ? dash() : meter("CPU usage", cpu / 100, number(cpu, 1) + "%")),
        h("td", null, used === null ? dash() : [meter("Memory used", free !== null ? used / (used + free) : 0, number(used) + " MB used"),
          free !== null ? h("div", { class: "meter-note" }, number(free) + " MB free") : null]),
        h("td", null, gpus.length ? gpus.map((u, i) => {
          const mu = gpuUsed[i];
          const mf = gpuFree[i];
          const memory = typeof mu === "number" ? " · " + number(mu) + (typeof mf === "number" ? "/" + number(mu + mf) : "") + " MB" : "";
          return meter("GPU " + i, Number(u) / 100, "GPU" + i + " " + number(u) + "%" + memory);
        }) : h("span", { class: "faint" }, "none")));
    }

    const poller = new Poller(load, 2000).start();
    return { name: "workers", destroy: () => poller.stop(), refresh: () => poller.kick() };
  }

  views.queues = queuesView;
  views.workers = workersView;
})();
