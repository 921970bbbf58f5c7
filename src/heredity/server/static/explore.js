// Next-token explorer: one forward pass per step (POST /api/explore); choose any candidate to branch.
const $ = (id) => document.getElementById(id);
let chosen = []; // token ids appended after the prompt
let last = null;

function show(s) { return s.replace(/\n/g, "↵").replace(/\t/g, "⇥") || "∅"; }

async function step() {
  const layerSel = $("layer"), headSel = $("head");
  const body = {
    model: $("model").value, prompt: $("prompt").value, chat: $("chat").checked,
    system_prompt: $("system").value.trim() || null, tokens: chosen, top_k: Number($("top-k").value),
    layer: layerSel.value === "" ? null : Number(layerSel.value), head: headSel.value === "" ? null : Number(headSel.value),
  };
  if (body.layer === null && last) body.layer = last.n_layers - 1;
  try {
    last = await api("/api/explore", { method: "POST", body: JSON.stringify(body) });
  } catch (e) {
    $("sequence").innerHTML = "";
    $("sequence").appendChild(el("span", { class: "error" }, e.message));
    return;
  }
  fillLayers(last);
  if (body.layer === null && last.attention === null) { layerSel.value = String(last.n_layers - 1); return step(); }
  renderSequence(last);
  renderTop(last);
  renderHeatmap(last);
}

function fillLayers(r) {
  const layerSel = $("layer"), headSel = $("head");
  if (layerSel.options.length !== r.n_layers) {
    layerSel.innerHTML = "";
    for (let i = 0; i < r.n_layers; i++) layerSel.appendChild(el("option", { value: i }, String(i)));
    layerSel.value = String(r.n_layers - 1);
  }
  if (headSel.options.length !== r.n_heads + 1) {
    headSel.innerHTML = "";
    headSel.appendChild(el("option", { value: "" }, "mean"));
    for (let i = 0; i < r.n_heads; i++) headSel.appendChild(el("option", { value: i }, String(i)));
  }
}

function renderSequence(r) {
  const box = $("sequence");
  box.innerHTML = "";
  r.tokens.forEach((t, i) => {
    const gen = i >= r.prompt_len;
    const span = el("span", { class: `tok ${gen ? "gen" : ""}`, title: `#${i} id ${r.ids[i]}` }, show(t));
    if (gen) span.addEventListener("click", () => { chosen = chosen.slice(0, i - r.prompt_len); step(); });
    box.appendChild(span);
  });
}

function renderTop(r) {
  const tbody = $("top").querySelector("tbody");
  tbody.innerHTML = "";
  $("entropy").textContent = `entropy ${r.entropy.toFixed(2)} nats`;
  r.top.forEach((c, k) => {
    const tr = el("tr", { "data-id": c.id },
      el("td", {}, String(k + 1)), el("td", { class: "tokcell" }, show(c.token)),
      el("td", { class: "p" }, (100 * c.prob).toFixed(2) + "%"),
      el("td", { style: "width:40%" }, el("div", { class: "bar", style: `width:${Math.max(1, 100 * c.prob)}%` })));
    tr.addEventListener("click", () => { chosen.push(c.id); step(); });
    tbody.appendChild(tr);
  });
}

function renderHeatmap(r) {
  const box = $("heatmap");
  box.innerHTML = "";
  if (!r.attention) return;
  const off = r.attention_offset, labels = r.tokens.slice(off);
  const head = el("tr", {}, el("th"));
  labels.forEach((t) => head.appendChild(el("th", {}, show(t).slice(0, 10))));
  const table = el("table", {}, el("thead", {}, head));
  const tb = el("tbody");
  r.attention.forEach((row, qi) => {
    const tr = el("tr", {}, el("th", {}, show(labels[qi]).slice(0, 14)));
    row.forEach((v, ki) => {
      const a = ki > qi ? 0 : Math.sqrt(v);
      tr.appendChild(el("td", { title: `${show(labels[qi])} → ${show(labels[ki])}: ${v.toFixed(3)}`, style: `background: rgba(37,99,235,${a.toFixed(3)})` }));
    });
    tb.appendChild(tr);
  });
  table.appendChild(tb);
  box.appendChild(table);
  box.scrollTop = box.scrollHeight;
}

$("explore-form").addEventListener("submit", (e) => { e.preventDefault(); chosen = []; step(); });
$("step-greedy").addEventListener("click", () => { if (last) { chosen.push(last.top[0].id); step(); } });
$("layer").addEventListener("change", () => last && step());
$("head").addEventListener("change", () => last && step());
fillModels($("model")).catch((e) => $("sequence").appendChild(el("span", { class: "error" }, e.message)));
