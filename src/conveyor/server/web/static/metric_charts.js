// Conveyor web UI: time-series charts for the Orchestration pages (worker machine stats, queue length and wait),
// drawn with the vendored uPlot. A range picker chooses the window; a TimeChart keeps one uPlot across refreshes.
// Like app.js, every piece of server data reaches the page as text (uPlot draws on a canvas and writes text nodes).
"use strict";

(() => {
  const { h, number, duration, debounce, PALETTE } = window.Conveyor;

  // Each range asks the server for about 60-100 points: the bucket (`interval`) grows with the window.
  const RANGES = [
    { key: "10m", label: "10 min", seconds: 600, interval: 10, refresh: 5000 },
    { key: "1h", label: "Hour", seconds: 3600, interval: 60, refresh: 15000 },
    { key: "1d", label: "Day", seconds: 86400, interval: 900, refresh: 60000 },
    { key: "1w", label: "Week", seconds: 7 * 86400, interval: 7200, refresh: 300000 },
  ];
  const rangeOf = (key) => RANGES.find((r) => r.key === key) || RANGES[0];

  // The request window of a range, ending now (seconds since the epoch, as the stats calls take them).
  function windowOf(range) {
    const to = Math.floor(Date.now() / 1000);
    return { from: to - range.seconds, to, interval: range.interval };
  }

  // A segmented control: 10 min | Hour | Day | Week. `onPick(range)` runs when the user picks another one.
  function rangePicker(currentKey, onPick) {
    let current = currentKey;
    const buttons = RANGES.map((range) => h("button", {
      type: "button", class: "seg", dataset: { range: range.key }, title: "Show the last " + range.label.toLowerCase(),
      onclick: () => {
        if (range.key === current) return;
        current = range.key;
        mark();
        onPick(range);
      },
    }, range.label));
    function mark() {
      for (const b of buttons) {
        b.classList.toggle("active", b.dataset.range === current);
        b.setAttribute("aria-pressed", String(b.dataset.range === current));
      }
    }
    mark();
    return h("div", { class: "segmented", role: "group", "aria-label": "Time range" }, buttons);
  }

  // --- units --------------------------------------------------------------------------------------------------
  function megabytes(mb) {
    const v = Number(mb);
    if (Math.abs(v) >= 1024 * 1024) return number(v / 1024 / 1024, 1) + " TB";
    if (Math.abs(v) >= 1024) return number(v / 1024, 1) + " GB";
    return number(v, 0) + " MB";
  }
  const UNITS = {
    percent: (v) => number(v, 1) + "%",
    mb: megabytes,
    mbps: (v) => number(v, v < 10 ? 2 : 1) + " MB/s",
    celsius: (v) => number(v, 0) + " °C",
    count: (v) => number(v, 1),
    seconds: (v) => (v < 1 ? number(v, 2) + "s" : duration(v * 1000)),
  };

  // Axis steps for megabytes: decimal below a gigabyte, binary multiples of it above.
  const BINARY_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072,
    262144, 524288, 1048576, 2097152, 4194304];

  // --- aligning series ----------------------------------------------------------------------------------------
  // lines: [{ label, values: Map(date -> value), min?, max? }] → uPlot's [xs, ...ys]. Dates where a line has no
  // value are null; a silence much longer than the usual spacing (the worker was down) breaks the line there.
  function align(lines, interval) {
    const dates = [...new Set(lines.flatMap((l) => [...l.values.keys()]))].sort((a, b) => a - b);
    const steps = dates.slice(1).map((d, i) => d - dates[i]).sort((a, b) => a - b);
    const usual = steps.length ? steps[Math.floor(steps.length / 2)] : interval;
    const gap = 3 * Math.max(interval, usual);
    const xs = [];
    const breaks = new Set();
    dates.forEach((d, i) => {
      if (i && d - dates[i - 1] > gap) { xs.push(dates[i - 1] + interval); breaks.add(xs.length - 1); }
      xs.push(d);
    });
    const column = (map) => xs.map((x, i) => (breaks.has(i) || !map.has(x) ? null : map.get(x)));
    const ys = [];
    for (const line of lines) {
      ys.push(column(line.values));
      if (line.max && line.min) ys.push(column(line.max), column(line.min));
    }
    return [xs, ...ys];
  }

  // --- a chart ------------------------------------------------------------------------------------------------
  // One card: a title, the latest value of each line, and a uPlot over the chosen window. `key` names the chart
  // for the page (data-chart) and `sync` links the cursors of the charts on one page.
  class TimeChart {
    constructor({ key, title, unit, min, max, sync }) {
      this.unit = UNITS[unit] || UNITS.count;
      this.incrs = unit === "mb" ? BINARY_STEPS : undefined; // 512 MB, 1 GB, 2 GB... rather than 9.8 GB
      this.min = min;
      this.max = max;
      this.sync = sync;
      this.plot = null;
      this.shape = "";
      this.window = null;
      this.now = h("span", { class: "chart-now" });
      this.box = h("div", { class: "chart-plot" });
      this.note = h("div", { class: "chart-empty", hidden: true }, "No reports in this range");
      this.el = h("section", { class: "card chart chart-time", dataset: { chart: key, points: "0" } },
        h("div", { class: "chart-head" }, h("h2", null, title), this.now), this.box, this.note);
      this.onResize = debounce(() => this.resize(), 150);
      window.addEventListener("resize", this.onResize);
    }

    width() {
      return Math.max(280, this.box.clientWidth || this.el.clientWidth - 28 || 520);
    }

    resize() {
      if (this.plot) this.plot.setSize({ width: this.width(), height: 200 });
    }

    // lines as for align(); win = { from, to, interval }.
    update(lines, win) {
      this.window = win;
      const data = align(lines, win.interval);
      const points = data.slice(1).reduce((n, ys) => n + ys.filter((v) => v !== null).length, 0);
      this.el.dataset.points = String(points);
      this.note.hidden = points > 0;
      this.now.replaceChildren(...lines.map((line, i) => {
        const latest = [...line.values.entries()].sort((a, b) => a[0] - b[0]).pop();
        return h("span", { class: "chart-latest", title: "Latest average of " + line.label },
          h("span", { class: "sw", style: { background: PALETTE[i % PALETTE.length] } }),
          line.label + " " + (latest ? this.unit(latest[1]) : "—"));
      }));
      const shape = JSON.stringify(lines.map((l) => [l.label, !!l.max]));
      if (!this.plot || shape !== this.shape) {
        this.build(lines, data);
        this.shape = shape;
      } else {
        this.plot.setData(data);
      }
    }

    build(lines, data) {
      if (this.plot) this.plot.destroy();
      const fmt = this.unit;
      const series = [{ label: "Time" }];
      const bands = [];
      lines.forEach((line, i) => {
        const color = PALETTE[i % PALETTE.length];
        series.push({ label: line.label, stroke: color, width: 1.8, spanGaps: false, value: (u, v) => (v === null ? "—" : fmt(v)) });
        if (line.max && line.min) {
          const at = series.length;
          series.push({ label: "max", stroke: color + "55", width: 1, spanGaps: false, value: (u, v) => (v === null ? "—" : fmt(v)) });
          series.push({ label: "min", stroke: color + "55", width: 1, spanGaps: false, value: (u, v) => (v === null ? "—" : fmt(v)) });
          bands.push({ series: [at, at + 1], fill: color + "1f" });
        }
      });
      const { min, max } = this;
      const opts = {
        width: this.width(),
        height: 200,
        series,
        bands,
        cursor: this.sync ? { sync: { key: this.sync } } : {},
        scales: {
          // The whole chosen window, not only where there is data: an idle hour shows as an idle hour.
          x: { time: true, range: () => [this.window.from, this.window.to] },
          y: {
            range: (u, lo, hi) => {
              const top = max !== undefined ? Math.max(max, hi || 0) : (hi > 0 ? hi * 1.1 : 1);
              return [min !== undefined ? Math.min(min, lo || 0) : Math.min(0, lo || 0), top];
            },
          },
        },
        axes: [
          { stroke: "#8a93a2", grid: { stroke: "#edf0f4" }, ticks: { stroke: "#edf0f4" } },
          { stroke: "#8a93a2", grid: { stroke: "#edf0f4" }, ticks: { stroke: "#edf0f4" }, incrs: this.incrs,
            values: (u, splits) => splits.map((v) => fmt(v)),
            // Wide enough for the longest label ("0.25 MB/s"), at about 7.5 px a character of the 11 px axis font.
            size: (u, values) => 20 + 7.5 * Math.max(4, ...(values || []).map((v) => String(v).length)) },
        ],
      };
      this.plot = new window.uPlot(opts, data, this.box);
    }

    destroy() {
      window.removeEventListener("resize", this.onResize);
      if (this.plot) this.plot.destroy();
      this.plot = null;
    }
  }

  window.ConveyorCharts = Object.freeze({ RANGES, rangeOf, windowOf, rangePicker, TimeChart, UNITS });
})();
