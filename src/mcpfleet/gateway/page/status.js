// The status page: polls this same URL for JSON and renders it with DOM calls only (textContent and
// createElement; no HTML parsing of data), so every string a server or a client supplied is shown as text.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const refreshMs = Number(document.body.dataset.refreshMs) || 5000;
  let renders = 0;
  let lastOk = 0;

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }
  function add(parent, ...children) { for (const c of children) if (c) parent.appendChild(c); return parent; }
  function fmt(n, digits) {
    if (n === null || n === undefined) return "–";
    return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits === undefined ? 2 : digits });
  }
  function ms(n) { return n === null || n === undefined ? "–" : fmt(n, n < 10 ? 2 : 0) + " ms"; }
  function safeLink(url) {
    try { const u = new URL(url, location.href); return u.protocol === "http:" || u.protocol === "https:" ? u.href : null; }
    catch (e) { return null; }
  }

  // A server's health, from /servers' fields: [label, colour].
  function health(s) {
    if (s.health === "failed") return ["failed", "bad"];
    if (s.health === "crash_loop") return ["crash loop", "bad"];
    if (s.health === "draining") return ["draining", "warn"];
    const replicas = s.replicas || [];
    const known = replicas.filter((r) => r.health !== "unknown");
    if (known.length) {
      const up = known.filter((r) => r.health === "ok").length;
      if (up === 0) return ["down", "bad"];
      if (up < known.length) return [up + "/" + known.length + " healthy", "warn"];
      return ["healthy", "ok"];
    }
    if (s.processes && s.processes.live > 0) return ["running", "ok"];
    return ["idle", "idle"];
  }
  function replicaBadge(state) {
    const colour = { ok: "ok", ejected: "bad", draining: "warn" }[state] || "idle";
    return el("span", "badge " + colour, state);
  }

  function sparkline(series) {
    const w = 180, h = 34, n = series.requests.length;
    const top = Math.max(1, ...series.requests);
    const x = (i) => (i * (w - 2)) / Math.max(1, n - 1) + 1;
    const y = (v) => h - 2 - (v * (h - 6)) / top;
    const graph = svg("svg", { class: "spark", width: w, height: h, viewBox: "0 0 " + w + " " + h, role: "img" });
    const points = series.requests.map((v, i) => x(i).toFixed(1) + "," + y(v).toFixed(1));
    add(graph, svg("line", { class: "base", x1: 0, y1: h - 1.5, x2: w, y2: h - 1.5 }));
    add(graph, svg("polygon", { class: "area", points: "1," + (h - 2) + " " + points.join(" ") + " " + (w - 1) + "," + (h - 2) }));
    add(graph, svg("polyline", { class: "req", points: points.join(" ") }));
    const errTop = Math.max(1, ...series.errors);
    series.errors.forEach((v, i) => {
      if (v > 0) {
        const bar = Math.max(3, (v * (h - 6)) / errTop);
        add(graph, svg("rect", { class: "err", x: x(i) - 1.5, y: h - 1 - bar, width: 3, height: bar }));
      }
    });
    const title = svg("title");
    title.textContent = "requests (line) and gateway errors (red) per bucket, last 5 minutes";
    return add(graph, title);
  }

  function meter(used, warm, max) {
    const w = 90, h = 8, scale = max > 0 ? w / max : 0;
    const m = svg("svg", { class: "meter", width: w, height: h });
    add(m, svg("rect", { class: "track", x: 0, y: 0, width: w, height: h, rx: 3 }));
    add(m, svg("rect", { class: "used", x: 0, y: 0, width: Math.min(w, used * scale), height: h, rx: 3 }));
    add(m, svg("rect", { class: "warm", x: Math.min(w, used * scale), y: 0, width: Math.min(w, warm * scale), height: h }));
    return m;
  }

  function table(headers, rows) {
    const t = el("table");
    const head = add(el("thead"), add(el("tr"), ...headers.map(([label, cls]) => el("th", cls || "", label))));
    const body = el("tbody");
    for (const row of rows) {
      const tr = el("tr");
      row.forEach((cell, i) => {
        const td = el("td", headers[i][1] || "");
        if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell === null || cell === undefined ? "–" : String(cell);
        tr.appendChild(td);
      });
      body.appendChild(tr);
    }
    return add(t, head, body);
  }

  function serverCard(s, traffic) {
    const [label, colour] = health(s);
    const card = el("div", "server" + (s.health === "failed" ? " failed" : ""));
    card.dataset.server = s.id;
    const line = add(el("div", "line"), el("span", "id", s.id));
    if (s.type) line.appendChild(el("span", "badge type", s.type));
    line.appendChild(el("span", "badge health " + colour, label));
    const title = add(el("div", "title"), line);
    if (s.description) title.appendChild(el("div", "desc", s.description));
    const head = add(el("div", "head"), title);
    if (s.health === "failed") {
      card.appendChild(head);
      card.appendChild(el("div", "problem", s.error));
      return card;
    }
    const minute = traffic ? traffic.last_minute : null;
    const windowed = traffic ? traffic.window : null;
    const stats = el("div", "stats");
    const stat = (name, value, cls) => add(el("span", "stat " + (cls || "")), el("b", "", value), el("small", "", name));
    add(stats,
      stat("sessions", fmt(s.sessions || 0, 0)),
      stat("req/s (1 min)", fmt(minute ? minute.rate_per_s : 0, 2), "rate"),
      stat("requests (5 min)", fmt(windowed ? windowed.requests : 0, 0), "reqs"),
      stat("errors (5 min)", fmt(windowed ? windowed.errors : 0, 0), "errs" + (windowed && windowed.errors ? " bad" : "")),
      stat("p50 (1 min)", ms(minute && minute.latency_ms ? minute.latency_ms.p50 : null)),
      stat("p99 (1 min)", ms(minute && minute.latency_ms ? minute.latency_ms.p99 : null)));
    head.appendChild(stats);
    head.appendChild(traffic ? sparkline(traffic.series) : sparkline({ requests: [0, 0], errors: [0, 0] }));
    card.appendChild(head);
    if (s.replicas && s.replicas.length) {
      card.appendChild(table(
        [["replica", "url"], ["health"], ["weight", "num"], ["in flight", "num"], ["requests", "num"], ["latency", "num"], ["ejected for", "num"]],
        s.replicas.map((r) => [r.url, replicaBadge(r.health), r.weight, r.in_flight, r.requests,
          r.latency_ms === undefined ? null : ms(r.latency_ms), r.ejected_for_s ? fmt(r.ejected_for_s, 1) + " s" : null])));
    }
    if (s.processes) {
      const p = s.processes;
      const usage = add(el("span"), meter(p.live, p.warm, p.max), document.createTextNode(" " + p.live + " / " + p.max));
      card.appendChild(table(
        [["pool", ""], ["live", "num"], ["warm", "num"], ["starting", "num"], ["waiting", "num"], ["draining", "num"], ["min", "num"], ["command", "url"]],
        [[usage, p.live, p.warm, p.starting, p.waiting, p.draining, p.min, s.target || (s.command || []).join(" ")]]));
    }
    if (s.crash_loop) card.appendChild(el("div", "empty", "crash loop: " + s.crash_loop.quick_exits + " quick exits; last: " + s.crash_loop.last_exit));
    if (s.deployment && s.deployment.image) card.appendChild(el("div", "empty", "image " + s.deployment.image));
    return card;
  }

  function card(label, value, id) {
    const c = add(el("div", "card"), el("div", "label", label), el("div", "value", value));
    if (id) c.dataset.card = id;
    return c;
  }

  function render(doc) {
    const gw = doc.gateway || {};
    const traffic = (doc.traffic && doc.traffic.servers) || {};
    document.getElementById("version").textContent = "v" + (doc.mcpfleet || "?");
    const meta = document.getElementById("meta");
    meta.replaceChildren();
    const item = (name, value) => add(el("span"), document.createTextNode(name + " "), el("b", "", value));
    add(meta, item("instance", gw.instance), item("pid", gw.pid), item("generation", gw.generation),
      item("registry", gw.registry), item("reloads", (gw.reloads ? gw.reloads.ok + " ok, " + gw.reloads.rejected + " rejected" : "–")));

    const banner = document.getElementById("banner");
    if (gw.last_reload_error && gw.last_reload_error.length) {
      banner.textContent = "The last registry reload was rejected; the registry in force stays:\n" + gw.last_reload_error.join("\n");
      banner.classList.remove("hidden");
    } else banner.classList.add("hidden");

    const servers = [...(gw.servers || []), ...((gw.draining || []).map((s) => Object.assign({}, s, { health: "draining" })))];
    let rate = 0, errors = 0, sessions = 0, p99 = null;
    for (const t of Object.values(traffic)) {
      rate += t.last_minute.rate_per_s; errors += t.window.errors;
      if (t.last_minute.latency_ms) p99 = Math.max(p99 || 0, t.last_minute.latency_ms.p99);
    }
    for (const s of servers) sessions += s.sessions || 0;
    const unhealthy = servers.filter((s) => health(s)[1] === "bad").length;
    document.getElementById("cards").replaceChildren(
      card("servers", fmt(servers.length, 0), "servers"),
      card("unhealthy", fmt(unhealthy, 0), "unhealthy"),
      card("sessions", fmt(sessions, 0), "sessions"),
      card("requests / s (1 min)", fmt(rate, 2), "rate"),
      card("errors (5 min)", fmt(errors, 0), "errors"),
      card("worst p99 (1 min)", ms(p99), "p99"));

    const list = document.getElementById("servers");
    list.replaceChildren();
    if (!servers.length) list.appendChild(el("p", "muted", "The registry names no servers."));
    for (const s of servers) list.appendChild(serverCard(s, traffic[s.id]));
    if (traffic["-"]) {
      const t = traffic["-"];
      list.appendChild(add(el("p", "muted small"), document.createTextNode(
        "Requests that reached no server (unknown ids, refused paths): " + t.window.errors + " in the last 5 minutes.")));
    }

    const recent = doc.recent_errors || [];
    const errorsBox = document.getElementById("errors");
    errorsBox.replaceChildren(recent.length
      ? add(el("div", "server"), table([["time", ""], ["server", "url"], ["status", "num"], ["code", "num"], ["message", "msg"]],
          recent.map((e) => [e.time.replace("T", " ").replace("Z", " UTC"), e.server, e.status, e.code, e.message])))
      : el("p", "muted", "No errors in memory."));

    const links = document.getElementById("links");
    links.replaceChildren();
    for (const [name, url] of Object.entries(doc.status || {})) {
      const href = safeLink(url);
      if (!href) continue;
      const a = el("a", "", "/" + name);
      a.href = href;
      links.appendChild(a);
    }
    links.appendChild(document.createTextNode("Refreshes every " + refreshMs / 1000 + " s. JSON: this URL with Accept: application/json."));
  }

  async function poll() {
    try {
      const answer = await fetch(location.href, { headers: { Accept: "application/json" }, cache: "no-store", credentials: "same-origin" });
      if (!answer.ok) throw new Error("HTTP " + answer.status);
      render(await answer.json());
      lastOk = Date.now();
      renders += 1;
      document.body.dataset.renders = String(renders);
      document.getElementById("dot").className = "dot ok";
      document.getElementById("updated").textContent = "updated " + new Date(lastOk).toLocaleTimeString();
    } catch (e) {
      document.getElementById("dot").className = "dot stale";
      document.getElementById("updated").textContent = "not updated: " + e.message + (lastOk ? " (last " + new Date(lastOk).toLocaleTimeString() + ")" : "");
    } finally {
      setTimeout(poll, refreshMs);
    }
  }
  poll();
})();
