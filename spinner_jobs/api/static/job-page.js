// The live job page: follows the job's event stream and moves a bar per table.
// Plain script, no build step. Text from the job goes in through textContent only.
"use strict";

(() => {
  const root = document.getElementById("job");
  if (!root) return;
  const FINAL = ["job.completed", "job.failed", "job.cancelled"];
  const numbers = new Intl.NumberFormat("en-US");
  const fmt = (n) => numbers.format(n);
  const body = root.querySelector("tbody");
  const rows = new Map();
  for (const row of root.querySelectorAll("tr.table")) rows.set(row.dataset.tableId, row);

  function cell(tag, className) {
    const element = document.createElement(tag);
    element.className = className;
    return element;
  }

  function rowFor(id, table) {
    let row = rows.get(id);
    if (row) return row;
    row = cell("tr", "table");
    row.dataset.tableId = id;
    row.dataset.total = "";
    row.dataset.estimated = "false";
    const name = cell("th", "name");
    name.scope = "row";
    name.textContent = table.name;
    const bar = cell("td", "bar");
    bar.append(document.createElement("progress"));
    row.append(name, bar, cell("td", "count"), cell("td", "state"));
    body.append(row);
    rows.set(id, row);
    return row;
  }

  function updateTable(id, table) {
    const row = rowFor(id, table);
    const bar = row.querySelector("progress");
    // A known total (publish, export) wins; a download's is the last snapshot's size.
    const estimate = row.dataset.estimated === "true" ? Number(row.dataset.total) : null;
    const total = table.total ?? estimate;
    const done = table.status === "completed";
    if (done) {
      bar.max = Math.max(table.records, 1);
      bar.value = bar.max;
    } else if (total === null) {
      bar.removeAttribute("value"); // indeterminate: no size known yet
    } else {
      bar.max = Math.max(total, 1);
      bar.value = Math.min(table.records, total);
    }
    row.dataset.records = String(table.records);
    row.dataset.status = table.status;
    const approx = table.total == null && total !== null ? "~" : "";
    row.querySelector(".count").textContent =
      total === null || done ? fmt(table.records) : `${fmt(table.records)} / ${approx}${fmt(total)}`;
    const attempt = table.attempt > 1 ? ` (attempt ${table.attempt})` : "";
    const error = table.error ? `: ${table.error}` : "";
    row.querySelector(".state").textContent = table.status + attempt + error;
  }

  function render(progress) {
    if (!progress) return;
    for (const [id, table] of Object.entries(progress.tables)) updateTable(id, table);
    document.getElementById("total-records").textContent = fmt(progress.total_records);
    document.getElementById("status").textContent = progress.status;
    root.dataset.status = progress.status;
  }

  function duration(progress) {
    if (!progress.started_at || !progress.finished_at) return "";
    const seconds = (Date.parse(progress.finished_at) - Date.parse(progress.started_at)) / 1000;
    if (!(seconds >= 0)) return "";
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    return `${Math.floor(seconds / 60)} min ${Math.floor(seconds % 60)} s`;
  }

  // The same line the server writes for a job that had closed before the page opened.
  function summaryLine(progress) {
    const tables = Object.keys(progress.tables).length;
    const status = progress.status.charAt(0).toUpperCase() + progress.status.slice(1);
    let line = `${status}: ${fmt(progress.total_records)} records, ${tables} table${tables === 1 ? "" : "s"}`;
    const took = duration(progress);
    if (took) line += `, in ${took}`;
    if (progress.error) line += `. ${progress.error}`;
    return line;
  }

  function notice(text) {
    const element = document.getElementById("notice");
    element.textContent = text;
    element.hidden = !text;
  }

  function finish(event) {
    const progress = event.progress;
    if (!progress) return;
    render(progress);
    const summary = document.getElementById("summary");
    summary.className = `summary ${progress.status}`;
    document.getElementById("summary-line").textContent = summaryLine(progress);
    summary.hidden = false;
    notice("");
  }

  if (root.dataset.status !== "running") return; // closed already: the server wrote it all
  const source = new EventSource(root.dataset.events);
  source.addEventListener("progress", (event) => {
    notice("");
    render(JSON.parse(event.data).progress);
  });
  for (const kind of FINAL) {
    source.addEventListener(kind, (event) => {
      source.close();
      finish(JSON.parse(event.data));
    });
  }
  source.addEventListener("problem", (event) => {
    source.close();
    notice(JSON.parse(event.data).detail || "The event stream failed; reload the page.");
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      notice("Live updates stopped (the link may have expired); reload the page to see more.");
    } else {
      notice("Reconnecting…");
    }
  };
})();
