// meshguard web (docs/web.md): draws status.json (the daemon's status document,
// wire/control.py) as a graph and a table, and asks for it again every second.
// Every string in the status may come from another member, so the page builds its DOM with
// createElement / textContent only: nothing from the status is ever parsed as HTML.
"use strict";

(function () {
  const POLL_MS = 1000;
  const FETCH_TIMEOUT_MS = 5000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const NAME_MAX = 18; // graph labels; the node's tooltip has the whole name
  const STATES = ["alive", "suspect", "dead", "left"];

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const k of Object.keys(attrs)) e.setAttribute(k, String(attrs[k]));
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function str(v) {
    return typeof v === "string" ? v : "";
  }

  function num(v) {
    return typeof v === "number" && isFinite(v) ? v : null;
  }

  function humanBytes(n) {
    let v = num(n) || 0;
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return i === 0 ? v + " B" : v.toFixed(1) + " " + units[i];
  }

  function humanSeconds(d) {
    d = Math.max(0, d);
    if (d < 60) return Math.floor(d) + "s";
    if (d < 3600) return Math.floor(d / 60) + "m" + String(Math.floor(d % 60)).padStart(2, "0") + "s";
    if (d < 86400) {
      return Math.floor(d / 3600) + "h" + String(Math.floor((d % 3600) / 60)).padStart(2, "0") + "m";
    }
    return Math.floor(d / 86400) + "d" + Math.floor((d % 86400) / 3600) + "h";
  }

  function ago(then, now) {
    const t = num(then);
    return t ? humanSeconds(now - t) + " ago" : "never";
  }

  function msText(v) {
    const r = num(v);
    return r === null ? "-" : r.toFixed(1) + " ms";
  }

  // the end-to-end RTT (relayed members too: from the WireGuard handshakes)
  function rttText(m) {
    return msText(m.rtt_ms);
  }

  function rttTitle(m) {
    const src = m.rtt_source === "probe" ? "path probes"
      : m.rtt_source === "handshake" ? "WireGuard handshakes, end to end" : "";
    const hop = num(m.relay_rtt_ms) !== null ? "; to the relay " + msText(m.relay_rtt_ms) : "";
    return src ? "RTT from " + src + hop : hop.slice(2);
  }

  function rttCell(m) {
    const td = el("td", "num");
    td.append(el("span", null, rttText(m)));
    if (m.path === "relayed" && num(m.relay_rtt_ms) !== null) {
      td.append(el("br"), el("span", "endpoint", "relay " + msText(m.relay_rtt_ms)));
    }
    const t = rttTitle(m);
    if (t) td.title = t;
    return td;
  }

  function memberName(m) {
    if (str(m.name)) return m.name;
    if (m.admission === "org vouch") return "(org vouch)";
    return str(m.identity_key).slice(0, 8);
  }

  function shortName(s) {
    return s.length > NAME_MAX ? s.slice(0, NAME_MAX - 1) + "\u2026" : s;
  }

  function stateClass(m) {
    if (!m.trusted) return "st-untrusted";
    return STATES.includes(m.state) ? "st-" + m.state : "st-dead";
  }

  function stateText(m) {
    return m.trusted ? str(m.state) : str(m.state) + ", untrusted";
  }

  function pathText(m, byKey) {
    if (m.path !== "relayed") return m.tunnel ? "direct" : "no tunnel";
    const relay = m.via ? byKey.get(m.via) : undefined;
    return relay ? "relayed via " + memberName(relay) : "relayed";
  }

  // header -------------------------------------------------------------------------------

  function drawHeader(st, now) {
    const me = st.self || {};
    $("self-name").textContent = str(me.name) || "(unnamed node)";
    document.title = "meshguard " + (str(me.name) || str(st.interface));
    const rows = [
      ["interface", str(st.interface) + " (" + str(st.mode) + "), pid " + st.pid],
      ["mesh IPs", str(me.mesh_ipv4) + "  " + str(me.mesh_ipv6)],
      ["identity key", str(me.identity_key)],
      ["WireGuard key", str(me.wireguard_key)],
      ["ports", "WireGuard " + me.wg_port + ", gossip " + me.gossip_port],
      ["uptime", humanSeconds(now - (num(st.started_at) || now))],
    ];
    const dl = $("self");
    dl.replaceChildren();
    for (const [k, v] of rows) {
      dl.append(el("dt", null, k), el("dd", null, v));
    }
    const members = st.members || [];
    const parts = [members.length + " members"];
    for (const s of STATES) {
      const n = members.filter((m) => m.trusted && m.state === s).length;
      if (n) parts.push(n + " " + s);
    }
    const untrusted = members.filter((m) => !m.trusted).length;
    if (untrusted) parts.push(untrusted + " untrusted");
    const relayed = members.filter((m) => m.path === "relayed").length;
    if (relayed) parts.push(relayed + " relayed");
    $("counts").textContent = parts.join(" \u00b7 ");
  }

  // table --------------------------------------------------------------------------------

  function drawTable(members, byKey, now) {
    const body = $("member-rows");
    body.replaceChildren();
    for (const m of members) {
      const tr = el("tr", stateClass(m));
      tr.dataset.key = str(m.identity_key);
      const name = el("td", "name", memberName(m));
      name.title = str(m.identity_key);
      const ips = el("td", "ips");
      ips.append(el("span", null, str(m.mesh_ipv4)), el("br"), el("span", null, str(m.mesh_ipv6)));
      const state = el("td", "state");
      state.append(el("span", "dot " + stateClass(m)), document.createTextNode(stateText(m)));
      const path = el("td", "path");
      path.append(el("span", null, pathText(m, byKey)), el("br"),
                  el("span", "endpoint", str(m.endpoint) || "-"));
      if (str(m.why)) path.title = m.why;
      const traffic = el("td", "num");
      traffic.append(el("span", null, "\u2193 " + humanBytes(m.rx_bytes)), el("br"),
                     el("span", null, "\u2191 " + humanBytes(m.tx_bytes)));
      tr.append(
        name, ips, state, path,
        el("td", "age", m.tunnel ? ago(m.last_handshake, now) : "no tunnel"),
        traffic,
        rttCell(m),
      );
      body.append(tr);
    }
    $("empty").hidden = members.length > 0;
  }

  // graph --------------------------------------------------------------------------------

  function drawGraph(st, members, byKey) {
    const g = $("graph");
    const n = members.length;
    const radius = Math.max(150, n * 14);
    const w = radius + 75; // room for the labels left and right
    const h = radius + 55; // and for a label under the lowest node
    g.setAttribute("viewBox", [-w, -radius - 25, 2 * w, radius + 25 + h].join(" "));
    const pos = new Map();
    ringOrder(members, byKey).forEach((m, i) => {
      const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(n, 1);
      pos.set(m.identity_key, [radius * Math.cos(a), radius * Math.sin(a)]);
    });
    const edges = svg("g", { class: "edges" });
    const labels = svg("g", { class: "edge-labels" });
    for (const m of members) {
      if (!m.tunnel) continue;
      const relayed = m.path === "relayed";
      const relay = relayed && m.via && m.via !== m.identity_key ? pos.get(m.via) : undefined;
      const [x1, y1] = relay || [0, 0];
      const [x2, y2] = pos.get(m.identity_key);
      const cls = "edge " + (relayed ? "relayed" : "direct") + " " + stateClass(m);
      const text = num(m.rtt_ms) !== null ? rttText(m) : relayed ? "relayed" : "no RTT yet";
      let lx, ly;
      if (relay) {
        // a curve bulging away from the centre, so it never looks like a direct edge
        const [cx, cy] = bulge(x1, y1, x2, y2, 0.3 * Math.hypot(x2 - x1, y2 - y1));
        edges.append(svg("path", { d: "M" + x1 + " " + y1 + " Q" + cx + " " + cy + " " + x2 +
                                      " " + y2, class: cls, "data-key": str(m.identity_key) }));
        lx = 0.25 * x1 + 0.5 * cx + 0.25 * x2;
        ly = 0.25 * y1 + 0.5 * cy + 0.25 * y2;
      } else {
        edges.append(svg("line", { x1: x1, y1: y1, x2: x2, y2: y2, class: cls,
                                   "data-key": str(m.identity_key) }));
        lx = (x1 + x2) / 2;
        ly = (y1 + y2) / 2;
      }
      const label = svg("text", { x: lx, y: ly - 4, class: "rtt", "text-anchor": "middle" },
                        text);
      const t = rttTitle(m);
      if (t) label.append(svg("title", {}, t));
      labels.append(label);
    }
    const nodes = svg("g", { class: "nodes" });
    const self = st.self || {};
    nodes.append(node(0, 0, "self", str(self.name) || "this node", str(self.mesh_ipv4),
                      str(self.identity_key), "this node"));
    for (const m of members) {
      const [x, y] = pos.get(m.identity_key);
      nodes.append(node(x, y, stateClass(m), memberName(m), str(m.mesh_ipv4),
                        str(m.identity_key), stateText(m) + ", " + pathText(m, byKey)));
    }
    g.replaceChildren(edges, labels, nodes);
  }

  // members on the ring in status order, except that a relayed member comes right after its
  // relay: their edge is then short
  function ringOrder(members, byKey) {
    const out = [];
    const placed = new Set();
    const put = (m) => {
      if (placed.has(m.identity_key)) return;
      placed.add(m.identity_key);
      out.push(m);
      for (const r of members) {
        if (r.path === "relayed" && r.via === m.identity_key) put(r);
      }
    };
    for (const m of members) {
      if (!(m.path === "relayed" && m.via && byKey.has(m.via))) put(m);
    }
    for (const m of members) put(m); // relay cycles, if a status ever had one
    return out;
  }

  // the control point of a quadratic curve from (x1, y1) to (x2, y2), `d` away from the
  // chord's middle on the side away from the centre
  function bulge(x1, y1, x2, y2, d) {
    const mx = (x1 + x2) / 2;
    const my = (y1 + y2) / 2;
    let nx = -(y2 - y1);
    let ny = x2 - x1;
    if (nx * mx + ny * my < 0) {
      nx = -nx;
      ny = -ny;
    }
    const len = Math.hypot(nx, ny) || 1;
    return [mx + (d * nx) / len, my + (d * ny) / len];
  }

  function node(x, y, cls, name, ip, key, what) {
    const grp = svg("g", { class: "node " + cls, "data-key": key,
                           transform: "translate(" + x + " " + y + ")" });
    grp.append(svg("title", {}, name + " (" + what + ")"));
    grp.append(svg("circle", { r: cls === "self" ? 16 : 11, class: "disc" }));
    grp.append(svg("text", { y: 30, class: "label", "text-anchor": "middle" }, shortName(name)));
    grp.append(svg("text", { y: 44, class: "ip", "text-anchor": "middle" }, ip));
    return grp;
  }

  // polling ------------------------------------------------------------------------------

  function draw(doc) {
    const st = doc.status || {};
    const now = num(doc.now) || Date.now() / 1000;
    const members = Array.isArray(st.members) ? st.members : [];
    const byKey = new Map(members.map((m) => [m.identity_key, m]));
    drawHeader(st, now);
    drawTable(members, byKey, now);
    drawGraph(st, members, byKey);
  }

  function unreachable(why) {
    const c = $("conn");
    c.className = "conn down";
    c.textContent = "daemon not reachable (" + why + "); retrying every second";
    document.body.classList.add("stale");
  }

  async function poll() {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
    try {
      const res = await fetch("status.json", { cache: "no-store", signal: ctl.signal });
      const doc = await res.json().catch(() => ({ error: "HTTP " + res.status }));
      if (res.ok && doc.ok) {
        draw(doc);
        const c = $("conn");
        c.className = "conn up";
        c.textContent = "live, updated " + new Date().toLocaleTimeString();
        document.body.classList.remove("stale");
      } else {
        unreachable(str(doc.error) || "HTTP " + res.status);
      }
    } catch (e) {
      unreachable(e && e.name === "AbortError" ? "no answer" : "meshguard web is not running");
    } finally {
      clearTimeout(timer);
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
