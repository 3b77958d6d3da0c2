// Conveyor web UI, the Orchestration pages: queues and workers. Built on app.js's helpers (window.Conveyor) and the
// charts of metric_charts.js (window.ConveyorCharts); like app.js, every piece of server data reaches the page as a
// text node or an attribute value.
"use strict";

(() => {
  const {
    h, api, toast, reportError, names, Poller, pageHead, liveBadge, toMs, duration, ago, since, when, badge, link,
    taskHref, mean, asList, number, dash, showMenu, views,
  } = window.Conveyor;
  const { rangeOf, windowOf, rangePicker, TimeChart } = window.ConveyorCharts;

  // Kept across visits of the pages (not across reloads): the chosen ranges and whether hidden queues show.
  const prefs = { queueRange: "1h", workerRange: "10m", showHidden: false };

  const workerHref = (id) => "#/workers/" + encodeURIComponent(id);
  const queueLabel = (q) => (q && (q.display_name || q.name)) || (q && q.id) || "";
  // max_entries (a Conveyor addition): a queue holding that many refuses enqueues.
  const isFull = (q) => !!q.max_entries && (q.entries || []).length >= q.max_entries;

  // Links to the workers in `ids`, the first few by name and the rest as a count.
  function workerLinks(ids, shown = 3) {
    if (!ids.length) return h("span", { class: "faint" }, "no worker listening");
    const first = ids.slice(0, shown).map((id) => link(workerHref(id), id));
    const parts = first.flatMap((a, i) => (i ? [", ", a] : [a]));
    return h("span", { class: "served-by" }, "served by ", parts, ids.length > shown ? " and " + (ids.length - shown) + " more" : "");
  }

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
    const hiddenBox = h("input", {
      type: "checkbox", checked: prefs.showHidden,
      onchange: () => { prefs.showHidden = hiddenBox.checked; lastKey = ""; poller.kick(); },
    });
    const showHidden = h("label", { class: "check", title: "Queues the system keeps for itself (hidden) are left out unless asked" },
      hiddenBox, "Show hidden");

    // Length and waiting time over the chosen range, one line per queue.
    const lengthChart = new TimeChart({ key: "queue_length", title: "Queue length", unit: "count", sync: "queues" });
    const waitChart = new TimeChart({ key: "queue_wait", title: "Average wait", unit: "seconds", sync: "queues" });
    const metricsCard = h("div", { class: "orch-metrics", hidden: true },
      h("div", { class: "orch-bar" }, h("h2", null, "Over time"), h("div", { class: "spacer" }),
        rangePicker(prefs.queueRange, (range) => {
          prefs.queueRange = range.key;
          metricsPoller.ms = range.refresh;
          metricsPoller.kick();
        })),
      h("div", { class: "charts" }, lengthChart.el, waitChart.el));
    const list = h("div", { class: "queues" });
    main.append(pageHead("Queues", liveBadge(), h("div", { class: "spacer" }), showHidden, form), metricsCard, list);

    let lastKey = "";
    let shownQueues = [];
    let sampled = false;
    async function load() {
      const body = { order_by: ["name"] };
      if (prefs.showHidden) body.search_hidden = true;
      const [queueData, workerData] = await Promise.all([api("queues.get_all", body), api("workers.get_all", {})]);
      const queues = queueData.queues || [];
      const ids = [...new Set(queues.flatMap((q) => (q.entries || []).map((e) => e.task)))];
      const tasks = new Map();
      if (ids.length) {
        const data = await api("tasks.get_all", { id: ids, only_fields: ["id", "name", "status"] });
        for (const t of data.tasks || []) tasks.set(t.id, t);
      }
      const listeners = new Map();
      for (const w of workerData.workers || []) {
        for (const q of w.queues || []) listeners.set(q.id, [...(listeners.get(q.id) || []), w.id]);
      }
      const key = JSON.stringify([queues, [...tasks], [...listeners]]);
      if (key === lastKey) return;
      lastKey = key;
      shownQueues = queues;
      render(queues, tasks, listeners);
      metricsPoller.kick(); // a queue came, went or changed: its line follows (as fresh as the server's last sample)
    }

    async function loadMetrics() {
      metricsCard.hidden = !shownQueues.length;
      if (!shownQueues.length) return;
      const win = windowOf(rangeOf(prefs.queueRange));
      // The page's first look takes a sample now (refresh), so that it opens on the queues' present state.
      const data = await api("queues.get_queue_metrics", {
        from_date: win.from, to_date: win.to, interval: win.interval, queue_ids: shownQueues.map((q) => q.id), refresh: !sampled,
      });
      sampled = true;
      const byId = new Map((data.queues || []).map((m) => [m.queue, m]));
      const series = (field) => shownQueues.map((q) => {
        const m = byId.get(q.id) || {};
        const values = new Map();
        (m.dates || []).forEach((d, i) => {
          const v = (m[field] || [])[i];
          if (typeof v === "number") values.set(d, v);
        });
        return { label: queueLabel(q), values };
      });
      lengthChart.update(series("queue_lengths"), win);
      waitChart.update(series("avg_waiting_times"), win);
    }

    async function act(fn, message) {
      try {
        await fn();
        if (message) toast(message);
      } catch (err) {
        reportError(err);
      }
      lastKey = "";
      poller.kick();
    }

    // Another queue for a queued task: off this one, then enqueued there, as the reference UI did before it had a
    // single call for it. When the other queue refuses it (full, gone), the task goes back where it was.
    async function moveEntry(queue, entry, index, count, target) {
      await api("queues.remove_task", { queue: queue.id, task: entry.task });
      try {
        await api("tasks.enqueue", { task: entry.task, queue: target.id });
      } catch (err) {
        await api("tasks.enqueue", { task: entry.task, queue: queue.id });
        const back = count - 1 - index;
        if (back > 0) await api("queues.move_task_forward", { queue: queue.id, task: entry.task, count: back });
        err.message = "Could not move it to " + queueLabel(target) + ": " + err.message.replace(/\.$/, "")
          + ". It stays on " + queueLabel(queue) + ".";
        throw err;
      }
    }

    function moveToQueue(anchor, queue, entry, index, count, taskName) {
      const others = shownQueues.filter((q) => q.id !== queue.id);
      if (!others.length) {
        toast("There is no other queue to move it to");
        return;
      }
      showMenu(anchor, others.map((target) => ({
        label: queueLabel(target) + (isFull(target) ? " (full)" : ""),
        disabled: isFull(target),
        title: isFull(target) ? "It holds its limit of " + target.max_entries + " tasks"
          : "Take it off " + queueLabel(queue) + " and put it at the end of " + queueLabel(target),
        run: () => act(() => moveEntry(queue, entry, index, count, target), "Moved “" + taskName + "” to " + queueLabel(target)),
      })));
    }

    function entryRow(queue, entry, index, count, task) {
      const name = task ? task.name || "(unnamed)" : entry.task;
      const move = (label, endpoint, disabled, title) => h("button", {
        type: "button", class: "btn btn-sm btn-move", disabled, title, "aria-label": title,
        onclick: () => act(() => endpoint(), null),
      }, label);
      const first = index === 0;
      const last = index === count - 1;
      const body = { queue: queue.id, task: entry.task };
      return h("tr", { dataset: { task: entry.task } },
        h("td", { class: "pos" }, String(index + 1)),
        h("td", { class: "cell-name" }, link(taskHref(entry.task), name), h("span", { class: "cell-id" }, entry.task)),
        h("td", null, task ? badge(task) : h("span", { class: "faint" }, "deleted")),
        h("td", null, since(entry.added)),
        h("td", { class: "actions" },
          move("⤒", () => api("queues.move_task_to_front", body), first, "Move to top"),
          move("↑", () => api("queues.move_task_forward", { ...body, count: 1 }), first, "Move up"),
          move("↓", () => api("queues.move_task_backward", { ...body, count: 1 }), last, "Move down"),
          move("⤓", () => api("queues.move_task_to_back", body), last, "Move to bottom"),
          h("button", {
            type: "button", class: "btn btn-sm", title: "Move to another queue", "aria-label": "Move to another queue",
            onclick: (e) => moveToQueue(e.currentTarget, queue, entry, index, count, name),
          }, "Move to…"),
          h("button", {
            type: "button", class: "btn btn-sm btn-danger", title: "Take this task off the queue (it goes back to draft)",
            onclick: () => act(() => api("queues.remove_task", { queue: queue.id, task: entry.task }), "Removed from " + queueLabel(queue)),
          }, "Remove")));
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
        const tags = queue.system_tags || [];
        const head = h("div", { class: "queue-head" },
          h("h2", { title: queue.display_name ? "Queue name: " + queue.name : null }, queueLabel(queue)),
          tags.includes("default") ? h("span", { class: "pill pill-accent" }, "default") : null,
          tags.includes("hidden") ? h("span", { class: "pill" }, "hidden") : null,
          h("span", { class: "stat" }, h("b", null, String(entries.length)), entries.length === 1 ? " task queued" : " tasks queued",
            queue.max_entries ? " of at most " + queue.max_entries : null),
          entries.length ? h("span", { class: "stat" }, "· oldest waiting ", since(oldest)) : null,
          h("span", { class: "stat" }, "· ", workerLinks(listeners.get(queue.id) || [])),
          h("div", { class: "spacer" }),
          h("code", { class: "faint small", title: "Queue id" }, queue.id));
        if (!entries.length) {
          return h("section", { class: "card", dataset: { queue: queue.id } }, head, h("div", { class: "queue-empty" }, "Empty"));
        }
        const rows = entries.map((entry, index) => entryRow(queue, entry, index, entries.length, tasks.get(entry.task)));
        return h("section", { class: "card", dataset: { queue: queue.id } }, head, h("table", { class: "table" },
          h("thead", null, h("tr", null, h("th", null, "#"), h("th", null, "Task"), h("th", null, "Status"),
            h("th", null, "Queued for"), h("th", { class: "actions" }, ""))),
          h("tbody", null, rows)));
      }));
    }

    const poller = new Poller(load, 2000).start();
    const metricsPoller = new Poller(loadMetrics, rangeOf(prefs.queueRange).refresh);
    return {
      name: "queues",
      destroy: () => { poller.stop(); metricsPoller.stop(); lengthChart.destroy(); waitChart.destroy(); },
      refresh: () => poller.kick(),
    };
  }

  // Workers -------------------------------------------------------------------------------------------------------
  function meter(label, fraction, text) {
    const pct = Math.max(0, Math.min(1, fraction || 0));
    return h("div", { class: "meter", title: label },
      h("span", { class: "bar" }, h("span", { class: "fill" + (pct > 0.85 ? " hot" : ""), style: { width: (pct * 100).toFixed(1) + "%" } })),
      h("span", null, text));
  }

  // What a Conveyor daemon reports besides its task: "forced off until 14:05", "idle by schedule until 20:00".
  function stateNote(w) {
    if (!w.state || w.state === "active") return null;
    return h("span", { class: "cell-id worker-state", title: w.state }, w.state_reason || w.state.replace(/_/g, " "));
  }

  function queuePills(w) {
    return (w.queues || []).length
      ? w.queues.map((q) => h("a", { class: "pill", href: "#/queues", title: q.id }, (q.name || q.id) + " · " + (q.num_tasks || 0)))
      : dash();
  }

  function workersView(main, rest) {
    if (rest) return workerView(main, decodeURIComponent(rest));
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

    function workerRow(w) {
      const stats = w.machine_stats || {};
      const cpu = mean(stats.cpu_usage);
      const used = mean(stats.memory_used);
      const free = mean(stats.memory_free);
      const gpus = asList(stats.gpu_usage);
      const gpuUsed = asList(stats.gpu_memory_used);
      const gpuFree = asList(stats.gpu_memory_free);
      const task = w.task;
      return h("tr", { dataset: { worker: w.id } },
        h("td", { class: "cell-name" }, h("a", { class: "mono nowrap", href: workerHref(w.id), title: "Charts and details of this worker" }, w.id),
          w.ip ? h("span", { class: "cell-id" }, w.ip) : null),
        h("td", null, queuePills(w)),
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

  // One worker: what it does now, and its machine stats over time ---------------------------------------------------
  // The charts, in page order; a chart shows when the worker reported any of its keys. Keys of `PER_GPU` are asked
  // for split by variant (one line per GPU).
  const WORKER_CHARTS = [
    { key: "cpu", title: "CPU usage", keys: ["cpu_usage"], unit: "percent", min: 0, max: 100 },
    { key: "gpu", title: "GPU utilisation", keys: ["gpu_usage"], unit: "percent", min: 0, max: 100 },
    { key: "gpu_memory", title: "GPU memory used", keys: ["gpu_memory_used"], unit: "mb", min: 0 },
    { key: "memory", title: "Memory", keys: ["memory_used", "memory_free"], unit: "mb", min: 0 },
    { key: "network", title: "Network", keys: ["network_rx", "network_tx"], unit: "mbps", min: 0 },
    { key: "disk_io", title: "Disk I/O", keys: ["disk_read", "disk_write"], unit: "mbps", min: 0 },
    { key: "disk_free", title: "Disk free (home)", keys: ["disk_free_home"], unit: "percent", min: 0, max: 100 },
    { key: "temperature", title: "Temperature", keys: ["cpu_temperature", "gpu_temperature"], unit: "celsius", min: 0 },
  ];
  const PER_GPU = new Set(["gpu_usage", "gpu_memory_used", "gpu_memory_free", "gpu_temperature"]);
  const KEY_LABELS = {
    cpu_usage: "CPU", gpu_usage: "GPU", gpu_memory_used: "GPU", memory_used: "used", memory_free: "free",
    network_rx: "received", network_tx: "sent", disk_read: "read", disk_write: "written", disk_free_home: "free",
    cpu_temperature: "CPU", gpu_temperature: "GPU",
  };
  const AGGREGATIONS = ["avg", "min", "max"];

  // One line per (metric, variant) of a chart; a chart of a single line also gets its min-max band.
  function chartLines(spec, metrics) {
    const lines = [];
    const variantOrder = (m) => (/^\d+$/.test(m.variant || "") ? Number(m.variant) : -1);
    for (const key of spec.keys) {
      for (const m of metrics.filter((x) => x.metric === key).sort((a, b) => variantOrder(a) - variantOrder(b))) {
        const byAgg = new Map((m.stats || []).map((s) => [s.aggregation, s.values || []]));
        const column = (agg) => new Map((m.dates || []).map((d, i) => [d, (byAgg.get(agg) || [])[i]])
          .filter(([, v]) => typeof v === "number"));
        const variant = m.variant !== undefined && m.variant !== null && m.variant !== "" ? " " + m.variant : "";
        lines.push({ label: (KEY_LABELS[key] || key) + variant, values: column("avg"), min: column("min"), max: column("max") });
      }
    }
    if (lines.length !== 1) for (const line of lines) { delete line.min; delete line.max; }
    return lines;
  }

  function workerView(main, id) {
    document.title = id + " · Workers · Conveyor";
    const header = h("div", null, h("div", { class: "crumbs" }, link("#/workers", "Workers"), " / ", id),
      h("div", { class: "page-head" }, h("h1", { class: "mono" }, id), liveBadge()));
    const facts = h("div", { class: "card" });
    const chartsBox = h("div", { class: "charts" });
    const empty = h("div", { class: "card empty", hidden: true }, h("strong", null, "No machine stats yet"),
      "A daemon reports its machine's CPU, memory, network, disk and GPUs every few seconds (agent.status_report_interval_sec).");
    main.append(header, facts,
      h("div", { class: "orch-bar" }, h("h2", null, "Machine"), h("div", { class: "spacer" }),
        rangePicker(prefs.workerRange, (range) => {
          prefs.workerRange = range.key;
          statsPoller.ms = range.refresh;
          statsPoller.kick();
        })),
      empty, chartsBox);
    const charts = new Map();
    let shownCharts = "";

    let lastKey = "";
    async function loadWorker() {
      const [data, props] = await Promise.all([api("workers.get_all", {}), api("workers.get_runtime_properties", { worker: id })]);
      const worker = (data.workers || []).find((w) => w.id === id) || null;
      const key = JSON.stringify([worker, props]);
      if (key === lastKey) return;
      lastKey = key;
      renderFacts(worker, props.runtime_properties || []);
    }

    function renderFacts(w, props) {
      const fact = (label, value, cls) => h("div", { class: "fact" }, h("dt", null, label), h("dd", { class: cls || "" }, value));
      if (!w) {
        facts.replaceChildren(h("div", { class: "empty" }, h("strong", null, "This worker is not reporting"),
          "It stopped, or its registration timed out. Its earlier machine stats are charted below."));
        return;
      }
      const task = w.task;
      const state = w.state_reason || (w.state ? w.state.replace(/_/g, " ") : task ? "running a task" : "idle");
      facts.replaceChildren(h("dl", { class: "facts" },
        fact("Current task", task ? [link(taskHref(task.id), task.name || task.id),
          task.running_time !== undefined ? h("span", { class: "cell-id" }, "running " + duration(task.running_time)) : null]
          : h("span", { class: "faint" }, "idle")),
        fact("State", h("span", { class: "worker-state-text", title: w.state || "" }, state)),
        fact("Queues", queuePills(w)),
        fact("Runtime properties", props.length ? props.map((p) => h("div", { class: "runtime-prop" },
          p.key + " = " + p.value, p.expiry !== undefined ? h("span", { class: "faint" }, " · for " + duration(p.expiry * 1000)) : null))
          : h("span", { class: "faint" }, "no runtime properties")),
        fact("Last report", ago(w.last_report_time || w.last_activity_time)),
        fact("Registered", when(w.register_time)),
        fact("Address", dash(w.ip), "mono"),
        fact("User", dash((w.user || {}).name))));
    }

    async function loadStats() {
      const keyData = await api("workers.get_metric_keys", { worker_ids: [id] });
      const reported = new Set((keyData.categories || []).flatMap((c) => c.metric_keys || []));
      const specs = WORKER_CHARTS.filter((spec) => spec.keys.some((k) => reported.has(k)));
      empty.hidden = specs.length > 0;
      const win = windowOf(rangeOf(prefs.workerRange));
      const wanted = specs.flatMap((spec) => spec.keys).filter((k) => reported.has(k));
      const stats = (keys, split) => (keys.length ? api("workers.get_stats", {
        worker_ids: [id], from_date: win.from, to_date: win.to, interval: win.interval, split_by_variant: split,
        items: keys.flatMap((key) => AGGREGATIONS.map((category) => ({ key, category }))),
      }) : Promise.resolve({ workers: [] }));
      const answers = await Promise.all([stats(wanted.filter((k) => !PER_GPU.has(k)), false), stats(wanted.filter((k) => PER_GPU.has(k)), true)]);
      const metrics = answers.flatMap((a) => (a.workers || []).filter((w) => w.worker === id).flatMap((w) => w.metrics || []));
      for (const spec of specs) {
        if (!charts.has(spec.key)) charts.set(spec.key, new TimeChart({ ...spec, sync: "worker" }));
      }
      const order = specs.map((spec) => spec.key).join();
      if (order !== shownCharts) {
        shownCharts = order;
        chartsBox.replaceChildren(...specs.map((spec) => charts.get(spec.key).el));
      }
      for (const spec of specs) charts.get(spec.key).update(chartLines(spec, metrics), win);
    }

    const workerPoller = new Poller(loadWorker, 2000).start();
    const statsPoller = new Poller(loadStats, rangeOf(prefs.workerRange).refresh).start();
    return {
      name: "worker", id,
      destroy: () => { workerPoller.stop(); statsPoller.stop(); for (const c of charts.values()) c.destroy(); },
      refresh: () => { workerPoller.kick(); statsPoller.kick(); },
    };
  }

  views.queues = queuesView;
  views.workers = workersView;
})();
