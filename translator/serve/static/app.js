// The page of `translator serve`: translate as you type (400 ms after the last key), and draw
// the last decoder layer's cross-attention of each sentence as a heatmap on a canvas.
// Plain browser JavaScript, no libraries: everything comes from this server.
"use strict";

const TYPE_DELAY_MS = 400;
const $ = (id) => document.getElementById(id);
const state = { source: null, target: null, seq: 0, timer: null };

async function post(path, body) {
  const headers = { "Content-Type": "application/json" };
  const key = $("apikey").value.trim();
  if (key) headers["X-API-Key"] = key;
  const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  let data;
  try {
    data = await response.json();
  } catch (_) {
    data = {};
  }
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

async function translateNow() {
  clearTimeout(state.timer);
  const text = $("source").value;
  const mine = ++state.seq; // answers to older requests are dropped when they arrive late
  if (!text.trim()) {
    $("translation").textContent = "";
    $("heatmaps").replaceChildren();
    setStatus("");
    return;
  }
  setStatus("translating…");
  const request = { q: text, source: state.source, target: state.target };
  const [translated, attention] = await Promise.allSettled(
    [post("/translate", request), post("/attention", request)]);
  if (mine !== state.seq) return;
  if (translated.status === "fulfilled") {
    $("translation").textContent = translated.value.translatedText;
  } else {
    $("translation").textContent = "";
  }
  if (attention.status === "fulfilled") {
    renderAttention(attention.value.sentences);
  } else {
    $("heatmaps").replaceChildren();
  }
  const failed = [translated, attention].find((r) => r.status === "rejected");
  setStatus(failed ? failed.reason.message : "", Boolean(failed));
}

// -- heatmaps ---------------------------------------------------------------------------------

// White to dark blue on a fixed 0..1 scale, like the PNG maps of `translator attention`
// (matplotlib's Blues, whose stops these are: mid-range weights stay clearly blue).
const BLUES = [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];
function cellColour(v) {
  const x = Math.max(0, Math.min(1, v)) * (BLUES.length - 1);
  const i = Math.min(BLUES.length - 2, Math.floor(x));
  const t = x - i;
  const [r, g, b] = BLUES[i].map((a, k) => Math.round(a + (BLUES[i + 1][k] - a) * t));
  return `rgb(${r}, ${g}, ${b})`;
}

function renderAttention(sentences) {
  const root = $("heatmaps");
  root.replaceChildren();
  sentences.forEach((s, index) => {
    if (!s.target_tokens.length) return;
    const block = document.createElement("div");
    block.className = "sentence";
    block.dataset.index = String(index);
    const title = document.createElement("div");
    title.className = "muted";
    title.textContent = `${s.source}  →  ${s.translation}`;
    const srcRow = tokenRow("source", s.source_tokens, "source");
    const tgtRow = tokenRow("generated", s.target_tokens, "target");
    const canvas = document.createElement("canvas");
    canvas.className = "heatmap";
    block.append(title, srcRow, tgtRow, canvas);
    root.append(block);
    const view = { s, canvas, srcRow, tgtRow, active: null };
    draw(view);
    tgtRow.querySelectorAll(".tok").forEach((el, row) => {
      el.addEventListener("mouseenter", () => setActive(view, row));
      el.addEventListener("mouseleave", () => setActive(view, null));
    });
    canvas.addEventListener("mousemove", (event) => {
      const g = view.geometry;
      const box = canvas.getBoundingClientRect();
      const x = event.clientX - box.left;
      const y = event.clientY - box.top;
      const row = Math.floor((y - g.top) / g.cell);
      const inside = x >= g.left && x < g.left + g.cols * g.cell && row >= 0 && row < g.rows;
      setActive(view, inside ? row : null);
    });
    canvas.addEventListener("mouseleave", () => setActive(view, null));
  });
}

function tokenRow(label, tokens, kind) {
  const row = document.createElement("div");
  row.className = `tokens ${kind}-tokens`;
  const what = document.createElement("span");
  what.className = "what";
  what.textContent = label;
  row.append(what);
  for (const token of tokens) {
    const el = document.createElement("span");
    el.className = `tok ${kind}`;
    el.textContent = token;
    row.append(el);
  }
  return row;
}

// Row `row` (a generated token) is highlighted: its cells outlined on the canvas, and each
// source token tinted by how much attention that generated token paid to it.
function setActive(view, row) {
  if (view.active === row) return;
  view.active = row;
  view.tgtRow.querySelectorAll(".tok").forEach((el, i) => el.classList.toggle("active", i === row));
  view.srcRow.querySelectorAll(".tok").forEach((el, col) => {
    const w = row === null ? 0 : view.s.attention[row][col];
    el.style.background = row === null ? "" : `rgba(232, 89, 12, ${w.toFixed(3)})`;
    el.style.color = w > 0.55 ? "#fff" : "";
    el.dataset.weight = row === null ? "" : w.toFixed(4);
  });
  draw(view);
}

function draw(view) {
  const { s, canvas } = view;
  const rows = s.target_tokens.length;
  const cols = s.source_tokens.length;
  const ctx = canvas.getContext("2d");
  const font = "12px system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif";
  ctx.font = font;
  const widest = (tokens) => Math.max(0, ...tokens.map((t) => ctx.measureText(t).width));
  const cell = Math.max(14, Math.min(30, Math.floor(760 / Math.max(cols, 1))));
  const left = Math.ceil(widest(s.target_tokens)) + 12;
  const top = Math.ceil(widest(s.source_tokens)) + 12;
  const width = left + cols * cell + 8;
  const height = top + rows * cell + 8;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.font = font;
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, width, height);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      ctx.fillStyle = cellColour(s.attention[r][c]);
      ctx.fillRect(left + c * cell, top + r * cell, cell - 1, cell - 1);
    }
  }
  const active = view.active;
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  for (let r = 0; r < rows; r++) {
    ctx.fillStyle = r === active ? "#e8590c" : "#1d2330";
    ctx.fillText(s.target_tokens[r], left - 6, top + r * cell + cell / 2);
  }
  for (let c = 0; c < cols; c++) {
    ctx.save();
    ctx.translate(left + c * cell + cell / 2, top - 6);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left";
    const w = active === null ? 0 : s.attention[active][c];
    ctx.fillStyle = w >= 0.2 ? "#e8590c" : "#1d2330";
    ctx.fillText(s.source_tokens[c], 0, 0);
    ctx.restore();
  }
  if (active !== null) {
    ctx.strokeStyle = "#e8590c";
    ctx.lineWidth = 2;
    ctx.strokeRect(left - 1, top + active * cell - 1, cols * cell + 1, cell + 1);
  }
  view.geometry = { left, top, cell, rows, cols };
  // Geometry for the page test (and anyone inspecting the page).
  Object.assign(canvas.dataset, { rows, cols, left, top, cell });
  canvas.dataset.drawn = "true";
}

// -- start ------------------------------------------------------------------------------------

async function start() {
  try {
    const [languages, health] = await Promise.all([
      fetch("/languages").then((r) => r.json()), fetch("/health").then((r) => r.json())]);
    const src = languages.find((l) => l.targets.length) || languages[0];
    const tgt = languages.find((l) => l.code === src.targets[0]) || { code: src.targets[0] };
    state.source = src.code;
    state.target = tgt.code;
    $("pair").textContent = `${src.name} → ${tgt.name || tgt.code}`;
    $("source-label").textContent = src.name;
    $("target-label").textContent = tgt.name || tgt.code;
    $("engine").textContent = `${health.engine} engine on ${health.device}`;
    $("keyrow").hidden = !health.api_key_required;
  } catch (error) {
    setStatus(`cannot reach the server: ${error.message}`, true);
  }
  $("translate").addEventListener("click", translateNow);
  $("source").addEventListener("input", () => {
    clearTimeout(state.timer);
    state.timer = setTimeout(translateNow, TYPE_DELAY_MS);
  });
  $("source").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) translateNow();
  });
}

start();
