// conveyor dashboard: uses only the hub's public API (REST under /api/v1, WebSocket /ws).
// Every URL is relative to the page's, so the hub may be served under a path prefix
// (https://host/conveyor/): a proxy that strips it sends the hub its own paths.
// Every value from the hub is rendered with textContent, never as HTML.
"use strict";

(() => {
  const KEY_STORAGE = "conveyor.dashboard.key";
  const LIVE_LIMIT = 100;
  // newest first; the tasks of one batch share created_at, and ids are time-ordered
  const LIVE_SORT = ["-created_at", "-id"];
  const LIVE_FIELDS = ["action", "status", "priority", "attempts", "max_attempts", "progress",
                       "created_at", "run_at"];
  const STATS_EVERY = 2000;
  const WORKERS_EVERY = 3000;
  // a connection that stops carrying data without closing (a network gone dead) is
  // noticed by its silence: the page pings, and a ping unanswered this long gives it up
  const PING_EVERY = 5000;
  const SILENCE_LIMIT = 15000;
  // after giving one up, the hub may still count it against the key's connection
  // limit until its own ping times out: a refusal for that limit is retried meanwhile
  const RETRY_AT_LIMIT = 5000;
  const OLD_CONNECTION_KEPT = 90000;
  const REQUEST_TIMEOUT = 15000;  // a REST call that has no answer by then fails
  const WINDOW = 60;  // seconds of throughput kept
  const FINAL = new Set(["succeeded", "failed", "aborted"]);

  const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);
  const make = (tag, text, testid) => {
    const el = document.createElement(tag);
    if (text !== undefined && text !== null) el.textContent = String(text);
    if (testid) el.dataset.testid = testid;
    return el;
  };
  const show = (testid, visible) => { $(testid).hidden = !visible; };
  const setText = (testid, text) => { $(testid).textContent = text == null ? "" : String(text); };
  const time = (ts) => (ts == null ? "" : new Date(ts * 1000).toLocaleString());
  // when a queued task runs: its run_at while that is ahead (a delay, a backoff
  // between attempts, a polling task's next look), "" when it is due now
  const runsAt = (task) => (task.status === "queued" && task.run_at != null
                            && task.run_at * 1000 > Date.now() ? time(task.run_at) : "");
  const json = (value) => JSON.stringify(value, null, 2);
  const shortId = (id) => "…" + id.slice(-8);  // UUIDv7: the start is the time, the end random

  const state = {
    key: null,          // the credential's key (null: insecure hub)
    ws: null,
    authed: false,
    nextId: 1,
    live: null,         // {id, seq, parts, filter}
    tasks: new Map(),   // id -> task (the live window)
    rows: new Map(),    // id -> <tr>
    watch: null,        // {id, taskId, seqs}
    viewed: null,       // the task shown in the task view
    timers: [],
    session: 0,         // bumped on sign out: a pending reconnection is dropped
    statsSoon: null,
    samples: [],        // [{t, finished}] from successive stats
    pingSince: null,    // performance.now() of a ping not answered yet (nor anything else)
    dropped: null,      // performance.now() when a silent connection was given up
    connected: "",      // the header's text while all is well
    panelErrors: {},    // what the latest refresh of a panel failed with, by panel
    acting: false,      // a button's request is under way
  };

  // -- messages to the user -----------------------------------------------------------

  function notice(text) {
    setText("notice", text);
    show("notice", Boolean(text));
  }

  function connection(text) { setText("connection", text); }

  // the hub's WebSocket, beside the page (ws: for an http: page, wss: for https:)
  function hubSocketURL() {
    const url = new URL("ws", location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.href;
  }

  // -- REST ----------------------------------------------------------------------------

  class HubError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }

  async function api(method, path, body) {
    const headers = {};
    if (state.key) headers.Authorization = `Bearer ${state.key}`;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    init.signal = AbortSignal.timeout(REQUEST_TIMEOUT);
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      if (err.name === "TimeoutError") {
        throw new HubError(0, "timeout", `no answer from the hub within ${REQUEST_TIMEOUT / 1000} s`);
      }
      throw err;
    }
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) {
      const err = (data && data.error) || {};
      if (response.status === 401 && state.authed) {
        signOut("The hub no longer accepts this key: " + (err.message || "unauthorized"));
      }
      throw new HubError(response.status, err.code || "http_error",
                         err.message || `HTTP ${response.status}`);
    }
    return data;
  }

  // -- start, key, sign out ------------------------------------------------------------

  async function start() {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("key-input").value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_STORAGE, key);
      $("key-input").value = "";
      state.key = key;
      connect();
    });
    $("forget-key").addEventListener("click", () => signOut(""));
    $("filters").addEventListener("submit", (event) => { event.preventDefault(); subscribe(); });
    $("filter-status").addEventListener("change", subscribe);
    $("task-close").addEventListener("click", () => { location.hash = ""; });
    $("task-abort").addEventListener("click", () => act("abort", {}));
    $("task-retry").addEventListener("click", () => act("retry", {}));
    $("task-prioritize").addEventListener("click", () => {
      const raw = $("task-priority-input").value.trim();
      const priority = Number(raw);
      if (raw === "" || !Number.isFinite(priority)) {
        actionError("the priority must be a number");
        return;
      }
      act("prioritize", { priority });
    });
    window.addEventListener("hashchange", route);

    // An insecure hub answers without a key: then none is asked for.
    connection("checking the hub");
    let insecure = false;
    try {
      const probe = await fetch("healthz", { cache: "no-store" });
      if (probe.status === 429) {
        notice("Too many failed logins from this address: wait a minute, then reload.");
      }
      insecure = probe.ok;
    } catch (err) {
      notice("Cannot reach the hub: " + err.message);
      return;
    }
    if (insecure) {
      state.key = null;
      show("key-form", false);
      connect();
      return;
    }
    state.key = sessionStorage.getItem(KEY_STORAGE);
    if (state.key) connect(); else askKey();
  }

  function askKey() {
    connection("not connected");
    show("main", false);
    show("forget-key", false);
    show("key-form", true);
    $("key-input").focus();
  }

  function signOut(message) {
    state.session += 1;
    sessionStorage.removeItem(KEY_STORAGE);
    state.key = null;
    stop();
    notice(message);
    askKey();
  }

  // A valid key whose credential has all the connections it may have
  // (max_instances): the key is kept, so that a reload connects once another of
  // its connections has closed.
  function atLimit(message) {
    state.session += 1;
    stop();
    show("main", false);
    show("key-form", false);
    show("forget-key", true);
    connection("not connected");
    notice("The hub refused another connection for this key (" + message + "): close one "
           + "of its other connections, then reload the page.");
  }

  function stop() {
    state.authed = false;
    state.timers.forEach(clearInterval);
    state.timers = [];
    if (state.ws) {
      const ws = state.ws;
      state.ws = null;
      ws.onclose = null;
      ws.close();
    }
    state.live = null;
    state.watch = null;
  }

  // -- WebSocket -----------------------------------------------------------------------

  function connect() {
    stop();
    show("key-form", false);
    connection("connecting");
    const ws = new WebSocket(hubSocketURL());
    state.ws = ws;
    let refused = false;
    ws.onopen = () => {
      if (state.key) send({ type: "hello", id: "hello", key: state.key });
    };
    ws.onmessage = (event) => {
      state.pingSince = null;  // the connection carries data
      let data;
      try { data = JSON.parse(event.data); } catch (_) { return; }
      for (const msg of Array.isArray(data) ? data : [data]) {
        if (!state.authed && msg.type === "error") refused = true;
        handle(msg);
      }
    };
    ws.onclose = (event) => {
      if (state.ws !== ws) return;  // closed on purpose
      state.ws = null;
      stop();
      if (refused) return;  // the hub's error message is shown already
      if (event.code === 4001) {
        signOut("The hub closed the connection: this key is no longer valid.");
        return;
      }
      reconnect(`disconnected (code ${event.code})`);
    };
  }

  function reconnect(why) {
    const session = state.session;
    connection(`${why}; reconnecting in 2 s`);
    setTimeout(() => { if (state.session === session && !state.ws) connect(); }, 2000);
  }

  // Ping the hub; a connection silent for SILENCE_LIMIT is dropped and made again
  // (a dead network may keep a WebSocket "open" for many minutes).
  function keepAlive() {
    const ws = state.ws;
    if (!ws || !state.authed) return;
    const now = performance.now();
    if (state.pingSince !== null && now - state.pingSince > SILENCE_LIMIT) {
      state.ws = null;
      ws.onclose = null;
      ws.onmessage = null;
      stop();
      try { ws.close(); } catch (_) { /* closing a dead socket */ }
      state.dropped = now;
      reconnect(`no answer from the hub for ${SILENCE_LIMIT / 1000} s`);
      return;
    }
    if (state.pingSince === null) {
      state.pingSince = now;
      send({ type: "ping", id: newId("ping") });
      // looked at again just past the limit, not at the next tick (up to 5 s late)
      setTimeout(keepAlive, SILENCE_LIMIT + 50);
    }
  }

  function send(msg) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
  }

  function newId(prefix) { return `${prefix}-${state.nextId++}`; }

  function handle(msg) {
    if (msg.type === "welcome") { welcome(msg); return; }
    if (!state.authed) {
      if (msg.type === "error") {
        if (msg.code === "rate_limited" && !/^too many failed logins/.test(msg.message || "")) {
          if (state.dropped !== null && performance.now() - state.dropped < OLD_CONNECTION_KEPT) {
            // most likely the connection given up for its silence, still counted
            const session = state.session;
            connection("the hub still counts the connection given up; trying again in 5 s");
            setTimeout(() => { if (state.session === session) connect(); }, RETRY_AT_LIMIT);
            return;
          }
          atLimit(msg.message || "too many connections");
          return;
        }
        // the hub's lockout message says it all ("too many failed logins from ...")
        const text = msg.code === "rate_limited"
          ? msg.message.charAt(0).toUpperCase() + msg.message.slice(1) + "."
          : "The hub refused this key: " + msg.message;
        signOut(text);
      }
      return;
    }
    if (state.live && msg.id === state.live.id) { onLive(msg); return; }
    if (state.watch && msg.id === state.watch.id) { onWatch(msg); return; }
    if (state.watch && msg.id === state.watch.live) { onViewLive(msg); return; }
    // late answers of closed streams (unlive, unwatch, old ids) are ignored
  }

  function welcome(msg) {
    if (!msg.admin) {
      stop();
      state.session += 1;
      sessionStorage.removeItem(KEY_STORAGE);
      state.key = null;
      show("main", false);
      connection(`signed in as ${msg.credential}`);
      notice("This key has no admin right: the dashboard needs the key of a credential with "
             + "the admin right (conveyor credentials add NAME --admin).");
      show("forget-key", true);
      return;
    }
    state.authed = true;
    notice("");
    state.connected = state.key ? `connected as ${msg.credential}` : "connected (insecure hub)";
    state.panelErrors = {};
    state.pingSince = null;
    state.dropped = null;
    connection(state.connected);
    show("forget-key", Boolean(state.key));
    show("main", true);
    subscribe();
    refreshStats();
    refreshWorkers();
    state.timers.push(setInterval(refreshStats, STATS_EVERY));
    state.timers.push(setInterval(refreshWorkers, WORKERS_EVERY));
    state.timers.push(setInterval(keepAlive, PING_EVERY));
    route();
  }

  // -- the live task table ----------------------------------------------------------------

  function globRegex(pattern) {
    const escaped = pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&");
    return "^" + escaped.replace(/\*/g, ".*").replace(/\?/g, ".") + "$";
  }

  function currentFilter() {
    const parts = [];
    const status = $("filter-status").value;
    if (status) parts.push({ status });
    const action = $("filter-action").value.trim();
    if (action) {
      parts.push(/[*?]/.test(action) ? { action: { $regex: globRegex(action) } } : { action });
    }
    const raw = $("filter-query").value.trim();
    if (raw) {
      let query;
      try { query = JSON.parse(raw); } catch (err) {
        throw new Error("The query is not valid JSON: " + err.message);
      }
      parts.push(query);
    }
    if (parts.length === 0) return {};
    return parts.length === 1 ? parts[0] : { $and: parts };
  }

  function subscribe() {
    if (!state.authed) return;
    if (state.live) send({ type: "unlive", id: newId("unlive"), live: state.live.id });
    state.live = null;
    let filter;
    try { filter = currentFilter(); } catch (err) {
      filterError(err.message);
      clearRows();
      setText("task-count", "");
      return;
    }
    filterError("");
    const id = newId("live");
    state.live = { id, seq: 0, parts: [], filter };
    send({ type: "live", id, filter, sort: LIVE_SORT, limit: LIVE_LIMIT,
           fields: LIVE_FIELDS });
  }

  function filterError(text) {
    setText("filter-error", text);
    show("filter-error", Boolean(text));
  }

  function onLive(msg) {
    const live = state.live;
    if (msg.type === "error") {
      const message = msg.message || "";
      filterError(msg.path && !message.includes(msg.path)
        ? `${message} (at ${msg.path})` : message);
      state.live = null;
      clearRows();
      setText("task-count", "");  // the query did not run: not "no task matches"
      return;
    }
    if (msg.seq !== live.seq + 1) { subscribe(); return; }  // a gap: start again
    live.seq = msg.seq;
    if (msg.type === "snapshot") {
      live.parts.push(...msg.tasks);
      if (msg.more) return;
      clearRows();
      for (const task of live.parts) upsert(task);
      live.parts = [];
    } else if (msg.type === "added" || msg.type === "changed") {
      upsert(msg.task);
    } else if (msg.type === "removed") {
      remove(msg.task_id);
    }
    countRows();
    if (msg.type !== "snapshot") statsSoon();
  }

  function clearRows() {
    state.tasks.clear();
    state.rows.clear();
    $("task-rows").replaceChildren();
    countRows();
  }

  function countRows() {
    const n = state.tasks.size;
    setText("task-count", n === 0 ? "No task matches."
      : `${n} task${n === 1 ? "" : "s"}, newest first` + (n >= LIVE_LIMIT ? ` (the first ${LIVE_LIMIT})` : ""));
  }

  function newer(a, b) {  // the order of LIVE_SORT
    if (a.created_at !== b.created_at) return a.created_at > b.created_at;
    return a.id > b.id;
  }

  function upsert(task) {
    const old = state.tasks.get(task.id);
    if (old && old.version > task.version) return;
    state.tasks.set(task.id, task);
    let row = state.rows.get(task.id);
    if (!row) {
      row = buildRow(task);
      state.rows.set(task.id, row);
      const body = $("task-rows");
      const before = [...body.children].find((tr) => newer(task, state.tasks.get(tr.dataset.taskId)));
      body.insertBefore(row, before || null);
    }
    fillRow(row, task);
  }

  function remove(taskId) {
    state.tasks.delete(taskId);
    const row = state.rows.get(taskId);
    if (row) row.remove();
    state.rows.delete(taskId);
  }

  function buildRow(task) {
    const tr = make("tr", null, "task-row");
    tr.dataset.taskId = task.id;
    const cells = ["id", "action", "status", "priority", "attempts", "progress", "created"];
    for (const name of cells) tr.append(make("td", null, `cell-${name}`));
    tr.firstChild.className = "id";
    tr.firstChild.title = task.id;
    const link = make("a", null, "task-link");
    link.href = `#/tasks/${encodeURIComponent(task.id)}`;
    link.setAttribute("aria-label", `task ${task.id}`);
    tr.firstChild.append(link);
    tr.lastChild.className = "created";
    tr.addEventListener("click", () => { location.hash = `#/tasks/${task.id}`; });
    return tr;
  }

  function fillRow(tr, task) {
    const cell = (name) => tr.querySelector(`[data-testid="cell-${name}"]`);
    cell("id").firstChild.textContent = shortId(task.id);
    cell("action").textContent = task.action;
    cell("status").textContent = task.status;
    cell("status").className = `status-${task.status}`;
    const due = runsAt(task);
    if (due) cell("status").title = `runs at ${due}`;
    else cell("status").removeAttribute("title");
    cell("priority").textContent = String(task.priority);
    cell("attempts").textContent = task.max_attempts == null
      ? String(task.attempts) : `${task.attempts} / ${task.max_attempts}`;
    cell("progress").replaceChildren(...progressNodes(task.progress));
    cell("created").textContent = time(task.created_at);
  }

  // a <progress> bar refuses non-finite numbers (a number past a float reads as Infinity)
  function fillBar(bar, progress) {
    if (progress && Number.isFinite(progress.total) && progress.total > 0) {
      bar.max = progress.total;
      if (Number.isFinite(progress.current)) bar.value = progress.current;
      else bar.removeAttribute("value");
    } else {
      bar.removeAttribute("value");
    }
  }

  function progressNodes(progress) {
    if (!progress) return [];
    const bar = make("progress", null, "progress-bar");
    bar.setAttribute("aria-label", "progress");
    fillBar(bar, progress);
    return [bar, make("span", progressText(progress))];
  }

  function progressText(progress) {
    if (!progress) return "";
    const current = progress.current == null ? "-" : progress.current;
    const count = progress.total != null ? `${current} / ${progress.total}`
                                         : (progress.current == null ? "" : `${current}`);
    return [count, progress.message || ""].filter(Boolean).join(" ");
  }

  // -- the task view -----------------------------------------------------------------------

  const BAD_ADDRESS = "that address names no task";

  function route() {
    const match = /^#\/tasks\/([^/]+)$/.exec(location.hash);
    if (!state.authed) return;
    let taskId = null;
    try {
      taskId = match ? decodeURIComponent(match[1]) : null;
      if ($("notice").textContent === BAD_ADDRESS) notice("");
    } catch (_) {  // a malformed address (%E0%A4%A): no task to show
      notice(BAD_ADDRESS);
    }
    if (taskId) openTask(taskId); else closeTask();
  }

  function openTask(taskId) {
    if (!state.watch || state.watch.taskId !== taskId) {
      stopWatch();
      const opening = $("task-view").hidden;
      // a reconnection watches the task shown again: what the view shows stays (and
      // the focus in it) while the task is read again
      if (opening || !state.viewed || state.viewed.id !== taskId) resetView(taskId);
      watch(taskId);
      show("tasks-panel", false);
      show("task-view", true);
      if (opening) $("task-heading").focus();
      return;
    }
    show("tasks-panel", false);
    show("task-view", true);
  }

  function resetView(taskId) {
    state.viewed = null;
    $("task-logs").replaceChildren();
    setText("task-id", taskId);
    for (const name of ["action", "status", "reason", "priority", "attempts", "created",
                        "started", "finished", "worker", "payload", "progress-text",
                        "result", "error-type", "error-message", "error-traceback"]) {
      setText(`task-${name}`, "");
    }
    // nothing of the task shown before stays until this one is read
    $("task-errors").replaceChildren();
    renderProgress(null);
    for (const name of ["task-result-box", "task-error", "task-errors-box", "task-abort",
                        "task-retry", "task-prioritize-form"]) {
      show(name, false);
    }
    actionError("");
  }

  function closeTask() {
    stopWatch();
    state.viewed = null;
    show("task-view", false);
    show("tasks-panel", true);
  }

  // the view watches its task (logs, progress, status) and, while the watch lasts,
  // keeps a live query of it: a watch has no message for every stored change (a
  // priority set elsewhere)
  function watch(taskId) {
    const id = newId("watch");
    const live = newId("viewlive");
    state.watch = { id, taskId, seqs: new Set(), ended: false, live };
    $("task-logs").replaceChildren();
    send({ type: "watch", id, task_id: taskId, logs: true, max_level: "debug" });
    send({ type: "live", id: live, filter: { id: taskId }, limit: 1 });
  }

  function stopWatch() {
    if (state.watch && !state.watch.ended) {
      send({ type: "unwatch", id: newId("unwatch"), stream: state.watch.id });
      send({ type: "unlive", id: newId("unlive"), live: state.watch.live });
    }
    state.watch = null;
  }

  function onViewLive(msg) {
    const task = msg.type === "snapshot" ? (msg.tasks || [])[0] : msg.task;
    if (state.watch.ended || !task || !state.viewed || task.id !== state.viewed.id) return;
    if (task.version > state.viewed.version) renderTask(task);  // else told by the watch
  }

  function onWatch(msg) {
    if (msg.type === "error") {
      actionError(msg.message);
      endWatch();
      return;
    }
    if (msg.task) renderTask(msg.task);
    if (msg.type === "log" && msg.log) addLog(msg.log);
    if (msg.type === "update" && msg.progress && state.viewed) {
      renderProgress(msg.progress, state.viewed.status);
    }
    if (msg.type === "abort_requested" && state.viewed) {
      state.viewed = { ...state.viewed, abort_requested: msg.reason };
      setText("task-reason", `abort requested: ${msg.reason}`);
      show("task-abort", false);  // requested already (from here or elsewhere)
    }
    if (msg.type === "end") endWatch();
  }

  function endWatch() {  // the view's live query ends with its watch
    state.watch.ended = true;
    send({ type: "unlive", id: newId("unlive"), live: state.watch.live });
  }

  function addLog(line) {
    if (state.watch.seqs.has(line.seq)) return;
    state.watch.seqs.add(line.seq);
    const li = make("li", null, "log-line");
    li.className = line.level;
    li.append(make("span", `${new Date(line.ts * 1000).toLocaleTimeString()} `),
              make("span", `${line.level.toUpperCase()} `),
              make("span", line.message, "log-message"));
    if (line.data != null) li.append(make("span", ` ${JSON.stringify(line.data)}`));
    $("task-logs").append(li);
  }

  function renderProgress(progress, status) {
    const bar = $("task-progress");
    fillBar(bar, progress);
    // an ended task without a measured progress: a still bar (full if it succeeded),
    // not the animated one of work under way
    if (FINAL.has(status) && !bar.hasAttribute("value")) {
      bar.max = 1;
      bar.value = status === "succeeded" ? 1 : 0;
    }
    setText("task-progress-text", progressText(progress));
  }

  function renderTask(task) {
    if (state.viewed && state.viewed.version > task.version) return;
    state.viewed = task;
    setText("task-id", task.id);
    setText("task-action", task.action);
    setText("task-status", task.status);
    $("task-status").className = `status-${task.status}`;
    setText("task-reason", task.abort_requested ? `abort requested: ${task.abort_requested}`
                                                : (task.reason || ""));
    setText("task-priority", task.priority);
    setText("task-attempts", task.max_attempts == null ? task.attempts
                                                       : `${task.attempts} / ${task.max_attempts}`);
    setText("task-run-at", runsAt(task));
    setText("task-created", time(task.created_at));
    setText("task-started", time(task.started_at));
    setText("task-finished", time(task.finished_at));
    setText("task-worker", task.worker || "");
    // parent_id is a label (the parent may not exist): a link to its view
    const parent = $("task-parent");
    if (task.parent_id) {
      const link = make("a", task.parent_id, "task-parent-link");
      link.href = `#/tasks/${encodeURIComponent(task.parent_id)}`;
      parent.replaceChildren(link);
    } else {
      parent.replaceChildren();
    }
    renderProgress(task.progress, task.status);
    setText("task-payload", json(task.payload));
    show("task-result-box", task.status === "succeeded");
    setText("task-result", task.status === "succeeded" ? json(task.result) : "");
    const error = task.error;
    show("task-error", Boolean(error) && FINAL.has(task.status) && task.status !== "succeeded");
    setText("task-error-type", error ? error.type : "");
    setText("task-error-message", error ? error.message : "");
    setText("task-error-traceback", error ? (error.traceback || "") : "");
    const errors = task.errors || [];
    show("task-errors-box", errors.length > 0);
    $("task-errors").replaceChildren(...errors.map((e) => {
      const li = make("li", `attempt ${e.attempt}, ${time(e.at)}: ${e.type}: ${e.message}`,
                      "task-errors-item");
      if (e.traceback) li.append(make("pre", e.traceback));
      return li;
    }));
    show("task-abort", (task.status === "queued" || task.status === "running")
                       && !task.abort_requested);
    show("task-retry", task.status === "failed" || task.status === "aborted");
    show("task-prioritize-form", task.status === "queued");
  }

  function actionError(text) {
    setText("task-action-error", text);
    show("task-action-error", Boolean(text));
  }

  async function act(what, body) {
    const task = state.viewed;
    if (!task) return;
    if (state.acting) return;  // a second click while the first is under way
    actionError("");
    // the answer may come after the user opened another task: then it is not shown
    const stillViewed = () => Boolean(state.watch && state.watch.taskId === task.id);
    busy(true, what);
    try {
      const updated = await api("POST", `api/v1/tasks/${encodeURIComponent(task.id)}/${what}`,
                                body);
      if (!stillViewed()) return;
      renderTask(updated);
      if (what === "retry" || state.watch.ended) watch(task.id);
    } catch (err) {
      if (!stillViewed()) return;
      actionError(`${what}: ${err.message}`);
      if (err.status === 409) {  // the task moved on meanwhile: show it as it is now
        try {
          const now = await api("GET", `api/v1/tasks/${encodeURIComponent(task.id)}`);
          if (!stillViewed() || !state.viewed || state.viewed.id !== now.id) return;
          renderTask(now);
          // live again (retried elsewhere) while this view's watch had ended: follow it
          if (state.watch.ended && !FINAL.has(now.status)) watch(now.id);
        } catch (ignored) { /* the error above is what the user needs */ }
      }
    } finally {
      busy(false, what);
    }
  }

  function busy(on, what) {
    state.acting = on;
    for (const name of ["task-abort", "task-retry", "task-prioritize"]) $(name).disabled = on;
    $("task-actions").setAttribute("aria-busy", on ? "true" : "false");
    setText("task-action-busy", on ? `${what}: waiting for the hub…` : "");
  }

  // -- stats, throughput, workers ---------------------------------------------------------

  function statsSoon() {
    if (state.statsSoon) return;
    state.statsSoon = setTimeout(() => { state.statsSoon = null; refreshStats(); }, 300);
  }

  // GET a panel's data; null when signed out or refused (the reason is shown)
  async function panelData(what) {
    if (!state.authed) return null;
    try {
      const data = await api("GET", `api/v1/${what}`);
      panelError(what, null);
      return data;
    } catch (err) {
      panelError(what, err.message);
      return null;
    }
  }

  function panelError(what, message) {
    if (!state.authed) return;
    if (message) state.panelErrors[what] = message; else delete state.panelErrors[what];
    const errors = Object.entries(state.panelErrors).map(([name, text]) => `${name}: ${text}`);
    connection(errors.length ? errors.join("; ") : state.connected);
  }

  async function refreshStats() {
    const [data, metrics] = await Promise.all([panelData("stats"), metricsText()]);
    if (data === null) return;
    const stats = data.stats;
    const body = $("queue-rows");
    const rows = Object.keys(stats).sort().map((action) => {
      const counts = stats[action];
      const tr = make("tr", null, "queue-row");
      tr.dataset.action = action;
      tr.append(make("td", action, "queue-action"));
      for (const status of ["queued", "running", "succeeded", "failed", "aborted"]) {
        tr.append(make("td", counts[status] || 0, `queue-${status}`));
      }
      return tr;
    });
    body.replaceChildren(...rows);
    if (metrics !== null) {
      throughput(performance.now() / 1000, finishedTotal(metrics), hubUptime(metrics));
    }
  }

  // GET /metrics as text; null when it cannot be read (the stats above still show)
  async function metricsText() {
    if (!state.authed) return null;
    const headers = state.key ? { Authorization: `Bearer ${state.key}` } : {};
    try {
      const response = await fetch("metrics", { headers, cache: "no-store" });
      return response.ok ? await response.text() : null;
    } catch (_) {
      return null;
    }
  }

  // the hub's count of tasks ended since it started (conveyor_tasks_finished_total, by
  // action and status): deleting tasks does not lower it, as it does the stats' counts
  function finishedTotal(text) {
    let total = 0;
    for (const line of text.split("\n")) {
      if (line.startsWith("conveyor_tasks_finished_total{")) {
        total += Number(line.slice(line.lastIndexOf(" ") + 1)) || 0;
      }
    }
    return total;
  }

  // the hub's conveyor_hub_uptime_seconds (null when absent)
  function hubUptime(text) {
    const line = text.split("\n").find((l) => l.startsWith("conveyor_hub_uptime_seconds "));
    const uptime = line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : NaN;
    return Number.isFinite(uptime) ? uptime : null;
  }

  function throughput(now, finished, uptime) {
    const samples = state.samples;
    const last = samples[samples.length - 1];
    // two answers at once (the timer and a table change) would read as a rate of 0
    if (last && now - last.t < 1) return;
    // the hub's count of ended tasks starts again at 0 when the hub restarts: an
    // interval with a restart in it (a lower uptime, or a lower count) counts nothing
    const restarted = last && (finished < last.finished || (uptime !== null
      && last.uptime !== null && uptime < last.uptime));
    const done = last && !restarted ? finished - last.finished : 0;
    const rate = last && now > last.t ? done / (now - last.t) : 0;
    samples.push({ t: now, finished, uptime, done, rate });
    while (samples.length && samples[0].t < now - WINDOW) samples.shift();
    const total = samples.slice(1).reduce((sum, s) => sum + s.done, 0);
    setText("throughput-rate", rate.toFixed(2));
    setText("throughput-total", total);
    const top = Math.max(1, ...samples.map((s) => s.rate));
    const points = samples.map((s) => {
      const x = 240 - ((now - s.t) / WINDOW) * 240;
      const y = 38 - (s.rate / top) * 36;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    $("throughput-line").setAttribute("points", points.join(" "));
  }

  async function refreshWorkers() {
    const data = await panelData("workers");
    if (data === null) return;
    const now = Date.now() / 1000;
    const rows = data.workers.map((w) => {
      const tr = make("tr", null, "worker-row");
      tr.dataset.workerId = w.id;
      tr.append(make("td", w.id, "worker-id"),
                make("td", w.actions.join(", "), "worker-actions"),
                make("td", `${w.running} / ${w.concurrency}`, "worker-running"),
                make("td", `${Math.max(0, Math.round(now - w.last_seen))} s ago`,
                     "worker-last-seen"),
                make("td", w.alive ? "yes" : "no", "worker-alive"));
      tr.lastChild.title = time(w.last_seen);
      return tr;
    });
    $("worker-rows").replaceChildren(...rows);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
