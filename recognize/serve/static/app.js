// The recognize web page: plain JavaScript, no build step, no network beyond this server.
"use strict";

// supervision's ColorPalette.DEFAULT, indexed by crc32(tag) like recognize/outputs/annotated_image.py,
// so a tag has the same colour here and in the annotated image.
const PALETTE = ["#a351fb", "#ff4040", "#ffa1a0", "#ff7633", "#ffb633", "#d1d435", "#4cfb12", "#94cf1a",
  "#40de8a", "#1b9640", "#00d6c1", "#2e9caa", "#00c4ff", "#364797", "#6675ff", "#0019ef", "#863aff",
  "#530087", "#cd3aff", "#ff97ca", "#ff39c9"];

const $ = (id) => document.getElementById(id);
const state = {
  files: [],          // File objects, in upload order
  urls: [],           // object URLs of the files
  images: [],         // decoded HTMLImageElement per file
  frames: [],         // Frame JSON per file (from POST /v1/frames)
  timings: {}, reused: [],
  current: 0,
  hidden: new Set(),  // tags switched off
  sets: {},           // "stages.1.with.box_threshold" -> "0.3"
  controller: null,   // AbortController of the request in flight
  masks: new Map(),   // region -> canvas with its mask drawn in its colour
  drawn: [],          // label rectangles of the last draw, for hover
};
window.recognizeView = { regionsDrawn: 0, tagsShown: 0, requests: 0 };

// -- colours ------------------------------------------------------------------------------------
const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();
function crc32(text) {
  let crc = 0xffffffff;
  for (const byte of new TextEncoder().encode(text)) crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}
const colorOf = (tag) => PALETTE[crc32(tag) % PALETTE.length];
function rgb(hex) { const v = parseInt(hex.slice(1), 16); return [(v >> 16) & 255, (v >> 8) & 255, v & 255]; }

// -- COCO RLE (pycocotools' compressed string) ------------------------------------------------------
function rleCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = 1;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20; p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}
function maskCanvas(region) {
  if (state.masks.has(region)) return state.masks.get(region);
  const [h, w] = region.mask.size;
  const canvas = document.createElement("canvas");
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  const data = ctx.createImageData(w, h);
  const [r, g, b] = rgb(colorOf(region.tag));
  let index = 0, value = 0;
  for (const run of rleCounts(region.mask.counts)) {
    if (value) {
      for (let i = index; i < index + run; i++) {   // column-major: i = x * h + y
        const y = i % h, x = (i - y) / h, o = (y * w + x) * 4;
        data.data[o] = r; data.data[o + 1] = g; data.data[o + 2] = b; data.data[o + 3] = 255;
      }
    }
    index += run; value = 1 - value;
  }
  ctx.putImageData(data, 0, 0);
  state.masks.set(region, canvas);
  return canvas;
}

// -- requests -----------------------------------------------------------------------------------
function setStatus(text, busy) {
  $("status").innerHTML = busy ? '<span class="spinner"></span>' : "";
  $("status").append(text);
}
function showError(text) {
  $("error").hidden = !text;
  $("error").textContent = text || "";
}
async function errorText(response) {
  try { const body = await response.json(); if (body.detail) return `${response.status}: ${body.detail}`; } catch (e) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}
function formWith(files) {
  const form = new FormData();
  for (const file of files) form.append("images", file, file.name);
  for (const [key, value] of Object.entries(state.sets)) form.append("set", `${key}=${value}`);
  return form;
}

async function run() {
  if (!state.files.length) return;
  if (state.controller) state.controller.abort();  // the server frees the abandoned request's slot
  const controller = state.controller = new AbortController();
  const started = performance.now();
  const tick = setInterval(() => setStatus(`Running… ${((performance.now() - started) / 1000).toFixed(1)} s`, true), 100);
  setStatus("Running…", true);
  showError("");
  window.recognizeView.requests++;
  try {
    const response = await fetch("/v1/frames", { method: "POST", body: formWith(state.files), signal: controller.signal });
    if (!response.ok) throw new Error(await errorText(response));
    const body = await response.json();
    state.frames = body.frames; state.timings = body.timings; state.reused = body.reused || [];
    state.masks = new Map();
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    const reused = state.reused.length ? ` (reused: ${state.reused.join(", ")})` : "";
    setStatus(`Done in ${seconds} s${reused}`, false);
    show(state.current);
  } catch (error) {
    if (error.name === "AbortError") return;
    setStatus("", false);
    showError(error.message);
  } finally {
    clearInterval(tick);
    if (state.controller === controller) state.controller = null;
  }
}

async function downloadAnnotated() {
  const file = state.files[state.current];
  if (!file) return;
  setStatus("Rendering annotated image…", true);
  const chinese = $("show-chinese").checked ? "true" : "false";
  try {
    const response = await fetch(`/v1/annotate?format=png&chinese=${chinese}`, { method: "POST", body: formWith([file]) });
    if (!response.ok) throw new Error(await errorText(response));
    save(await response.blob(), `${baseName(file.name)}.annotated.png`);
    setStatus("", false);
  } catch (error) { setStatus("", false); showError(error.message); }
}
function downloadJson() {
  const frame = state.frames[state.current];
  if (!frame) return;
  save(new Blob([JSON.stringify(frame, null, 2)], { type: "application/json" }), `${frame.name || "frame"}.json`);
}
function save(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob); a.download = name;
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}
const baseName = (name) => name.replace(/\.[^.]*$/, "");

// -- files --------------------------------------------------------------------------------------
function pick(fileList) {
  const files = Array.from(fileList).filter((f) => f.type.startsWith("image/") || /\.(jpe?g|png|webp|bmp|gif|tiff?)$/i.test(f.name));
  if (!files.length) { showError("Those are not images."); return; }
  state.urls.forEach((u) => URL.revokeObjectURL(u));
  state.files = files; state.urls = files.map((f) => URL.createObjectURL(f));
  state.images = state.urls.map((url) => { const img = new Image(); img.src = url; return img; });
  state.frames = []; state.current = 0; state.hidden.clear();
  const thumbs = $("thumbs");
  thumbs.replaceChildren(...state.urls.map((url, i) => {
    const button = document.createElement("button");
    button.type = "button"; button.title = files[i].name;
    button.innerHTML = `<img alt="">`; button.firstChild.src = url;
    button.onclick = () => show(i);
    return button;
  }));
  run();
}

// -- drawing ------------------------------------------------------------------------------------
function show(i) {
  state.current = i;
  [...$("thumbs").children].forEach((b, k) => b.classList.toggle("active", k === i));
  const frame = state.frames[i], image = state.images[i];
  if (!frame || !image) return;
  if (!image.complete) { image.onload = () => show(i); return; }
  $("viewer").hidden = false;
  renderSide(frame);
  draw();
}

function nameOf(item, zhField) {
  return $("show-chinese").checked && item[zhField] ? item[zhField] : (item.name || item.tag);
}

function renderSide(frame) {
  const counts = {};
  frame.regions.forEach((r) => { counts[r.tag] = (counts[r.tag] || 0) + 1; });
  const list = $("tags");
  list.replaceChildren(...frame.tags.map((tag) => {
    const li = document.createElement("li");
    li.dataset.tag = tag.name;
    li.classList.toggle("off", state.hidden.has(tag.name));
    const zh = tag.name_zh ? ` <span class="muted">${escapeHtml(tag.name_zh)}</span>` : "";
    const n = counts[tag.name] ? `<span class="count">${counts[tag.name]} region${counts[tag.name] > 1 ? "s" : ""}</span>` : "";
    li.innerHTML = `<span class="swatch" style="background:${colorOf(tag.name)}"></span>` +
      `<span class="name">${escapeHtml(tag.name)}${zh}</span>${n}<span class="score">${tag.score == null ? "" : tag.score.toFixed(2)}</span>`;
    li.onclick = () => { state.hidden.has(tag.name) ? state.hidden.delete(tag.name) : state.hidden.add(tag.name); li.classList.toggle("off"); draw(); };
    return li;
  }));
  $("tags-section").hidden = false;
  $("caption-section").hidden = !frame.caption;
  $("caption").textContent = frame.caption || "";
  const rows = Object.entries(state.timings).map(([stage, seconds]) =>
    `<tr><td>${escapeHtml(stage)}</td><td>${state.reused.includes(stage) ? "reused" : milliseconds(seconds)}</td></tr>`);
  $("timings").innerHTML = rows.join("");
  $("timings-section").hidden = !rows.length;
  window.recognizeView.tagsShown = frame.tags.length;
}

function draw() {
  const frame = state.frames[state.current], image = state.images[state.current];
  if (!frame || !image) return;
  const canvas = $("canvas"), ctx = canvas.getContext("2d");
  canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
  ctx.drawImage(image, 0, 0);
  const visible = frame.regions.filter((r) => !state.hidden.has(r.tag));
  const thick = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 400));
  if ($("show-masks").checked) {
    ctx.globalAlpha = 0.45;
    for (const region of visible) if (region.mask) ctx.drawImage(maskCanvas(region), 0, 0);
    ctx.globalAlpha = 1;
  }
  if ($("show-boxes").checked) {
    ctx.lineWidth = thick;
    for (const region of visible) {
      const [x0, y0, x1, y1] = region.box;
      ctx.strokeStyle = colorOf(region.tag);
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    }
  }
  state.drawn = [];
  if ($("show-labels").checked) drawLabels(ctx, visible, thick);
  window.recognizeView.regionsDrawn = visible.length;
}

// Labels never pile up: each goes to the first free spot among above-the-box, inside-the-box,
// below-the-box, then is pushed down step by step until it overlaps no label already placed.
function drawLabels(ctx, regions, thick) {
  const size = Math.max(12, Math.round(Math.max(ctx.canvas.width, ctx.canvas.height) / 55));
  ctx.font = `${size}px system-ui, "Noto Sans CJK SC", "Noto Sans", sans-serif`;
  ctx.textBaseline = "top";
  const pad = Math.round(size / 4), h = size + 2 * pad, placed = [];
  const overlaps = (a) => placed.some((b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h);
  const byScore = [...regions].sort((a, b) => (b.score || 0) - (a.score || 0));
  for (const region of byScore) {
    const text = `${nameOf(region, "tag_zh")}${region.score == null ? "" : " " + region.score.toFixed(2)}`;
    const w = ctx.measureText(text).width + 2 * pad;
    const [x0, y0, , y1] = region.box;
    const x = Math.min(Math.max(0, x0), ctx.canvas.width - w);
    let spot = null;
    for (const y of [y0 - h, y0, y1]) {
      const c = { x, y: Math.min(Math.max(0, y), ctx.canvas.height - h), w, h };
      if (!overlaps(c)) { spot = c; break; }
    }
    if (!spot) {
      spot = { x, y: Math.max(0, y0 - h), w, h };
      while (overlaps(spot) && spot.y + h < ctx.canvas.height) spot.y += h / 2;
    }
    placed.push(spot);
    ctx.fillStyle = colorOf(region.tag);
    ctx.fillRect(spot.x, spot.y, spot.w, spot.h);
    const [r, g, b] = rgb(colorOf(region.tag));
    ctx.fillStyle = r * 0.299 + g * 0.587 + b * 0.114 > 150 ? "#000" : "#fff";
    ctx.fillText(text, spot.x + pad, spot.y + pad);
    state.drawn.push({ ...spot, region });
  }
}

// -- hover --------------------------------------------------------------------------------------
function regionAt(x, y) {
  const frame = state.frames[state.current];
  if (!frame) return null;
  const label = state.drawn.find((d) => x >= d.x && x <= d.x + d.w && y >= d.y && y <= d.y + d.h);
  if (label) return label.region;
  const hits = frame.regions.filter((r) => !state.hidden.has(r.tag) && x >= r.box[0] && x <= r.box[2] && y >= r.box[1] && y <= r.box[3]);
  const inMask = hits.filter((r) => r.mask && maskCanvas(r).getContext("2d").getImageData(Math.floor(x), Math.floor(y), 1, 1).data[3] > 0);
  const pool = inMask.length ? inMask : hits;
  pool.sort((a, b) => (a.box[2] - a.box[0]) * (a.box[3] - a.box[1]) - (b.box[2] - b.box[0]) * (b.box[3] - b.box[1]));
  return pool[0] || null;
}
function hover(event) {
  const canvas = $("canvas"), rect = canvas.getBoundingClientRect(), tip = $("tooltip");
  const x = (event.clientX - rect.left) * canvas.width / rect.width, y = (event.clientY - rect.top) * canvas.height / rect.height;
  const region = regionAt(x, y);
  if (!region) { tip.hidden = true; return; }
  const zh = region.tag_zh ? ` · ${region.tag_zh}` : "";
  const score = region.score == null ? "" : ` · score ${region.score.toFixed(2)}`;
  const mask = region.mask_score == null ? "" : ` · mask ${region.mask_score.toFixed(2)}`;
  tip.textContent = `${region.tag}${zh}${score}${mask}`;
  const wrap = $("stage-wrap").getBoundingClientRect();
  tip.style.left = `${event.clientX - wrap.left + 12}px`; tip.style.top = `${event.clientY - wrap.top + 12}px`;
  tip.hidden = false;
}

// -- threshold controls ----------------------------------------------------------------------------
let rerunTimer = null;
function scheduleRun() { clearTimeout(rerunTimer); rerunTimer = setTimeout(run, 350); }

function buildControls(recipe) {
  const box = $("controls");
  const controls = [];
  for (const stage of recipe.stages) {
    for (const p of stage.settable) {
      // thresholds, and any other probability-like number (bounded by 0 and 1)
      const probability = p.minimum != null && p.maximum != null && p.minimum >= 0 && p.maximum <= 1;
      if (!/threshold/.test(p.name) && !probability) continue;
      const key = `stages.${stage.index}.with.${p.name}`;
      const min = p.minimum ?? 0, max = p.maximum ?? 1, current = stage.params[p.name];
      const div = document.createElement("div");
      div.className = "control";
      div.innerHTML = `<label for="${key}">${escapeHtml(stage.use)} · ${escapeHtml(p.name)}</label>` +
        `<div class="pair"><input type="range" min="${min}" max="${max}" step="0.01"><input type="number" min="${min}" max="${max}" step="0.01" id="${key}"></div>`;
      const [range, number] = div.querySelectorAll("input");
      range.dataset.key = number.dataset.key = key;
      if (current == null) { number.placeholder = "per tag"; range.value = (min + max) / 2; }
      else { number.value = current; range.value = current; }
      range.title = p.description || "";
      const set = (value) => { state.sets[key] = value; scheduleRun(); };
      range.oninput = () => { number.value = range.value; set(range.value); };
      number.onchange = () => { if (number.value === "") { delete state.sets[key]; scheduleRun(); return; } range.value = number.value; set(number.value); };
      controls.push(div);
    }
  }
  if (!controls.length) controls.push(Object.assign(document.createElement("p"), { className: "muted", textContent: "This recipe has no thresholds to tune." }));
  box.replaceChildren(...controls);
}

function milliseconds(seconds) {
  const ms = seconds * 1000;
  return `${ms < 10 ? ms.toFixed(1) : ms.toFixed(0)} ms`;
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// -- start --------------------------------------------------------------------------------------
async function start() {
  const drop = $("drop");
  $("file").onchange = (e) => pick(e.target.files);
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove("over"); pick(e.dataTransfer.files); };
  drop.onkeydown = (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); };
  for (const id of ["show-masks", "show-boxes", "show-labels"]) $(id).onchange = draw;
  $("show-chinese").onchange = () => { const f = state.frames[state.current]; if (f) { renderSide(f); draw(); } };
  $("download-json").onclick = downloadJson;
  $("download-image").onclick = downloadAnnotated;
  $("canvas").onmousemove = hover;
  $("canvas").onmouseleave = () => { $("tooltip").hidden = true; };
  try {
    const response = await fetch("/v1/recipe");
    if (!response.ok) throw new Error(await errorText(response));
    const recipe = await response.json();
    $("recipe-name").textContent = `${recipe.name || recipe.source} · ${recipe.stages.map((s) => s.use).join(" → ")}`;
    buildControls(recipe);
  } catch (error) { showError(`Cannot read the recipe: ${error.message}`); }
  for (;;) {
    try {
      const ready = await fetch("/readyz");
      const badge = $("ready");
      if (ready.ok) { badge.textContent = "ready"; badge.className = "badge ok"; break; }
      const body = await ready.json();
      badge.textContent = body.detail || "loading"; badge.className = body.detail && body.detail.startsWith("loading failed") ? "badge bad" : "badge";
    } catch (e) { $("ready").textContent = "server unreachable"; $("ready").className = "badge bad"; }
    await new Promise((r) => setTimeout(r, 1000));
  }
}
start();
