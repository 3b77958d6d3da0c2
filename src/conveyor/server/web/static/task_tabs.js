// Conveyor web UI, the task's result tabs: Scalars (uPlot), Plots, Debug samples, Artifacts and the status Timeline.
// Built on app.js's helpers (window.Conveyor); every piece of server data reaches the page as text or an attribute.
"use strict";

(() => {
  const {
    h, api, toast, reportError, dash, number, safeUrl, isActive, badge, duration, toMs, when, serverFile,
    fetchFile, taskTabs, PALETTE, STATUS_LABELS,
  } = window.Conveyor;

  const RELOAD_MS = 5000; // a running task's charts and samples refresh this often while their tab is shown
  const PLOT_ITERS = 20; // plots of the latest this many iterations: the latest figure of each metric/variant is shown
  const SAMPLE_ITERS = 20; // debug samples of the latest this many iterations per metric (a select picks one)

  const empty = (title, text) => h("div", { class: "card empty" }, h("strong", null, title), text);
  const tickText = (v) => (v === null || v === undefined ? "—" : Math.abs(v) >= 1e5 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(2) : number(v, 4));

  // A tab that fetches when it is shown: once for a finished task, every RELOAD_MS while the task runs.
  function loader(ctx, key, fetchAndRender) {
    const state = { at: 0, loaded: false, busy: false };
    return {
      state,
      async update(task) {
        if (!ctx.shown(key) || state.busy) return;
        if (state.loaded && (!isActive(task) || Date.now() - state.at < RELOAD_MS)) return;
        state.busy = true;
        try {
          await fetchAndRender(task);
          state.loaded = true;
          state.at = Date.now();
        } finally {
          state.busy = false;
        }
      },
    };
  }

  // --- charts (uPlot: drag to zoom, double-click to zoom out; the legend shows the values under the cursor) ------
  const charts = new Set();
  const resize = new ResizeObserver((entries) => {
    for (const entry of entries) {
      const plot = entry.target.uplot;
      if (plot && entry.contentRect.width) plot.setSize({ width: Math.floor(entry.contentRect.width), height: plot.height });
    }
  });

  // series: [{ name, x: [...], y: [...], points?: true }], drawn on one x axis (the union of their x values).
  function chart(title, series, { xLabel = "iteration", height = 240 } = {}) {
    const box = h("div", { class: "uplot-box" });
    const card = h("div", { class: "card chart", dataset: { chart: title } }, h("h2", null, title), box);
    const xs = [...new Set(series.flatMap((s) => s.x.map(Number)).filter(Number.isFinite))].sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const columns = series.map((s) => {
      const col = new Array(xs.length).fill(null);
      s.x.forEach((x, j) => { const y = Number(s.y[j]); if (index.has(Number(x)) && Number.isFinite(y)) col[index.get(Number(x))] = y; });
      return col;
    });
    const opts = {
      width: 500, height,
      scales: { x: { time: false } },
      cursor: { drag: { x: true, y: false } },
      legend: { live: true },
      axes: [{ label: xLabel, size: 40, labelSize: 16 }, { size: 56, values: (_, ticks) => ticks.map(tickText) }],
      series: [{ label: xLabel, value: (_, v) => tickText(v) }, ...series.map((s, i) => ({
        label: s.name, stroke: PALETTE[i % PALETTE.length], width: 1.6, spanGaps: true, value: (_, v) => tickText(v),
        ...(s.points ? { paths: () => null, points: { show: true, size: 5, fill: PALETTE[i % PALETTE.length] } } : {}),
      }))],
    };
    // Drawn once the card is in the page, at its width.
    requestAnimationFrame(() => {
      if (!box.isConnected || box.uplot) return;
      opts.width = Math.max(240, Math.floor(box.clientWidth || 500));
      box.uplot = new window.uPlot(opts, [xs, ...columns], box);
      charts.add(box);
      resize.observe(box);
    });
    return card;
  }

  function dropCharts(root) {
    for (const box of root.querySelectorAll(".uplot-box")) {
      if (box.uplot) { resize.unobserve(box); box.uplot.destroy(); box.uplot = null; charts.delete(box); }
    }
  }

  // --- Scalars --------------------------------------------------------------------------------------------------
  taskTabs.scalars = {
    label: "Scalars", order: 20,
    create(ctx) {
      const panel = h("div", null, h("div", { class: "card empty" }, "Loading scalars…"));
      let lastKey = "";
      const tab = loader(ctx, "scalars", async () => {
        // Series by iteration, and the single values (report_single_value) the series leave out.
        const [data, single] = await Promise.all([api("events.scalar_metrics_iter_histogram", { task: ctx.id }),
          api("events.get_task_single_value_metrics", { tasks: [ctx.id] })]);
        const values = ((single.tasks || [])[0] || {}).values || [];
        const key = JSON.stringify([data, values]);
        if (key === lastKey) return;
        lastKey = key;
        const singles = values.length ? h("div", { class: "card single-values" }, h("h2", null, "Single values"),
          h("table", { class: "table" }, h("tbody", null, values.map((v) => h("tr", null,
            h("td", { class: "muted" }, [v.metric, v.variant].filter(Boolean).join(" / ")), h("td", { class: "num mono" }, tickText(v.value))))))) : null;
        const metrics = Object.entries(data || {}).filter(([, v]) => v && typeof v === "object" && Object.keys(v).length);
        metrics.sort((a, b) => a[0].localeCompare(b[0]));
        dropCharts(panel);
        panel.replaceChildren(...(metrics.length || singles
          ? [singles, h("div", { class: "hint-line" }, metrics.length ? "Drag across a chart to zoom in, double-click it to zoom out." : ""),
            h("div", { class: "charts" }, metrics.map(([metric, variants]) => chart(metric, Object.entries(variants)
              .sort((a, b) => a[0].localeCompare(b[0])).map(([name, s]) => ({ name, x: s.x || [], y: s.y || [] })))))].filter(Boolean)
          : [empty("No scalars", "Scalars the task reports (loss, accuracy, …) are charted here.")]));
      });
      return {
        panel, update: tab.update, destroy: () => dropCharts(panel),
        count(task) {
          let n = 0;
          for (const metric of Object.values(task.last_metrics || {})) n += Object.keys(metric || {}).length;
          return n;
        },
      };
    },
  };

  // --- Plots ----------------------------------------------------------------------------------------------------
  // The SDK reports plots as plotly figures (JSON in `plot_str`). The UI ships no plotly bundle, so it draws what it
  // can itself: scatter/line traces with numeric x and y through uPlot, table traces as tables; any other figure
  // (histograms, heatmaps, 3-D, images, …) is summarised in words: its type, traces and title.
  function plotFigure(ev) {
    let fig = null;
    try {
      fig = typeof ev.plot_str === "string" ? JSON.parse(ev.plot_str) : ev.plot_str;
    } catch (_) { /* shown as unreadable below */ }
    const title = [ev.metric, ev.variant].filter(Boolean).join(" / ") || "plot";
    const where = h("span", { class: "faint" }, " · iteration " + number(ev.iter || 0));
    if (!fig || typeof fig !== "object") return h("div", { class: "card plot" }, h("h2", null, title, where), h("div", { class: "none" }, "This plot's figure could not be read."));
    const traces = Array.isArray(fig.data) ? fig.data : [];
    const layout = fig.layout || {};
    const figTitle = typeof layout.title === "string" ? layout.title : (layout.title || {}).text || "";
    const numeric = (v) => Array.isArray(v) && v.length && v.every((n) => n === null || Number.isFinite(Number(n)));
    const lines = traces.filter((t) => (!t.type || t.type === "scatter" || t.type === "scattergl") && numeric(t.x) && numeric(t.y));
    if (traces.length && lines.length === traces.length) {
      const card = chart(title, lines.map((t, i) => ({ name: t.name || "series " + (i + 1), x: t.x, y: t.y, points: t.mode === "markers" })),
        { xLabel: (((layout.xaxis || {}).title || {}).text) || (typeof (layout.xaxis || {}).title === "string" ? layout.xaxis.title : "x") });
      card.querySelector("h2").append(where);
      return card;
    }
    const tables = traces.filter((t) => t.type === "table");
    if (tables.length) {
      return h("div", { class: "card plot" }, h("h2", null, title, where), tables.map((t) => {
        const header = ((t.header || {}).values || []).map(String);
        const cols = (t.cells || {}).values || [];
        const rows = Math.max(0, ...cols.map((c) => (Array.isArray(c) ? c.length : 0)));
        const row = (r) => h("tr", null, cols.map((c) => h("td", null, dash(Array.isArray(c) ? c[r] : ""))));
        return h("div", { class: "table-wrap" }, h("table", { class: "table" },
          header.length ? h("thead", null, h("tr", null, header.map((x) => h("th", null, x)))) : null,
          h("tbody", null, Array.from({ length: Math.min(rows, 1000) }, (_, r) => row(r)))));
      }));
    }
    const kinds = [...new Set(traces.map((t) => t.type || "scatter"))];
    return h("div", { class: "card plot" }, h("h2", null, title, where), h("div", { class: "none" },
      "A " + (kinds.join(", ") || "empty") + " figure" + (figTitle ? " “" + figTitle + "”" : "") + " with " + traces.length
      + (traces.length === 1 ? " trace" : " traces") + ": this page draws line and scatter plots and tables only."));
  }

  taskTabs.plots = {
    label: "Plots", order: 30,
    create(ctx) {
      const panel = h("div", null, h("div", { class: "card empty" }, "Loading plots…"));
      let lastKey = "";
      const tab = loader(ctx, "plots", async () => {
        const data = await api("events.get_task_plots", { task: ctx.id, iters: PLOT_ITERS, no_scroll: true });
        // The latest figure of each metric/variant.
        const latest = new Map();
        for (const ev of (data.plots || []).slice().sort((a, b) => (b.iter || 0) - (a.iter || 0))) {
          const key = ev.metric + "\u0000" + ev.variant;
          if (!latest.has(key)) latest.set(key, ev);
        }
        const events = [...latest.values()].sort((a, b) => String(a.metric).localeCompare(String(b.metric)) || String(a.variant).localeCompare(String(b.variant)));
        const key = JSON.stringify(events);
        if (key === lastKey) return;
        lastKey = key;
        dropCharts(panel);
        panel.replaceChildren(events.length ? h("div", { class: "charts" }, events.map(plotFigure))
          : empty("No plots", "Plots the task reports (report_scatter2d, report_table, …) are shown here."));
      });
      return { panel, update: tab.update, destroy: () => dropCharts(panel) };
    },
  };

  // --- Debug samples --------------------------------------------------------------------------------------------
  // An image on this server's files endpoint is fetched with the session's token and shown as a data: URL (the page
  // may show only its own or data: images); one elsewhere is a link.
  async function imageInto(img, url) {
    const path = serverFile(url);
    if (!path) return false;
    const blob = await fetchFile(path);
    img.src = await new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(blob);
    });
    return true;
  }

  function sampleCard(metric, variant, events) {
    // events: this variant's samples, newest first; a select picks the iteration.
    const img = h("img", { class: "sample-img", alt: metric + " / " + variant });
    const caption = h("div", { class: "faint small" });
    const holder = h("div", { class: "sample-view" }, img);
    const select = h("select", { class: "select", "aria-label": "Iteration" },
      events.map((ev, i) => h("option", { value: String(i) }, "iteration " + number(ev.iter || 0))));
    async function show() {
      const ev = events[Number(select.value) || 0];
      const url = ev.url || "";
      caption.textContent = safeUrl(url);
      img.hidden = false;
      holder.replaceChildren(img);
      try {
        if (!(await imageInto(img, url))) {
          img.hidden = true;
          // A link only to a web address: any client reports this URL, and another user clicks it.
          holder.replaceChildren(h("div", { class: "none" }, "Stored outside this server",
            /^https?:\/\//i.test(url) ? [": ", h("a", { href: safeUrl(url), target: "_blank", rel: "noopener" }, "open the image")] : " (see its address below)"));
        }
      } catch (err) {
        img.hidden = true;
        holder.replaceChildren(h("div", { class: "none" }, err.message));
      }
    }
    select.addEventListener("change", show);
    show();
    return h("div", { class: "card sample", dataset: { sample: metric + "/" + variant } },
      h("div", { class: "sample-head" }, h("h2", null, variant), events.length > 1 ? select : h("span", { class: "faint small" }, "iteration " + number(events[0].iter || 0))),
      holder, caption);
  }

  taskTabs.debug = {
    label: "Debug samples", order: 40,
    create(ctx) {
      const panel = h("div", null, h("div", { class: "card empty" }, "Loading debug samples…"));
      let lastKey = "";
      const tab = loader(ctx, "debug", async () => {
        const data = await api("events.debug_images", { metrics: [{ task: ctx.id }], iters: SAMPLE_ITERS });
        const events = (data.metrics || []).flatMap((m) => (m.iterations || []).flatMap((it) => it.events || []))
          .filter((ev) => ev.url).sort((a, b) => (b.iter || 0) - (a.iter || 0));
        const key = JSON.stringify(events.map((ev) => [ev.metric, ev.variant, ev.iter, ev.url]));
        if (key === lastKey) return;
        lastKey = key;
        const byMetric = new Map();
        for (const ev of events) {
          const variants = byMetric.get(ev.metric) || new Map();
          byMetric.set(ev.metric, variants);
          if (!variants.has(ev.variant)) variants.set(ev.variant, []);
          variants.get(ev.variant).push(ev);
        }
        panel.replaceChildren(...(events.length ? [...byMetric.entries()].sort((a, b) => String(a[0]).localeCompare(String(b[0]))).map(([metric, variants]) =>
          h("section", { class: "section" }, h("h3", null, metric),
            h("div", { class: "samples" }, [...variants.entries()].map(([variant, evs]) => sampleCard(metric, variant, evs)))))
          : [empty("No debug samples", "Images the task reports (report_image, debug samples) are shown here.")]));
      });
      return { panel, update: tab.update };
    },
  };

  // --- Artifacts ------------------------------------------------------------------------------------------------
  function size(bytes) {
    const n = Number(bytes);
    if (!Number.isFinite(n) || bytes === null || bytes === undefined) return dash();
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return number(v, i ? 1 : 0) + " " + units[i];
  }

  async function download(path, name) {
    try {
      const blob = await fetchFile(path);
      const url = URL.createObjectURL(blob);
      const a = h("a", { href: url, download: name });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      toast("Downloading " + name);
    } catch (err) {
      reportError(err);
    }
  }

  function artifactRow(art) {
    const uri = art.uri || "";
    const path = serverFile(uri);
    const name = (uri.split("?")[0].split("/").pop()) || art.key;
    const preview = (art.type_data || {}).preview || "";
    return h("tr", { dataset: { artifact: art.key } },
      h("td", { class: "cell-name" }, h("b", null, art.key), preview ? h("span", { class: "cell-id", title: preview }, preview.slice(0, 120)) : null),
      h("td", null, dash(art.type)), h("td", { class: "muted" }, dash(art.mode)),
      h("td", { class: "num nowrap" }, size(art.content_size)),
      h("td", { class: "mono small" }, art.hash ? h("span", { class: "clip", title: art.hash }, art.hash) : dash()),
      h("td", { class: "mono small" }, uri ? h("span", { class: "clip uri", title: safeUrl(uri) }, safeUrl(uri)) : dash()),
      h("td", { class: "actions" }, path ? h("button", { type: "button", class: "btn btn-sm", onclick: () => download(path, name) }, "Download")
        : uri && /^https?:/i.test(uri) ? h("a", { class: "btn btn-sm", href: safeUrl(uri), target: "_blank", rel: "noopener" }, "Open") : null));
  }

  taskTabs.artifacts = {
    label: "Artifacts", order: 50,
    create() {
      const panel = h("div");
      let lastKey = "";
      return {
        panel,
        count: (task) => ((task.execution || {}).artifacts || []).length,
        update(task) {
          const artifacts = ((task.execution || {}).artifacts || []).slice().sort((a, b) => String(a.key).localeCompare(String(b.key)));
          const key = JSON.stringify(artifacts);
          if (key === lastKey) return;
          lastKey = key;
          panel.replaceChildren(artifacts.length ? h("div", { class: "card table-wrap" }, h("table", { class: "table artifacts" },
            h("thead", null, h("tr", null, ["Name", "Type", "Mode", "Size", "Hash", "URI", ""].map((x) => h("th", { class: x === "Size" ? "num" : x ? "" : "actions" }, x)))),
            h("tbody", null, artifacts.map(artifactRow))))
            : empty("No artifacts", "Files and objects the task uploads (task.upload_artifact) are listed here."));
        },
      };
    },
  };

  // --- Timeline -------------------------------------------------------------------------------------------------
  // From status_history (oldest first); a task without one shows its created/started/completed times.
  function timelineOf(task) {
    const history = Array.isArray(task.status_history) ? task.status_history : [];
    if (history.length) return { entries: history.map((e) => ({ ...e, ms: toMs(e.time) })), derived: false };
    const entries = [{ status: "created", ms: toMs(task.created) }];
    if (task.started) entries.push({ status: "in_progress", ms: toMs(task.started) });
    if (task.completed && task.status !== "in_progress") entries.push({ status: task.status, ms: toMs(task.completed), reason: task.status_reason });
    return { entries: entries.filter((e) => e.ms !== null), derived: true };
  }

  // The last run's startup timeline (task.timeline, sent by Conveyor's agent with the final status): a bar of its
  // spans, then each moment with the span before it.
  const SPAN_OF = { pulled: "queued", started: "launch", code_ready: "checkout", environment_ready: "environment",
    first_output: "entry_point_start", ended: "run" };
  const SPAN_LABELS = { queued: "queued", launch: "launch", checkout: "checkout", environment: "environment",
    entry_point_start: "to first output", run: "run" };
  const seconds = (x) => (x < 10 ? x.toFixed(3) + " s" : duration(x * 1000));
  // to the millisecond: the moments of a start are tenths of a second apart
  const msWhen = (value) => {
    const ms = toMs(value);
    if (ms === null) return when(value);
    const d = new Date(ms);
    return h("span", { title: d.toISOString() }, d.toLocaleTimeString(undefined, { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0"));
  };

  function startupCard(timeline) {
    const marks = timeline && Array.isArray(timeline.marks) ? timeline.marks.filter((m) => m && (m.mark === "enqueued" || SPAN_OF[m.mark] !== undefined)) : [];
    if (marks.length < 2) return null;
    const spans = marks.slice(1).filter((m) => typeof m.after_sec === "number").map((m) => ({ name: SPAN_OF[m.mark], sec: m.after_sec }));
    const total = Math.max(1e-3, spans.reduce((sum, sp) => sum + sp.sec, 0));
    const d = timeline.durations || {};
    const summary = [typeof d.pickup === "number" ? "enqueued to first output " + seconds(d.pickup) : "",
      typeof d.total === "number" ? "to the end " + seconds(d.total) : "", timeline.worker ? "on " + timeline.worker : ""].filter(Boolean).join(" · ");
    return h("div", { class: "card startup" },
      h("div", { class: "startup-head" }, h("strong", null, "Startup of the last run"), summary ? h("span", { class: "muted small" }, " · " + summary) : null),
      h("div", { class: "startup-bar", role: "img", "aria-label": spans.map((sp) => SPAN_LABELS[sp.name] + " " + seconds(sp.sec)).join(", ") },
        spans.map((sp) => h("span", { class: "phase-" + sp.name, dataset: { phase: sp.name }, title: SPAN_LABELS[sp.name] + " · " + seconds(sp.sec),
          style: { flexGrow: String(Math.max(sp.sec, total / 200)) } }))),
      h("ol", { class: "startup-list" }, marks.map((m) => h("li", { dataset: { mark: m.mark } },
        h("div", { class: "tl-when" }, msWhen(m.time)),
        h("div", { class: "tl-what" }, h("span", null, String(m.mark).replace(/_/g, " ")),
          typeof m.after_sec === "number" ? h("span", { class: "muted small" }, " · " + SPAN_LABELS[SPAN_OF[m.mark]] + " " + seconds(m.after_sec)) : null)))));
  }

  taskTabs.timeline = {
    label: "Timeline", order: 60,
    create() {
      const panel = h("div");
      let lastKey = "";
      return {
        panel,
        update(task) {
          const { entries, derived } = timelineOf(task);
          const key = JSON.stringify([entries, task.status, task.timeline || null]);
          if (key === lastKey) return;
          lastKey = key;
          if (!entries.length) { panel.replaceChildren(empty("No status changes recorded", "")); return; }
          const end = isActive(task) ? Date.now() : entries[entries.length - 1].ms;
          const span = Math.max(1, end - entries[0].ms);
          const bar = h("div", { class: "timeline-bar", "aria-hidden": "true" }, entries.map((e, i) => {
            const until = i + 1 < entries.length ? entries[i + 1].ms : end;
            return h("span", { class: "seg-" + e.status, title: (STATUS_LABELS[e.status] || e.status) + " · " + duration(until - e.ms),
              style: { flexGrow: String(Math.max(until - e.ms, span / 200)) } });
          }));
          panel.replaceChildren(startupCard(task.timeline) || "", h("div", { class: "card timeline" },
            derived ? h("div", { class: "hint-line" }, "This task has no status history: its created, started and completed times are shown.") : null,
            bar,
            h("ol", { class: "timeline-list" }, entries.map((e, i) => {
              const until = i + 1 < entries.length ? entries[i + 1].ms : isActive(task) ? Date.now() : null;
              return h("li", { dataset: { status: e.status } },
                h("div", { class: "tl-when" }, when(e.time || e.ms)),
                h("div", { class: "tl-what" }, badge({ status: e.status }),
                  e.previous ? h("span", { class: "faint small" }, " from " + (STATUS_LABELS[e.previous] || e.previous)) : null,
                  until !== null ? h("span", { class: "muted small" }, " · " + duration(until - e.ms) + (i + 1 < entries.length ? "" : " so far")) : null,
                  [e.reason, e.message].filter(Boolean).length ? h("div", { class: "muted small" }, [e.reason, e.message].filter(Boolean).join(" · ")) : null,
                  e.worker ? h("div", { class: "faint small mono" }, "worker " + e.worker) : null));
            }))));
        },
      };
    },
  };
})();
