// Conveyor web UI, the Projects page: each project with its tasks counted by status; a project opens the task list
// filtered to it. Built on app.js's helpers (window.Conveyor); server data reaches the page only as text.
"use strict";

(() => {
  const { h, api, Poller, pageHead, liveBadge, number, ago, link, projectTasksHref, views, STATUS_LABELS } = window.Conveyor;

  const COUNTED = ["created", "queued", "in_progress", "completed", "failed", "stopped"];

  function projectsView(main) {
    document.title = "Projects · Conveyor";
    const list = h("div", { class: "card table-wrap" });
    main.append(pageHead("Projects", liveBadge()), list);

    let lastKey = "";
    async function load() {
      // The server counts each project's tasks by status (get_all_ex's include_stats): one call, however many tasks.
      const data = await api("projects.get_all_ex", {
        only_fields: ["id", "name", "created", "last_update"], order_by: ["name"], search_hidden: true, include_stats: true,
      });
      const projects = data.projects || [];
      const key = JSON.stringify(projects);
      if (key === lastKey) return;
      lastKey = key;
      const counts = new Map(projects.map((p) => {
        const active = (p.stats && p.stats.active) || {};
        return [p.id, { ...(active.status_count || {}), total: active.total_tasks || 0 }];
      }));
      if (!projects.length) {
        list.replaceChildren(h("div", { class: "empty" }, h("strong", null, "No projects yet"),
          "A task made with the clearml SDK (Task.init(project_name=…)) creates its project."));
        return;
      }
      list.replaceChildren(h("table", { class: "table projects" },
        h("thead", null, h("tr", null, h("th", null, "Project"), h("th", { class: "num" }, "Tasks"),
          COUNTED.map((s) => h("th", { class: "num col-wide" }, STATUS_LABELS[s])), h("th", { class: "col-wide" }, "Last update"))),
        h("tbody", null, projects.map((p) => {
          const c = counts.get(p.id) || { total: 0 };
          return h("tr", { dataset: { project: p.id } },
            h("td", { class: "cell-name" }, link(projectTasksHref(p.id), p.name || p.id), h("span", { class: "cell-id" }, p.id)),
            h("td", { class: "num" }, number(c.total)),
            COUNTED.map((s) => h("td", { class: "num col-wide" + (c[s] ? "" : " faint") }, number(c[s] || 0))),
            h("td", { class: "col-wide" }, ago(p.last_update || p.created)));
        }))));
    }

    const poller = new Poller(load, 5000).start();
    return { name: "projects", destroy: () => poller.stop(), refresh: () => poller.kick() };
  }

  views.projects = projectsView;
})();
