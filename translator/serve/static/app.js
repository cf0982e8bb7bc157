// The page of `translator serve`: translate as you type (400 ms after the last key), and draw
// the last decoder layer's cross-attention of each sentence as a heatmap on a canvas.
// Plain browser JavaScript, no libraries: everything comes from this server.
"use strict";

const TYPE_DELAY_MS = 400;
const $ = (id) => document.getElementById(id);
const state = { source: null, target: null, seq: 0, timer: null, languages: [] };
// Paths are relative so that the page works when the server is mounted under a prefix.

async function post(path, body) {
  const headers = { "Content-Type": "application/json" };
  const key = $("apikey").value.trim();
  if (key) headers["X-API-Key"] = key;
  const response = await fetch(path.replace(/^\//, ""), { method: "POST", headers, body: JSON.stringify(body) });
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
  // A pair through a pivot has no single model whose attention could be drawn.
  const direct = !viaOf(state.source, state.target);
  const [translated, attention] = await Promise.allSettled(
    [post("/translate", request),
     direct ? post("/attention", request) : Promise.resolve({ sentences: [] })]);
  if (mine !== state.seq) return;
  if (translated.status === "fulfilled") {
    const answer = translated.value;
    $("translation").textContent = answer.translatedText;
    const detected = answer.detectedLanguage;
    $("via").textContent = detected ? `detected: ${nameOf(detected.language)}` :
      (answer.via ? `through ${nameOf(answer.via)}` : "");
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

// -- languages ------------------------------------------------------------------------------

function nameOf(code) {
  const found = state.languages.find((l) => l.code === code);
  return found ? found.name : code;
}

function viaOf(source, target) {
  if (source === "auto") return null;
  const found = state.languages.find((l) => l.code === source);
  return (found && found.via && found.via[target]) || null;
}

function targetsOf(source) {
  if (source !== "auto") {
    const found = state.languages.find((l) => l.code === source);
    return found ? found.targets : [];
  }
  return [...new Set(state.languages.flatMap((l) => l.targets))].sort();
}

function option(value, text) {
  const el = document.createElement("option");
  el.value = value;
  el.textContent = text;
  return el;
}

function fillTargets(preferred) {
  const targets = targetsOf(state.source);
  const select = $("target-lang");
  select.replaceChildren(...targets.map((code) => {
    const via = viaOf(state.source, code);
    return option(code, via ? `${nameOf(code)} (through ${nameOf(via)})` : nameOf(code));
  }));
  state.target = targets.includes(preferred) ? preferred : targets[0] || null;
  select.value = state.target || "";
  showPair();
}

function showPair() {
  const src = state.source === "auto" ? "Detect language" : nameOf(state.source);
  $("pair").textContent = `${src} → ${state.target ? nameOf(state.target) : "?"}`;
  $("source-label").textContent = src;
  $("target-label").textContent = state.target ? nameOf(state.target) : "Translation";
  $("via").textContent = viaOf(state.source, state.target) ?
    `through ${nameOf(viaOf(state.source, state.target))}` : "";
  $("swap").disabled = state.source === "auto" || !targetsOf(state.target).includes(state.source);
}

function pickPair(source, target) {
  state.source = source;
  $("source-lang").value = source;
  fillTargets(target);
  if ($("source").value.trim()) translateNow();
}

function setupLanguages(languages) {
  state.languages = languages;
  const sources = languages.filter((l) => l.targets.length);
  const select = $("source-lang");
  select.replaceChildren(option("auto", "Detect language"),
                         ...sources.map((l) => option(l.code, l.name)));
  const first = sources[0] || languages[0];
  pickPair(first.code, first.targets[0]);
  select.addEventListener("change", () => pickPair(select.value, state.target));
  $("target-lang").addEventListener("change", () => {
    state.target = $("target-lang").value;
    showPair();
    if ($("source").value.trim()) translateNow();
  });
  $("swap").addEventListener("click", () => pickPair(state.target, state.source));
}

// -- start ------------------------------------------------------------------------------------

async function start() {
  try {
    const [languages, health] = await Promise.all([
      fetch("languages").then((r) => r.json()), fetch("health").then((r) => r.json())]);
    setupLanguages(languages);
    const engines = [...new Set(health.models.map((m) => `${m.engine} engine on ${m.device}`))];
    $("engine").textContent = engines.join(", ");
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
