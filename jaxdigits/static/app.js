// The live page: the drawing pad sends its raw grey pixels to the server, which frames them as
// `jaxdigits predict` frames a PNG and answers with every layer's activations. Nothing here
// reshapes the digit: the page only draws what the server computed.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const BRUSH = 20;            // on a 280-pixel pad a digit ~200 pixels tall gets MNIST's ~2-pixel strokes
const THROTTLE_MS = 60;      // at most one request per 60 ms while drawing, the latest canvas wins
const WIDE = 32;             // layers wider than this show their most active neurons
const SHOWN_OF_WIDE = 16;
const EDGES_PER_NEURON = 3;

const state = {
  net: null,          // GET /api/network
  result: null,       // the last answer drawn
  version: 0,         // changes to the pad
  rendered: 0,        // the pad version the page shows
  busy: false,
  lastSent: 0,
  timer: null,
  shown: [],          // per layer, the neuron indices drawn
  hover: null,        // [layer, index] under the pointer
  pinned: null,       // [layer, index] tapped
};

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ink = pad.getContext("2d", { willReadFrequently: true });

function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (parent) parent.appendChild(node);
  return node;
}

function markState() {
  document.body.dataset.version = String(state.version);
  document.body.dataset.rendered = String(state.rendered);
  document.body.dataset.busy = state.busy || state.timer ? "1" : "0";
}

// ---- drawing ------------------------------------------------------------------------------

function clearPad() {
  ink.fillStyle = "#000";
  ink.fillRect(0, 0, pad.width, pad.height);
}

let stroke = null;

function padPoint(event) {
  const rect = pad.getBoundingClientRect();
  return [(event.clientX - rect.left) * pad.width / rect.width, (event.clientY - rect.top) * pad.height / rect.height];
}

function inkTo(point) {
  ink.strokeStyle = "#fff";
  ink.lineWidth = BRUSH;
  ink.lineCap = "round";
  ink.lineJoin = "round";
  ink.beginPath();
  ink.moveTo(stroke[0], stroke[1]);
  ink.lineTo(point[0], point[1]);
  ink.stroke();
  stroke = point;
}

pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 && event.pointerType === "mouse") return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  if (state.example) {
    state.example = null;
    $("caption").textContent = "Drawing over the test digit.";
  }
  stroke = padPoint(event);
  inkTo(stroke);
  changed();
});

pad.addEventListener("pointermove", (event) => {
  if (!stroke) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of events.length ? events : [event]) inkTo(padPoint(e));
  changed();
});

for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => {
    if (!stroke) return;
    stroke = null;
    changed();
  });
}

// ---- talking to the server ------------------------------------------------------------------

function changed() {
  state.version += 1;
  schedule();
}

function schedule() {
  if (state.busy || state.timer) return markState();
  const wait = Math.max(0, state.lastSent + THROTTLE_MS - performance.now());
  state.timer = setTimeout(() => { state.timer = null; send(); }, wait);
  markState();
}

function padPixels() {
  const rgba = ink.getImageData(0, 0, pad.width, pad.height).data;
  const grey = new Array(pad.width * pad.height);
  for (let i = 0; i < grey.length; i++) grey[i] = rgba[4 * i];  // white ink on black: R = G = B
  return grey;
}

async function send() {
  const version = state.version;
  state.busy = true;
  state.lastSent = performance.now();
  markState();
  try {
    const response = await fetch("/api/predict", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ pixels: padPixels(), width: pad.width, height: pad.height }),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    if (version >= state.rendered) {
      state.rendered = version;
      show(answer.blank ? null : answer);
    }
  } catch (error) {
    $("confidence").textContent = `the server did not answer (${error.message})`;
    state.rendered = version;
  } finally {
    state.busy = false;
    if (state.version > state.rendered) schedule();
    markState();
  }
}

async function example(kind) {
  const response = await fetch(`/api/example?kind=${kind}`);
  const answer = await response.json();
  if (!response.ok) {
    $("caption").textContent = answer.error;
    return;
  }
  // Show the test digit on the pad, as it is; the network's answer is for the digit itself.
  const small = document.createElement("canvas");
  small.width = small.height = 28;
  paintGrey(small, answer.input);
  clearPad();
  ink.imageSmoothingEnabled = true;
  ink.drawImage(small, 0, 0, pad.width, pad.height);
  state.version += 1;
  state.rendered = state.version;
  state.example = answer;
  const verdict = answer.digit === answer.label ? "read correctly" : `read as ${answer.digit}`;
  $("caption").textContent = `Test digit #${answer.index}, labelled ${answer.label}: ${verdict}.`;
  $("caption").dataset.label = String(answer.label);
  $("caption").dataset.index = String(answer.index);
  show(answer);
  markState();
}

// ---- showing an answer -----------------------------------------------------------------------

function paintGrey(canvas, values) {
  const context = canvas.getContext("2d");
  const image = context.createImageData(canvas.width, canvas.height);
  for (let i = 0; i < values.length; i++) {
    const v = Math.round(255 * Math.min(1, Math.max(0, values[i])));
    image.data.set([v, v, v, 255], 4 * i);
  }
  context.putImageData(image, 0, 0);
}

function brightness(layer, values) {
  // Brightness is the activation itself for sigmoid and softmax neurons (0..1); relu neurons are
  // shown relative to their layer's largest, tanh ones from -1 (dark) to 1 (bright).
  const last = layer === state.net.sizes.length - 1;
  const kind = layer === 0 ? "input" : last ? state.net.output : state.net.activation;
  if (kind === "relu") {
    const top = Math.max(...values, 1e-6);
    return values.map((v) => Math.max(0, v) / top);
  }
  if (kind === "tanh") return values.map((v) => (v + 1) / 2);
  return values.map((v) => Math.min(1, Math.max(0, v)));
}

function shownNeurons(values) {
  if (values.length <= WIDE) return values.map((_, i) => i);
  const order = values.map((_, i) => i).sort((a, b) => values[b] - values[a] || a - b);
  return order.slice(0, SHOWN_OF_WIDE).sort((a, b) => a - b);
}

function layerName(layer) {
  const last = state.net.sizes.length - 1;
  return layer === 0 ? "input" : layer === last ? "output" : state.net.sizes.length > 3 ? `hidden ${layer}` : "hidden";
}

function show(answer) {
  state.result = answer;
  const net = state.net;
  const svg = $("network");
  svg.replaceChildren();
  svg.classList.toggle("blank", !answer);
  paintGrey($("input"), answer ? answer.input : new Array(784).fill(0));
  const values = net.sizes.map((n, l) => (answer ? (l === 0 ? answer.input : answer.activations[l - 1]) : new Array(n).fill(0)));
  const lights = values.map((v, l) => brightness(l, v));
  state.shown = values.map(shownNeurons);

  // Geometry: one column per layer.
  const width = 600, height = 700, top = 46, bottom = 24, left = 46, right = 70;
  const columns = net.sizes.length;
  const xs = net.sizes.map((_, l) => left + (l * (width - left - right)) / (columns - 1));
  const most = Math.max(...state.shown.map((s) => s.length));
  const step = Math.min(40, (height - top - bottom - 20) / most);
  const radius = Math.max(4, Math.min(14, step * 0.38));
  const ys = state.shown.map((shown) => {
    const span = step * (shown.length - 1);
    const start = top + (height - top - bottom - 20 - span) / 2;
    return shown.map((_, k) => start + k * step);
  });

  // Connections first, beneath the neurons.
  const edges = el("g", { class: "edges" }, svg);
  for (let l = 1; l < columns; l++) {
    const w = net.layers[l - 1].w;
    const candidates = [];
    state.shown[l].forEach((j, jk) => {
      if (lights[l][j] < 0.5) return;  // only lit neurons
      const into = state.shown[l - 1].map((i, ik) => ({ i, ik, c: values[l - 1][i] * w[i][j] }));
      into.sort((a, b) => Math.abs(b.c) - Math.abs(a.c));
      for (const e of into.slice(0, EDGES_PER_NEURON)) if (e.c !== 0) candidates.push({ ...e, j, jk });
    });
    const strongest = Math.max(1e-9, ...candidates.map((e) => Math.abs(e.c)));
    for (const e of candidates) {
      const s = Math.abs(e.c) / strongest;
      el("line", {
        class: `edge ${w[e.i][e.j] >= 0 ? "positive" : "negative"}`,
        x1: xs[l - 1] + radius, y1: ys[l - 1][e.ik], x2: xs[l] - radius, y2: ys[l][e.jk],
        "stroke-width": (0.6 + 2.6 * s).toFixed(2), "stroke-opacity": (0.25 + 0.65 * s).toFixed(2),
      }, edges);
    }
  }

  // Neurons, lit by their activation.
  const digit = answer ? answer.digit : -1;
  for (let l = 0; l < columns; l++) {
    const label = el("text", { class: "layer-label", x: xs[l], y: 18 }, svg);
    label.textContent = `${layerName(l)} · ${net.sizes[l]}`;
    const shown = state.shown[l];
    shown.forEach((i, k) => {
      const classes = ["neuron"];
      if (l > 0) classes.push("hoverable");
      if (l === columns - 1 && i === digit) classes.push("answer");
      const g = el("g", { class: classes.join(" "), "data-layer": l, "data-index": i,
                          "data-activation": values[l][i].toFixed(4) }, svg);
      el("circle", { class: "base", cx: xs[l], cy: ys[l][k], r: radius }, g);
      el("circle", { class: "light", cx: xs[l], cy: ys[l][k], r: radius - 1,
                     "fill-opacity": lights[l][i].toFixed(3) }, g);
      if (l > 0) {
        g.addEventListener("pointerenter", () => { state.hover = [l, i]; inspect(); });
        g.addEventListener("pointerleave", () => { state.hover = null; inspect(); });
        g.addEventListener("pointerdown", (event) => {
          event.preventDefault();
          const same = state.pinned && state.pinned[0] === l && state.pinned[1] === i;
          state.pinned = same ? null : [l, i];
          state.hover = event.pointerType === "mouse" ? [l, i] : null;
          inspect();
        });
      }
      if (l === columns - 1) {
        const text = el("text", { class: `digit-label${i === digit ? " answer" : ""}`, x: xs[l] + radius + 8, y: ys[l][k] }, svg);
        text.textContent = String(i);
      }
    });
    if (shown.length < net.sizes[l]) {
      const more = el("text", { class: "more", x: xs[l], y: ys[l][shown.length - 1] + step + 4 }, svg);
      more.textContent = `+${net.sizes[l] - shown.length} more`;
      const note = el("text", { class: "more", x: xs[l], y: ys[l][0] - radius - 8 }, svg);
      note.textContent = "most active";
    }
  }

  // The outputs as bars, with the answer.
  const outputs = values[columns - 1];
  const outputLights = lights[columns - 1];
  const bars = $("outputs");
  bars.replaceChildren();
  outputs.forEach((v, d) => {
    const row = document.createElement("div");
    row.className = `bar${d === digit ? " top" : ""}`;
    row.dataset.digit = String(d);
    row.dataset.value = v.toFixed(4);
    row.innerHTML = `<span class="label">${d}</span><span class="track"><span class="fill"></span></span><span class="value">${answer ? v.toFixed(2) : ""}</span>`;
    row.querySelector(".fill").style.width = `${(100 * outputLights[d]).toFixed(1)}%`;
    bars.appendChild(row);
  });
  $("digit").textContent = answer ? String(digit) : "–";
  if (answer) {
    const what = net.output === "softmax" ? "probability" : "its output neuron's activation";
    $("confidence").textContent = `confidence ${(100 * answer.confidence).toFixed(0)}% (${what})`;
  } else {
    $("confidence").textContent = "draw a digit";
  }
  inspect();
}

// ---- one neuron's incoming weights --------------------------------------------------------------

function inspect() {
  const target = state.hover || state.pinned;
  const box = $("neuron");
  document.querySelectorAll("#network .neuron.selected").forEach((n) => n.classList.remove("selected"));
  if (!target) {
    $("neuron-title").textContent = "A neuron";
    box.innerHTML = '<p class="note">Hover over a neuron (or tap it) to see the weights coming into it.</p>';
    return;
  }
  const [l, j] = target;
  const node = document.querySelector(`#network .neuron[data-layer="${l}"][data-index="${j}"]`);
  if (node) node.classList.add("selected");
  const net = state.net;
  const w = net.layers[l - 1].w.map((row) => row[j]);
  const bias = net.layers[l - 1].b[j];
  const activation = state.result ? (l === 0 ? state.result.input : state.result.activations[l - 1])[j] : null;
  $("neuron-title").textContent = `${layerName(l)} neuron ${j}`;
  box.replaceChildren();
  box.dataset.layer = String(l);
  box.dataset.index = String(j);
  const biggest = Math.max(1e-9, ...w.map(Math.abs));
  if (l === 1 && w.length === 784) {
    // Colour scale: the 98th percentile of |weight|, so that a few outliers do not darken the rest.
    const sorted = w.map(Math.abs).sort((a, b) => a - b);
    const scale = Math.max(1e-9, sorted[Math.floor(0.98 * (sorted.length - 1))]);
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 28;
    canvas.className = "weights-image";
    const context = canvas.getContext("2d");
    const image = context.createImageData(28, 28);
    w.forEach((v, i) => {
      const s = Math.min(1, Math.abs(v) / scale);
      const colour = v >= 0 ? [78, 168, 255] : [255, 107, 91];
      image.data.set([...colour.map((c) => Math.round(11 + (c - 11) * s)), 255], 4 * i);
    });
    context.putImageData(image, 0, 0);
    box.appendChild(canvas);
  } else {
    const svg = el("svg", { viewBox: "0 0 270 120", class: "weights-bars" });
    const n = w.length, barWidth = 270 / n;
    el("line", { x1: 0, x2: 270, y1: 60, y2: 60, stroke: "#4a566c" }, svg);
    w.forEach((v, i) => {
      const h = 56 * Math.abs(v) / biggest;
      el("rect", { x: (i * barWidth + barWidth * 0.1).toFixed(2), y: (v >= 0 ? 60 - h : 60).toFixed(2),
                   width: Math.max(0.5, barWidth * 0.8).toFixed(2), height: Math.max(0.5, h).toFixed(2),
                   fill: v >= 0 ? "#4ea8ff" : "#ff6b5b", "data-weight": v.toFixed(4) }, svg);
    });
    box.appendChild(svg);
  }
  const stats = document.createElement("p");
  stats.className = "stats";
  const from = l === 1 ? "pixel" : `${layerName(l - 1)} neuron`;
  stats.innerHTML = `${l === 1 ? "28×28 image: one weight per pixel" : `one bar per ${from}`}; blue positive, red negative.<br>` +
    `bias <b>${bias.toFixed(2)}</b>, largest |weight| <b>${biggest.toFixed(2)}</b>` +
    (activation === null ? "" : `, activation <b>${activation.toFixed(3)}</b>`);
  box.appendChild(stats);
}

// ---- start -----------------------------------------------------------------------------------

async function start() {
  clearPad();
  $("clear").addEventListener("click", () => {
    clearPad();
    state.example = null;
    $("caption").textContent = "Draw one digit, large, with the mouse, a finger or a pen.";
    state.version += 1;
    state.rendered = state.version;
    show(null);
    markState();
  });
  $("random").addEventListener("click", () => example("random"));
  $("mistake").addEventListener("click", () => example("mistake"));
  const response = await fetch("/api/network");
  state.net = await response.json();
  const net = state.net;
  const accuracy = net.test_accuracy == null ? "" : ` · ${(100 * net.test_accuracy).toFixed(2)}% of test digits right`;
  $("model-info").textContent = `${net.sizes.join("-")} · ${net.activation} hidden · ${net.output} output${accuracy}`;
  $("shape").textContent = net.sizes.join("-");
  if (net.examples) {
    $("random").disabled = false;
    $("mistake").disabled = net.test_mistakes === 0;
  } else {
    $("caption").textContent = `Test digits are off: ${net.examples_note}.`;
  }
  show(null);
  document.body.dataset.ready = "1";
}

start();
