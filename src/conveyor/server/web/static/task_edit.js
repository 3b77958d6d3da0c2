// Conveyor web UI, the task's Execution tab: what the task runs (source, hyper-parameters, configuration objects,
// requirements, container, uncommitted diff). A draft (`created`) is edited here in place, section by section, with
// the same calls as the SDK (tasks.edit, tasks.edit_hyper_params, …); any other task shows the same fields read-only
// with "Clone to edit". Built on app.js's helpers (window.Conveyor); server data reaches the page only as text.
"use strict";

(() => {
  const { h, api, toast, reportError, dash, safeUrl, statusOf, taskActions, taskTabs, STATUS_LABELS } = window.Conveyor;

  const SOURCE_FIELDS = [["repository", "Repository"], ["branch", "Branch"], ["version_num", "Commit"], ["tag", "Tag"],
    ["entry_point", "Entry point"], ["working_dir", "Working dir"], ["binary", "Binary"]];
  const EDITABLE_SOURCE = ["repository", "branch", "version_num", "entry_point", "working_dir"];

  function section(title, ...content) {
    return h("section", { class: "card section" }, h("div", { class: "section-head" }, h("h2", null, title)), ...content);
  }

  function diffBlock(diff) {
    const lines = diff.split("\n");
    const shown = lines.slice(0, 5000);
    const pre = h("pre", { class: "pre diff" }, shown.map((line) => {
      let cls = null;
      if (line.startsWith("+++") || line.startsWith("---") || line.startsWith("diff ")) cls = "file";
      else if (line.startsWith("+")) cls = "add";
      else if (line.startsWith("-")) cls = "del";
      else if (line.startsWith("@@")) cls = "hunk";
      return cls ? h("span", { class: cls }, line) : line + "\n";
    }));
    if (lines.length > shown.length) pre.append("… " + (lines.length - shown.length) + " more lines");
    return pre;
  }

  const refusal = (message) => Object.assign(new Error(message), { user: true });
  const pipText = (reqs) => (Array.isArray(reqs.pip) ? reqs.pip.join("\n") : reqs.pip || "");
  // Args first (what the script's argparse reads), then the others by name.
  const sectionOrder = (params) => Object.keys(params).sort((a, b) => (a === "Args" ? -1 : b === "Args" ? 1 : a.localeCompare(b)));
  const kv = (pairs) => h("dl", { class: "kv" }, pairs.map(([k, v, mono]) => [h("dt", null, k), h("dd", { class: mono ? "mono" : "" }, dash(v))]));

  // --- read-only ------------------------------------------------------------------------------------------------
  function readOnly(task) {
    const script = task.script || {};
    const container = task.container || {};
    const params = task.hyperparams || {};
    const reqs = script.requirements || {};
    const pip = pipText(reqs);
    const otherReqs = Object.entries(reqs).filter(([k, v]) => k !== "pip" && v);
    const sections = sectionOrder(params);
    const config = Object.values(task.configuration || {});
    return [
      section("Source", kv(SOURCE_FIELDS.map(([key, label]) => [label,
        key === "repository" ? (script.repository ? safeUrl(script.repository) : (Object.keys(script).length ? "(standalone script)" : "")) : script[key], true]))),
      section("Hyper-parameters", sections.length ? h("table", { class: "table params" },
        h("thead", null, h("tr", null, h("th", null, "Section"), h("th", null, "Name"), h("th", null, "Value"), h("th", null, "Type"))),
        h("tbody", null, sections.flatMap((name) => Object.values(params[name] || {}).map((p) => h("tr", null,
          h("td", { class: "muted" }, name), h("td", { class: "mono" }, p.name), h("td", { class: "mono" }, dash(p.value)),
          h("td", { class: "muted" }, dash(p.type)))))))
        : h("div", { class: "none" }, "No arguments recorded.")),
      config.length ? section("Configuration objects", config.map((c) => [h("div", { class: "none" }, h("b", null, c.name || ""), c.type ? " · " + c.type : ""),
        h("pre", { class: "pre" }, typeof c.value === "string" ? c.value : JSON.stringify(c.value, null, 2))])) : null,
      section("Python requirements", pip ? h("pre", { class: "pre" }, pip)
        : h("div", { class: "none" }, "None recorded: the agent installs the repository's requirements file."),
      otherReqs.map(([k, v]) => [h("div", { class: "none" }, k), h("pre", { class: "pre" }, Array.isArray(v) ? v.join("\n") : String(v))])),
      section("Container", container.image ? [kv([["Image", container.image, true], ["Arguments", container.arguments, true]]),
        container.setup_shell_script ? [h("div", { class: "none" }, "Setup script"), h("pre", { class: "pre" }, container.setup_shell_script)] : null]
        : h("div", { class: "none" }, "None: the task runs directly on the worker.")),
      section("Uncommitted changes", script.diff ? diffBlock(script.diff) : h("div", { class: "none" }, "No diff: the task runs the commit as it is.")),
    ];
  }

  // --- editing a draft ------------------------------------------------------------------------------------------
  // A section of the form: its own Save button; `save()` makes the calls and throws on refusal (shown in the banner).
  // While another section holds unsaved edits the page is not redrawn, so each `save()` takes what it saved as its
  // new starting point (what the next save compares with).
  function editable(title, name, dirty, content, save) {
    const button = h("button", { type: "submit", class: "btn btn-primary btn-sm", dataset: { save: name } }, "Save");
    const form = h("form", {
      class: "card section editing", dataset: { section: name },
      oninput: () => dirty.add(name),
      onsubmit: async (e) => {
        e.preventDefault();
        button.disabled = true;
        try {
          await save();
          dirty.delete(name);
          toast(title + " saved");
        } catch (err) {
          reportError(err);
        } finally {
          button.disabled = false;
        }
      },
    }, h("div", { class: "section-head" }, h("h2", null, title), h("div", { class: "spacer" }), button), content);
    return form;
  }

  const input = (value, attrs) => h("input", { class: "input", value: value === null || value === undefined ? "" : String(value), spellcheck: "false", ...attrs });
  const textarea = (value, attrs) => h("textarea", { class: "textarea", value: value || "", spellcheck: "false", ...attrs });
  const fieldRow = (label, control) => h("label", { class: "field" }, label, control);

  // user:password@ never goes into a task (ARCHITECTURE decision 6), as env/repo_state.strip_credentials; ssh's
  // `git@` user (no password) is kept.
  function withoutCredentials(url) {
    const m = /^([a-z][a-z0-9+.-]*):\/\/([^/?#]*)@([^/?#]*)(.*)$/i.exec(url);
    if (!m) return url;
    const [, scheme, userinfo, host, rest] = m;
    if (/^(ssh|git\+ssh)$/i.test(scheme) && !userinfo.includes(":")) return url;
    return scheme + "://" + host + rest;
  }

  function sourceForm(task, dirty, done) {
    const script = task.script || {};
    // The repository is shown without user:password@; it is sent only when changed, so a stored one is kept.
    const original = Object.fromEntries(EDITABLE_SOURCE.map((k) => [k, k === "repository" ? safeUrl(script[k]) : script[k] || ""]));
    const inputs = Object.fromEntries(EDITABLE_SOURCE.map((k) => [k, input(original[k], { name: k })]));
    let hasDiff = Boolean(script.diff);
    const labels = Object.fromEntries(SOURCE_FIELDS);
    return editable("Source", "source", dirty, h("div", { class: "form-grid" }, EDITABLE_SOURCE.map((k) => fieldRow(labels[k], inputs[k]))), async () => {
      const changed = {};
      for (const k of EDITABLE_SOURCE) if (inputs[k].value.trim() !== original[k]) changed[k] = inputs[k].value.trim();
      // The agent checks out the recorded commit: a new branch or repository leaves it behind unless a commit is
      // given with it, and a new repository drops the diff made against the old one (as `conveyor task edit`).
      const notes = [];
      if ("repository" in changed) {
        const clean = withoutCredentials(changed.repository);
        if (clean !== changed.repository) {
          changed.repository = clean;
          inputs.repository.value = clean;
          notes.push("the credentials in the repository URL are not stored (every user can read a task): agents clone with their own git credentials");
          if (clean === original.repository) delete changed.repository;
        }
      }
      if (("branch" in changed || "repository" in changed) && !("version_num" in changed) && original.version_num) {
        changed.version_num = "";
        notes.push("the recorded commit is dropped: the agent runs the head of the " + ("repository" in changed ? "new repository" : "branch"));
      }
      if ("repository" in changed && hasDiff) {
        changed.diff = "";
        notes.push("the uncommitted changes of the old repository are dropped");
      }
      if (Object.keys(changed).length) await api("tasks.edit", { task: task.id, script: changed });
      for (const k of EDITABLE_SOURCE) if (k in changed) { original[k] = changed[k]; inputs[k].value = changed[k]; }
      if (changed.diff === "") hasDiff = false;
      for (const note of notes) toast(note.charAt(0).toUpperCase() + note.slice(1));
      done();
    });
  }

  function paramsForm(task, dirty, done) {
    let params = task.hyperparams || {};
    const list = h("div", { class: "param-sections" });
    const blocks = [];

    function paramRow(p) {
      const row = { name: input(p.name, { "aria-label": "Name", class: "input mono" }), value: input(p.value, { "aria-label": "Value", class: "input mono" }),
        type: input(p.type, { "aria-label": "Type", class: "input input-type" }), description: p.description || "" };
      row.el = h("tr", { class: "param", dataset: { param: p.name } }, h("td", null, row.name), h("td", null, row.value), h("td", null, row.type),
        h("td", { class: "actions" }, h("button", {
          type: "button", class: "btn btn-sm btn-icon", title: "Delete this parameter", "aria-label": "Delete parameter",
          onclick: () => { row.el.remove(); row.removed = true; dirty.add("params"); },
        }, "×")));
      return row;
    }
    function sectionBlock(name, items) {
      const block = { name, rows: items.map(paramRow) };
      const tbody = h("tbody", null, block.rows.map((r) => r.el));
      block.el = h("div", { class: "param-section", dataset: { paramSection: name } },
        h("div", { class: "param-section-head" }, h("h3", null, name), h("div", { class: "spacer" }),
          h("button", { type: "button", class: "btn btn-sm", onclick: () => { const r = paramRow({ name: "", value: "" }); block.rows.push(r); tbody.append(r.el); r.name.focus(); dirty.add("params"); } }, "Add parameter"),
          h("button", { type: "button", class: "btn btn-sm btn-danger", onclick: () => { block.el.remove(); block.removed = true; dirty.add("params"); } }, "Delete section")),
        h("table", { class: "table params" }, h("thead", null, h("tr", null, h("th", null, "Name"), h("th", null, "Value"), h("th", null, "Type"), h("th", { class: "actions" }))), tbody));
      blocks.push(block);
      list.append(block.el);
      return block;
    }
    for (const name of sectionOrder(params)) sectionBlock(name, Object.values(params[name] || {}));
    const newSection = input("", { placeholder: "New section (e.g. General)", "aria-label": "New section name" });
    const add = h("div", { class: "inline-form add-section" }, newSection, h("button", {
      type: "button", class: "btn btn-sm",
      onclick: () => {
        const name = newSection.value.trim();
        if (!name) { newSection.focus(); return; }
        const existing = blocks.find((b) => b.name === name && !b.removed);
        const block = existing || sectionBlock(name, []);
        const r = paramRow({ name: "", value: "" });
        block.rows.push(r);
        block.el.querySelector("tbody").append(r.el);
        newSection.value = "";
        dirty.add("params");
        r.name.focus();
      },
    }, "Add section"));

    return editable("Hyper-parameters", "params", dirty, [list, add], async () => {
      const deletes = [];
      const edits = [];
      const live = blocks.filter((b) => !b.removed);
      const liveNames = new Set(live.map((b) => b.name));
      for (const name of Object.keys(params)) if (!liveNames.has(name)) deletes.push({ section: name });
      for (const block of live) {
        const kept = new Set();
        for (const r of block.rows.filter((row) => !row.removed)) {
          const pname = r.name.value.trim();
          if (!pname) throw refusal("Every parameter needs a name (section " + block.name + ")");
          if (kept.has(pname)) throw refusal("Parameter " + block.name + "/" + pname + " is listed twice");
          kept.add(pname);
          edits.push({ section: block.name, name: pname, value: r.value.value, type: r.type.value.trim(), description: r.description });
        }
        for (const pname of Object.keys(params[block.name] || {})) if (!kept.has(pname)) deletes.push({ section: block.name, name: pname });
      }
      if (deletes.length) await api("tasks.delete_hyper_params", { task: task.id, hyperparams: deletes });
      if (edits.length) await api("tasks.edit_hyper_params", { task: task.id, hyperparams: edits, replace_hyperparams: "none" });
      params = {};
      for (const e of edits) (params[e.section] = params[e.section] || {})[e.name] = e;
      done();
    });
  }

  function configForm(task, dirty, done) {
    const config = task.configuration || {};
    const items = Object.values(config).map((c) => ({ c, text: textarea(typeof c.value === "string" ? c.value : JSON.stringify(c.value, null, 2), { "aria-label": c.name, rows: 6 }) }));
    const itemBox = (item) => {
      const box = h("div", { class: "config-item", dataset: { config: item.c.name } },
        h("div", { class: "config-item-head" }, h("span", { class: "muted" }, h("b", null, item.c.name), item.c.type ? " · " + item.c.type : ""),
          h("button", {
            type: "button", class: "btn btn-sm btn-danger", title: "Delete this configuration object",
            onclick: () => { item.removed = true; box.remove(); dirty.add("config"); },
          }, "Delete")), item.text);
      return box;
    };
    const list = h("div", { class: "config-items" }, items.map(itemBox));
    const newName = input("", { placeholder: "New configuration object name", "aria-label": "New configuration object name" });
    const add = h("div", { class: "inline-form add-section" }, newName, h("button", {
      type: "button", class: "btn btn-sm",
      onclick: () => {
        const name = newName.value.trim();
        if (!name || items.some((i) => i.c.name === name)) { newName.focus(); return; }
        const item = { c: { name, type: "", description: "" }, text: textarea("", { "aria-label": name, rows: 6 }), added: true };
        items.push(item);
        list.append(itemBox(item));
        newName.value = "";
        dirty.add("config");
        item.text.focus();
      },
    }, "Add"));
    return editable("Configuration objects", "config", dirty, [items.length ? null : h("div", { class: "none" }, "None yet."), list, add], async () => {
      const live = items.filter((i) => !i.removed);
      const removed = items.filter((i) => i.removed && !i.added).map((i) => i.c.name);
      const changed = live.filter(({ c, text, added }) => added || text.value !== (typeof c.value === "string" ? c.value : JSON.stringify(c.value, null, 2)))
        .map(({ c, text }) => ({ name: c.name, value: text.value, type: c.type || "", description: c.description || "" }));
      if (removed.length) await api("tasks.delete_configuration", { task: task.id, configuration: removed });
      if (changed.length) await api("tasks.edit_configuration", { task: task.id, configuration: changed });
      items.splice(0, items.length, ...live);
      for (const item of live) { item.c = { ...item.c, value: item.text.value }; item.added = false; }
      done();
    });
  }

  function requirementsForm(task, dirty, done) {
    let reqs = (task.script || {}).requirements || {};
    let original = pipText(reqs);
    const text = textarea(original, { "aria-label": "Python requirements", rows: 8, placeholder: "One requirement a line, e.g. numpy==1.26.4" });
    return editable("Python requirements", "requirements", dirty, [text,
      h("div", { class: "hint-line" }, "Empty: the agent installs the repository's requirements file.")], async () => {
      // The new list is what the agent installs: a list frozen by a run goes, and with it the original it kept
      // (org_pip, which agents with force_original_requirements install instead), as `conveyor task edit` does.
      if (text.value !== original) {
        const kept = Object.fromEntries(Object.entries(reqs).filter(([k]) => k !== "pip" && k !== "org_pip"));
        await api("tasks.set_requirements", { task: task.id, requirements: { ...kept, pip: text.value } });
        reqs = { ...kept, pip: text.value };
        original = text.value;
      }
      done();
    });
  }

  function containerForm(task, dirty, done) {
    const c = task.container || {};
    const image = input(c.image, { name: "image", placeholder: "e.g. python:3.12-slim (empty: no container)" });
    const args = input(c.arguments, { name: "arguments", placeholder: "e.g. --ipc=host" });
    const setup = textarea(c.setup_shell_script, { name: "setup_shell_script", rows: 4, "aria-label": "Setup script" });
    return editable("Container", "container", dirty, h("div", { class: "form-grid" }, fieldRow("Image", image), fieldRow("Arguments", args),
      h("label", { class: "field wide" }, "Setup script (runs in the container before the task)", setup)), async () => {
      await api("tasks.edit", { task: task.id, container: { image: image.value.trim(), arguments: args.value.trim(), setup_shell_script: setup.value } });
      done();
    });
  }

  function draftPanel(task, dirty, done) {
    const script = task.script || {};
    return [
      h("div", { class: "edit-note" }, "This task is a draft: edit any section and save it, then enqueue the task."),
      sourceForm(task, dirty, done), paramsForm(task, dirty, done), configForm(task, dirty, done),
      requirementsForm(task, dirty, done), containerForm(task, dirty, done),
      section("Uncommitted changes", script.diff ? diffBlock(script.diff) : h("div", { class: "none" }, "No diff: the task runs the commit as it is.")),
    ];
  }

  taskTabs.execution = {
    label: "Execution", order: 10,
    create(ctx) {
      const panel = h("div", { class: "execution" });
      const dirty = new Set(); // sections with unsaved edits: a refresh does not redraw over them
      let lastKey = "";
      const done = () => { lastKey = ""; ctx.reload(); };
      return {
        panel,
        update(task) {
          const draft = statusOf(task) === "created";
          const key = JSON.stringify([draft, task.script, task.hyperparams, task.container, task.configuration]);
          if (key === lastKey || (draft && dirty.size)) return;
          lastKey = key;
          if (draft) { panel.replaceChildren(...draftPanel(task, dirty, done).filter(Boolean)); return; }
          dirty.clear();
          const clone = h("button", {
            type: "button", class: "btn btn-primary btn-sm",
            onclick: async () => {
              try {
                const id = await taskActions.clone(task);
                if (id) ctx.after("clone", id);
              } catch (err) {
                reportError(err);
              }
            },
          }, "Clone to edit");
          panel.replaceChildren(h("div", { class: "edit-note readonly" },
            h("span", null, "Read-only: this task is " + (STATUS_LABELS[statusOf(task)] || statusOf(task)).toLowerCase()
              + ". Only a draft can be edited; clone it to change a copy."), clone), ...readOnly(task).filter(Boolean));
        },
      };
    },
  };
})();
