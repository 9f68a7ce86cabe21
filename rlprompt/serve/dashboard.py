"""GET /dashboard: one self-contained HTML page (no CDN, works offline).

The server embeds the database's numbers as JSON (arms with α, β; conversations per arm in equal
count bins over time; feedback sums per arm × context; the evolution log); a small inline script
draws them as SVG: traffic share per arm over time, posterior densities, reward by arm and by
context, and the evolution log. Every drawn number carries `data-*` attributes, so a browser test
can check that what is rendered equals what the database holds (tests/test_serve_dashboard.py).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import sqlalchemy as sa

from rlprompt.serve import store
from rlprompt.serve.portfolio import arm_states, read_snapshot

if TYPE_CHECKING:
    from rlprompt.serve.gateway import Gateway

BINS = 20


def dashboard_data(gateway: Gateway) -> dict:
    """Everything the page draws, read from the database in one connection."""
    with gateway.engine.connect() as conn:
        arms = arm_states(read_snapshot(conn))
        c = store.conversations
        rows = conn.execute(sa.select(c.c.arm_id, c.c.created_at).order_by(c.c.created_at, c.c.id)).all()
        f = store.feedback
        cells = conn.execute(
            sa.select(f.c.arm_id, f.c.context, sa.func.sum(f.c.value_nano), sa.func.count()).group_by(
                f.c.arm_id, f.c.context
            )
        ).all()
        a = store.auto_scores
        auto = conn.execute(
            sa.select(a.c.arm_id, sa.func.sum(a.c.normalized), sa.func.count()).group_by(a.c.arm_id)
        ).all()
        e = store.evolution
        events = conn.execute(sa.select(e).order_by(e.c.id)).mappings().all()
    n_bins = min(BINS, len(rows))
    bins = []
    for b in range(n_bins):
        chunk = rows[b * len(rows) // n_bins : (b + 1) * len(rows) // n_bins]
        counts: dict[str, int] = {}
        for arm_id, _ in chunk:
            counts[str(arm_id)] = counts.get(str(arm_id), 0) + 1
        bins.append({"start": chunk[0][1], "end": chunk[-1][1], "counts": counts})
    return {
        "arms": [{k: v for k, v in arm.items() if k != "contexts"} for arm in arms],
        "traffic": bins,
        "reward": [
            {"arm": arm_id, "context": ctx, "sum_nano": int(total), "n": int(n)}
            for arm_id, ctx, total, n in cells
        ],
        "auto": [{"arm": arm_id, "sum": float(total), "n": int(n)} for arm_id, total, n in auto],
        "evolution": [
            {k: ev[k] for k in ("round", "kind", "arm_id", "text", "reason", "p_beats_best", "screen_reward")}
            for ev in events
        ],
        "nano": store.NANO,
    }


def render_dashboard(gateway: Gateway) -> str:
    payload = json.dumps(dashboard_data(gateway)).replace("</", "<\\/")
    return PAGE.replace("__DATA__", payload)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rlprompt gateway</title>
<style>
body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h2{margin-top:28px;font-size:17px} table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:3px 7px}
td.num{text-align:right;font-variant-numeric:tabular-nums} .muted{color:#777} svg{background:#fafafa}
</style></head><body>
<h1>rlprompt gateway</h1>
<p id="summary" class="muted"></p>
<h2>Traffic share per arm over time</h2><div id="traffic"></div>
<h2>Posterior densities</h2><div id="posteriors"></div>
<h2>Reward by arm (live feedback; automatic reward-module scores apart)</h2><div id="reward-arm"></div>
<h2>Reward by arm and context</h2><div id="reward-context"></div>
<h2>Evolution log</h2><div id="evolution"></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const NS = "http://www.w3.org/2000/svg";
const COLORS = ["#1f77b4","#ff7f0e","#2ca02c","#d62728","#9467bd","#8c564b","#e377c2","#7f7f7f","#bcbd22","#17becf"];
const color = id => COLORS[id % COLORS.length];
function el(tag, attrs, text, ns) {
  const e = ns ? document.createElementNS(NS, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
const svg = (w, h) => el("svg", {width: w, height: h, viewBox: `0 0 ${w} ${h}`}, undefined, true);
const s = (tag, attrs, text) => el(tag, attrs, text, true);
const f3 = x => x.toFixed(3);
const arms = D.arms, byId = Object.fromEntries(arms.map(a => [a.id, a]));
document.getElementById("summary").textContent =
  `${arms.length} arms (${arms.filter(a => !a.retired).length} active), ` +
  `${arms.reduce((t, a) => t + a.conversations, 0)} conversations, ${arms.reduce((t, a) => t + a.feedback, 0)} feedback events`;

// Traffic share: stacked bars, one per bin of equally many conversations.
(function () {
  const W = 900, H = 260, L = 40, B = 30, bins = D.traffic, g = svg(W, H + B);
  const bw = bins.length ? (W - L) / bins.length : 0;
  bins.forEach((bin, i) => {
    const total = Object.values(bin.counts).reduce((t, n) => t + n, 0);
    let y = H;
    for (const a of arms) {
      const n = bin.counts[a.id] || 0, share = total ? n / total : 0, h = share * (H - 10);
      if (!n) continue;
      y -= h;
      g.appendChild(s("rect", {x: L + i * bw + 1, y, width: bw - 2, height: h, fill: color(a.id),
        class: "share", "data-arm": a.id, "data-bin": i, "data-share": f3(share), "data-n": n}));
    }
  });
  g.appendChild(s("text", {x: L, y: H + 20}, "older"));
  g.appendChild(s("text", {x: W - 50, y: H + 20}, "newer"));
  document.getElementById("traffic").appendChild(g);
  const legend = el("ul");
  const last = bins.length ? bins[bins.length - 1] : {counts: {}};
  const lastTotal = Object.values(last.counts).reduce((t, n) => t + n, 0);
  for (const a of arms) {
    const share = lastTotal ? (last.counts[a.id] || 0) / lastTotal : 0;
    const li = el("li", {class: "share-label", "data-arm": a.id, "data-share": f3(share), style: `color:${color(a.id)}`},
      `arm ${a.id}: ${(100 * share).toFixed(1)}% of the latest bin` + (a.retired ? " (retired)" : ""));
    legend.appendChild(li);
  }
  document.getElementById("traffic").appendChild(legend);
})();

// Posterior densities: Beta(α, β) on a grid, each curve scaled to its own peak.
function lgamma(x) {
  const c = [76.18009172947146, -86.50532032941677, 24.01409824083091, -1.231739572450155, 0.1208650973866179e-2, -0.5395239384953e-5];
  let y = x, t = x + 5.5; t -= (x + 0.5) * Math.log(t);
  let ser = 1.000000000190015;
  for (const ci of c) ser += ci / ++y;
  return -t + Math.log(2.5066282746310005 * ser / x);
}
(function () {
  const W = 900, H = 260, L = 40, g = svg(W, H + 30), N = 300;
  for (const a of arms.filter(a => !a.retired)) {
    const lb = lgamma(a.alpha) + lgamma(a.beta) - lgamma(a.alpha + a.beta);
    const xs = Array.from({length: N}, (_, i) => (i + 0.5) / N);
    const ls = xs.map(x => (a.alpha - 1) * Math.log(x) + (a.beta - 1) * Math.log(1 - x) - lb);
    const top = Math.max(...ls);
    const pts = xs.map((x, i) => `${(L + x * (W - L)).toFixed(1)},${(H - Math.exp(ls[i] - top) * (H - 20)).toFixed(1)}`);
    g.appendChild(s("polyline", {points: pts.join(" "), fill: "none", stroke: color(a.id), "stroke-width": 2,
      class: "density", "data-arm": a.id}));
    const mean = a.alpha / (a.alpha + a.beta);
    g.appendChild(s("line", {x1: L + mean * (W - L), x2: L + mean * (W - L), y1: 10, y2: H, stroke: color(a.id),
      "stroke-dasharray": "3 3"}));
  }
  for (let t = 0; t <= 10; t++) g.appendChild(s("text", {x: L + t / 10 * (W - L) - 8, y: H + 20}, (t / 10).toFixed(1)));
  document.getElementById("posteriors").appendChild(g);
  const table = el("table");
  table.appendChild(el("tr", {}, undefined)).innerHTML = "<th>arm</th><th>α</th><th>β</th><th>mean</th><th>conversations</th><th>feedback</th><th>origin</th><th>prompt</th>";
  for (const a of arms) {
    const tr = el("tr", {class: "posterior", "data-arm": a.id, "data-alpha": a.alpha, "data-beta": a.beta});
    tr.appendChild(el("td", {style: `color:${color(a.id)}`}, `${a.id}${a.retired ? " (retired)" : ""}`));
    tr.appendChild(el("td", {class: "num alpha"}, f3(a.alpha)));
    tr.appendChild(el("td", {class: "num beta"}, f3(a.beta)));
    tr.appendChild(el("td", {class: "num mean"}, f3(a.alpha / (a.alpha + a.beta))));
    tr.appendChild(el("td", {class: "num"}, String(a.conversations)));
    tr.appendChild(el("td", {class: "num"}, String(a.feedback)));
    tr.appendChild(el("td", {}, a.origin + (a.context ? ` [${a.context}]` : "")));
    tr.appendChild(el("td", {class: "muted"}, a.text.length > 140 ? a.text.slice(0, 140) + "…" : a.text));
    table.appendChild(tr);
  }
  document.getElementById("posteriors").appendChild(table);
})();

// Reward by arm: mean feedback value (bars) and the automatic score next to it.
(function () {
  const perArm = {};
  for (const c of D.reward) { const p = perArm[c.arm] ||= {sum: 0, n: 0}; p.sum += c.sum_nano; p.n += c.n; }
  const auto = Object.fromEntries(D.auto.map(a => [a.arm, a]));
  const W = 900, rowH = 22, g = svg(W, rowH * arms.length + 10), L = 80;
  arms.forEach((a, i) => {
    const p = perArm[a.id], mean = p && p.n ? p.sum / D.nano / p.n : 0;
    g.appendChild(s("text", {x: 4, y: i * rowH + 16}, `arm ${a.id}`));
    g.appendChild(s("rect", {x: L, y: i * rowH + 4, height: rowH - 8, width: mean * (W - L - 200), fill: color(a.id),
      class: "reward-bar", "data-arm": a.id, "data-mean": p ? f3(mean) : "", "data-n": p ? p.n : 0}));
    const au = auto[a.id] ? ` · auto ${f3(auto[a.id].sum / auto[a.id].n)} (n=${auto[a.id].n})` : "";
    g.appendChild(s("text", {x: L + mean * (W - L - 200) + 6, y: i * rowH + 16, class: "reward-label", "data-arm": a.id},
      p ? `${f3(mean)} (n=${p.n})${au}` : `no feedback${au}`));
  });
  document.getElementById("reward-arm").appendChild(g);
})();

// Reward by arm × context: a heat-map table.
(function () {
  const contexts = [...new Set(D.reward.map(c => c.context))].sort();
  const table = el("table"), head = el("tr");
  head.appendChild(el("th", {}, "context"));
  for (const a of arms) head.appendChild(el("th", {}, `arm ${a.id}`));
  table.appendChild(head);
  for (const ctx of contexts) {
    const tr = el("tr");
    tr.appendChild(el("td", {}, ctx));
    for (const a of arms) {
      const c = D.reward.find(c => c.arm === a.id && c.context === ctx);
      if (!c) { tr.appendChild(el("td", {class: "muted"}, "–")); continue; }
      const mean = c.sum_nano / D.nano / c.n, shade = Math.round(255 - 120 * mean);
      tr.appendChild(el("td", {class: "num cell", "data-arm": a.id, "data-context": ctx, "data-mean": f3(mean),
        "data-n": c.n, style: `background:rgb(${shade},255,${shade})`}, `${f3(mean)} (${c.n})`));
    }
    table.appendChild(tr);
  }
  document.getElementById("reward-context").appendChild(contexts.length ? table : el("p", {class: "muted"}, "no feedback yet"));
})();

// Evolution log.
(function () {
  const box = document.getElementById("evolution");
  if (!D.evolution.length) { box.appendChild(el("p", {class: "muted"}, "no evolution round yet")); return; }
  const table = el("table");
  table.appendChild(el("tr")).innerHTML = "<th>round</th><th>event</th><th>arm</th><th>reason</th><th>prompt</th>";
  for (const ev of D.evolution) {
    const tr = el("tr", {class: "event", "data-kind": ev.kind, "data-round": ev.round, "data-arm": ev.arm_id ?? ""});
    tr.appendChild(el("td", {class: "num"}, String(ev.round)));
    tr.appendChild(el("td", {}, ev.kind));
    tr.appendChild(el("td", {class: "num"}, ev.arm_id === null ? "–" : String(ev.arm_id)));
    tr.appendChild(el("td", {}, ev.reason));
    tr.appendChild(el("td", {class: "muted"}, ev.text.length > 160 ? ev.text.slice(0, 160) + "…" : ev.text));
    table.appendChild(tr);
  }
  box.appendChild(table);
})();
document.body.setAttribute("data-rendered", "1");
</script></body></html>
"""
