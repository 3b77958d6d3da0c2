// Conveyor web UI, the Projects page: each project with its tasks counted by status; a project opens the task list
// filtered to it. Built on app.js's helpers (window.Conveyor); server data reaches the page only as text.
"use strict";

(() => {
  const { h, api, Poller, pageHead, liveBadge, number, ago, link, projectTasksHref, views, STATUS_LABELS } = window.Conveyor;

  const COUNTED = ["created", "queued", "in_progress", "completed", "failed", "stopped"];
  const TASK_LIMIT = 10000; // the server's largest page: counts cover the newest this many tasks

  function projectsView(main) {
    document.title = "Projects · Conveyor";
    const list = h("div", { class: "card table-wrap" });
    const note = h("div", { class: "hint-line" });
    main.append(pageHead("Projects", liveBadge()), list, note);

    let lastKey = "";
    async function load() {
      const [projectData, taskData] = await Promise.all([
        api("projects.get_all", { only_fields: ["id", "name", "created", "last_update"], order_by: ["name"], search_hidden: true }),
        api("tasks.get_all", { only_fields: ["id", "project", "status"], order_by: ["-created"], page: 0, page_size: TASK_LIMIT }),
      ]);
      const projects = projectData.projects || [];
      const tasks = taskData.tasks || [];
      const key = JSON.stringify([projects, tasks]);
      if (key === lastKey) return;
      lastKey = key;
      const counts = new Map();
      for (const t of tasks) {
        const c = counts.get(t.project || "") || { total: 0 };
        c.total += 1;
        c[t.status] = (c[t.status] || 0) + 1;
        counts.set(t.project || "", c);
      }
      note.textContent = tasks.length >= TASK_LIMIT ? "Counts cover the newest " + number(TASK_LIMIT) + " tasks." : "";
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
