// Heredity loop page: the rounds as a timeline, the alias and its moves (GET /api/loop); "train from feedback"
// starts a round (POST /api/loop/rounds) and follows its job (GET /api/loop/jobs/ID); rollback and promote move
// the alias (POST /api/loop/aliases/ALIAS/...); the arena asks two models (POST /api/arena) and stores a vote
// as feedback (POST /api/arena/ID/vote). Every text from the server goes in as text, never as HTML.
const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
let state = null; // GET /api/loop: {aliases, history, rounds, job}
let polling = null; // the job id being followed
let battle = null; // the arena's open battle: {id, answers}

const when = (iso) => (iso || "").slice(0, 19).replace("T", " ");
const num = (x, d = 3) => (x === null || x === undefined ? "n/a" : Number(x).toFixed(d));
const signed = (x, d = 3) => (x === null || x === undefined ? "n/a" : (x >= 0 ? "+" : "") + Number(x).toFixed(d));
const interval = (r) => `[${num(r.lo)}, ${num(r.hi)}]`;
const aliasName = () => $("alias").value.trim() || "lab-latest";
const link = (id) => (id ? el("a", { href: `/artifacts/${enc(id)}` }, id) : el("span", { class: "note" }, "(none)"));

function fail(where, e) {
  $(where).textContent = e.message;
}

async function load() {
  state = await api("/api/loop");
  $("loop-error").textContent = "";
  const names = $("alias-names");
  names.innerHTML = "";
  for (const a of Object.keys(state.aliases)) names.appendChild(el("option", { value: a }));
  renderAlias();
  renderRounds();
  const job = state.job;
  if (job && job.state === "running" && polling !== job.id) follow(job.id).catch((e) => fail("job-error", e));
  else if (job && !polling) showJob(job);
}

function renderAlias() {
  const a = aliasName();
  const target = state.aliases[a];
  $("alias-name").textContent = a;
  $("alias-target").hidden = !target;
  $("alias-none").hidden = !!target;
  if (target) {
    $("alias-target").textContent = target;
    $("alias-target").href = `/artifacts/${enc(target)}`;
  }
  const tbody = $("alias-history").querySelector("tbody");
  tbody.innerHTML = "";
  const moves = state.history[a] || [];
  if (!moves.length) tbody.appendChild(el("tr", {}, el("td", { colspan: 5, class: "note" }, "The alias has not been set.")));
  for (const m of [...moves].reverse()) {
    tbody.appendChild(el("tr", {}, el("td", {}, when(m.moved_at)), el("td", {}, link(m.from)), el("td", {}, link(m.to)),
      el("td", {}, m.reason), el("td", {}, m.moved_by)));
  }
}

function rateLine(r) {
  return r && r.n ? `${num(r.mean)} ${interval(r)} over ${r.n}` : "no items";
}

function roundView(r) {
  const s = r.stats || {};
  const d = r.decision || {};
  const c = r.counts || {};
  const li = el("li", { class: `round ${d.promote ? "promoted" : "kept"}`, "data-id": r.id, "data-round": String(r.round) });
  li.appendChild(el("h4", {}, `Round ${r.round} · ${r.alias} · ${r.method} `,
    el("span", { class: "verdict" }, d.promote ? "promoted" : "kept the old model"),
    el("span", { class: "note" }, ` · ${r.seconds} s · `, link(r.id))));
  li.appendChild(el("p", { class: "note why" }, r.why || ""));
  const dl = el("dl");
  const row = (k, ...v) => { dl.appendChild(el("dt", {}, k)); dl.appendChild(el("dd", {}, ...v)); };
  row("models", link(r.old), " → ", link(r.new), " ", el("a", { class: "lineage", href: `/lineage?root=${enc(r.new)}` }, "lineage"));
  row("data", `${c.training_feedback} rated answers trained on, ${c.held_out_feedback} held out · ` +
    `${c.sft_rows} SFT rows, ${c.dpo_rows} preference pairs, ${c.kto_rows} KTO rows`);
  if (s.agreement) row("agreement", `${rateLine(s.agreement)} (held-out answers whose likelihood moved the way they were rated; 0.5 is chance)`);
  for (const [name, ck] of Object.entries(s.checks || {})) {
    const t = ck.test || {};
    row(`check ${name}`, `passes ${num(ck.old.mean)} → ${num(ck.new.mean)}; new − old ${signed(t.diff)} ${interval(t)}, McNemar p ${num(t.p)}`);
  }
  if (s.judge) row("judge", `new wins ${rateLine(s.judge)}, ${s.judge.ties} ties`);
  const inh = s.inherited || {};
  if (inh.length_words) row("picked up", `answer length ${signed(inh.length_words.diff, 1)} words ${interval(inh.length_words)}; ` +
    `refusals ${signed((inh.refusals || {}).diff)} ${interval(inh.refusals || {})}`);
  row("rule", d.rule || "");
  row("measured", `${d.measured || ""} → `, el("span", { class: "verdict" }, d.promote ? "promote" : "keep the old model"));
  const ds = r.datasets || {};
  row("datasets", "conversations ", link(ds.conversations), " · training ", link(ds.train), " · held out ", link(ds.held_out));
  li.appendChild(dl);
  if (r.samples && r.samples.length) {
    const body = el("tbody");
    for (const x of r.samples) body.appendChild(el("tr", {}, el("td", {}, x.prompt), el("td", {}, x.old), el("td", {}, x.new)));
    li.appendChild(el("details", {}, el("summary", {}, "held-out prompts, old and new greedy answers"),
      el("table", { class: "data" }, el("thead", {}, el("tr", {}, el("th", {}, "prompt"), el("th", {}, "old"), el("th", {}, "new"))), body)));
  }
  return li;
}

function renderRounds() {
  const a = aliasName();
  const rounds = state.rounds.filter((r) => r.alias === a);
  $("rounds-empty").hidden = rounds.length > 0;
  const ol = $("rounds");
  ol.innerHTML = "";
  for (const r of [...rounds].reverse()) ol.appendChild(roundView(r));
}

async function fillModels() {
  const data = (await api("/v1/models")).data.filter((m) => m.kind !== "embedding");
  const fill = (select, first) => {
    const keep = select.value;
    select.innerHTML = "";
    if (first) select.appendChild(el("option", { value: "" }, first));
    for (const m of data) select.appendChild(el("option", { value: m.id }, m.kind === "bundled" ? `${m.id} (bundled)` : `${m.name} · ${m.id}`));
    if (keep && data.some((m) => m.id === keep)) select.value = keep;
  };
  fill($("base"), "(where the alias started; else the default)");
  fill($("promote-model"));
  fill($("arena-a"), "(the alias now)");
  fill($("arena-b"), "(the alias before)");
}

function roundBody() {
  const body = { alias: aliasName(), method: $("method").value };
  if ($("base").value) body.base = $("base").value;
  for (const k of ["steps", "batch_size", "min_feedback", "min_eval", "max_new_tokens", "max_length"]) {
    if ($(k).value !== "") body[k] = parseInt($(k).value, 10);
  }
  for (const k of ["lr", "holdout", "margin"]) if ($(k).value.trim() !== "") body[k] = Number($(k).value);
  body.checks = [];
  for (const line of $("checks").value.split("\n")) {
    const at = line.indexOf("=");
    if (!line.trim()) continue;
    if (at < 1) throw new Error(`check ${JSON.stringify(line)}: write name=regex`);
    body.checks.push({ name: line.slice(0, at).trim(), pattern: line.slice(at + 1).trim() });
  }
  return body;
}

function showJob(job) {
  $("job-state").textContent = `round ${job.id}: ${job.state}`;
  $("job-state").dataset.state = job.state;
  $("job-log").hidden = !job.log.length;
  $("job-log").textContent = job.log.join("\n");
  $("job-error").textContent = job.state === "failed" ? job.error : "";
  const res = $("job-result");
  res.innerHTML = "";
  if (job.state === "done" && job.record) {
    const r = job.record;
    res.append(`Round ${r.round} (${r.method}): ${r.decision.measured} → `,
      el("strong", {}, r.decision.promote ? `promoted: ${r.alias} now serves ${r.new}` : "kept the old model"));
  }
  $("train").disabled = job.state === "running";
}

async function follow(id) {
  polling = id;
  try {
    for (;;) {
      const job = await api(`/api/loop/jobs/${enc(id)}`);
      showJob(job);
      if (job.state !== "running") break;
      await new Promise((ok) => setTimeout(ok, 1000));
    }
  } finally {
    polling = null;
    $("train").disabled = false;
  }
  await load();
}

async function train(ev) {
  ev.preventDefault();
  $("job-error").textContent = "";
  $("job-result").textContent = "";
  const body = roundBody();
  $("train").disabled = true;
  try {
    const { job } = await api("/api/loop/rounds", { method: "POST", body: JSON.stringify(body) });
    await follow(job);
  } finally {
    $("train").disabled = !!polling;
  }
}

async function moveAlias(how, body) {
  const a = aliasName();
  const m = await api(`/api/loop/aliases/${enc(a)}/${how}`, { method: "POST", body: JSON.stringify(body) });
  $("alias-result").textContent = `${a}: ${m.from || "(new)"} → ${m.to}`;
  await load();
}

async function ask(ev) {
  ev.preventDefault();
  $("arena-error").textContent = "";
  $("arena-reveal").textContent = "";
  $("vote-a").disabled = $("vote-b").disabled = true;
  const body = { prompt: $("arena-prompt").value, alias: aliasName(), max_tokens: parseInt($("arena-max").value, 10) || 64 };
  const a = $("arena-a").value, b = $("arena-b").value;
  if (a || b) {
    if (!a || !b) throw new Error("pick both models, or neither (the alias now and before)");
    body.models = [a, b];
  }
  $("arena-go").disabled = true;
  try {
    battle = await api("/api/arena", { method: "POST", body: JSON.stringify(body) });
  } finally {
    $("arena-go").disabled = false;
  }
  for (const x of battle.answers) $(`answer-${x.slot.toLowerCase()}`).textContent = x.text;
  $("arena-answers").hidden = false;
  $("vote-a").disabled = $("vote-b").disabled = false;
}

async function vote(winner) {
  if (!battle) return;
  $("vote-a").disabled = $("vote-b").disabled = true;
  const v = await api(`/api/arena/${enc(battle.id)}/vote`, { method: "POST", body: JSON.stringify({ winner }) });
  $("arena-reveal").textContent = "";
  for (const slot of ["A", "B"]) {
    const s = v.answers[slot];
    $("arena-reveal").append(el("span", { class: `reveal-${slot.toLowerCase()}` },
      `${slot}: ${s.model} (${s.rating > 0 ? "+1" : "−1"}) `));
  }
  $("arena-reveal").append("· stored as feedback for the next round");
}

$("alias").addEventListener("change", () => { if (state) { renderAlias(); renderRounds(); } });
$("train-form").addEventListener("submit", (e) => train(e).catch((x) => fail("job-error", x)));
$("rollback").addEventListener("click", () => moveAlias("rollback", {}).catch((x) => fail("alias-result", x)));
$("promote-form").addEventListener("submit", (e) => {
  e.preventDefault();
  moveAlias("promote", { model: $("promote-model").value }).catch((x) => fail("alias-result", x));
});
$("arena-form").addEventListener("submit", (e) => ask(e).catch((x) => fail("arena-error", x)));
$("vote-a").addEventListener("click", () => vote("A").catch((x) => fail("arena-error", x)));
$("vote-b").addEventListener("click", () => vote("B").catch((x) => fail("arena-error", x)));
Promise.all([load(), fillModels()]).catch((e) => fail("loop-error", e));
