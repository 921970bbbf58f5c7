// Prompt templates page: the stored templates (GET /api/prompts); one template's versions, text and variables
// (GET /api/prompts/NAME, /api/prompts/REF/template); a render form (POST /api/prompts/render); a diff of two
// versions (GET /api/prompts/diff); moving an alias (POST /api/prompts/NAME/aliases/ALIAS) and its history.
const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
let current = null; // GET /api/prompts/NAME: {name, latest, versions, aliases, history}
let shown = null; // GET /api/prompts/ID/template: the version on screen

const when = (iso) => iso.slice(0, 19).replace("T", " ");
const label = (id) => {
  const v = current && current.versions.find((x) => x.id === id);
  return v ? `v${v.version}` : id || "(new)";
};

function fail(where, e) {
  $(where).textContent = e.message;
}

async function loadList() {
  const { data } = await api("/api/prompts");
  const ul = $("prompt-list");
  ul.innerHTML = "";
  if (!data.length) ul.appendChild(el("li", { class: "note" }, "No templates yet."));
  for (const p of data) {
    const aliases = Object.keys(p.aliases).map((a) => "@" + a).join(" ");
    const small = el("small", {}, `${p.versions} version${p.versions === 1 ? "" : "s"} · ${p.format}${aliases ? " · " + aliases : ""}`);
    const li = el("li", { class: current && current.name === p.name ? "on" : "", "data-name": p.name, title: p.description || p.name }, p.name, small);
    li.addEventListener("click", () => openPrompt(p.name).catch((e) => fail("prompt-error", e)));
    ul.appendChild(li);
  }
}

function fillVersions(select, pick) {
  select.innerHTML = "";
  for (const v of [...current.versions].reverse()) {
    const tags = v.aliases.length ? " " + v.aliases.map((a) => "@" + a).join(" ") : "";
    select.appendChild(el("option", { value: v.id }, `v${v.version} · ${v.id}${tags}`));
  }
  if (pick) select.value = pick;
}

async function openPrompt(name, version) {
  current = await api(`/api/prompts/${enc(name)}`);
  $("prompt-error").textContent = "";
  history.replaceState(null, "", `/prompts?name=${enc(name)}`);
  $("prompt-empty").hidden = true;
  $("prompt-view").hidden = false;
  $("p-name").textContent = current.name;
  $("p-desc").textContent = current.description;
  const tbody = $("versions").querySelector("tbody");
  tbody.innerHTML = "";
  for (const v of [...current.versions].reverse()) {
    const tr = el("tr", { "data-id": v.id, class: "pick" },
      el("td", { class: "num" }, `v${v.version}`),
      el("td", {}, el("a", { href: `/artifacts/${v.id}` }, v.id)),
      el("td", {}, when(v.created_at)),
      el("td", {}, v.variables.join(", ")),
      el("td", { class: "aliases" }, v.aliases.map((a) => "@" + a).join(" ")));
    tr.addEventListener("click", (e) => { if (e.target.tagName !== "A") showVersion(v.id).catch((x) => fail("prompt-error", x)); });
    tbody.appendChild(tr);
  }
  const ids = current.versions.map((v) => v.id);
  fillVersions($("version"), version || current.latest);
  fillVersions($("diff-a"), ids.length > 1 ? ids[ids.length - 2] : ids[0]);
  fillVersions($("diff-b"), current.latest);
  fillVersions($("alias-version"), version || current.latest);
  const names = $("alias-names");
  names.innerHTML = "";
  for (const a of Object.keys(current.aliases)) names.appendChild(el("option", { value: a }));
  showHistory();
  $("diff-out").hidden = true;
  await showVersion($("version").value);
  await loadList();
}

function showHistory() {
  const tbody = $("alias-history").querySelector("tbody");
  tbody.innerHTML = "";
  if (!current.history.length) tbody.appendChild(el("tr", {}, el("td", { colspan: 5, class: "note" }, "No alias has been set.")));
  for (const h of [...current.history].reverse()) {
    tbody.appendChild(el("tr", {},
      el("td", {}, when(h.moved_at)), el("td", {}, "@" + h.alias),
      el("td", {}, h.from ? `v${h.from_version} (${h.from})` : "(new)"),
      el("td", {}, `v${h.to_version} (${h.to})`), el("td", {}, h.moved_by)));
  }
}

function messageView(role, content) {
  return el("div", { class: `msg ${role}` }, el("div", { class: "who" }, role), el("div", { class: "text" }, content));
}

async function showVersion(id) {
  shown = await api(`/api/prompts/${enc(id)}/template`);
  $("version").value = id;
  $("alias-version").value = id;
  for (const tr of $("versions").querySelectorAll("tbody tr")) tr.classList.toggle("on", tr.dataset.id === id);
  const t = shown.template;
  $("v-meta").textContent = `${shown.id} · ${when(shown.created_at)}${t.description ? " · " + t.description : ""}`;
  const body = $("template-body");
  body.innerHTML = "";
  if (t.text !== null) body.appendChild(el("pre", { id: "template-text" }, t.text));
  else for (const m of t.messages) body.appendChild(messageView(m.role, m.content));
  const vars = $("variables").querySelector("tbody");
  vars.innerHTML = "";
  const form = $("render-vars");
  form.innerHTML = "";
  const names = Object.keys(t.variables).sort();
  if (!names.length) {
    vars.appendChild(el("tr", {}, el("td", { colspan: 5, class: "note" }, "No variables.")));
    form.appendChild(el("p", { class: "note" }, "This template has no variables."));
  }
  for (const name of names) {
    const v = t.variables[name];
    const dflt = v.default === null ? "" : JSON.stringify(v.default);
    vars.appendChild(el("tr", {}, el("td", {}, el("code", {}, name)), el("td", {}, v.type),
      el("td", {}, v.required && v.default === null ? "yes" : "no"), el("td", {}, dflt), el("td", {}, v.description)));
    let input;
    if (v.type === "bool") {
      input = el("select", { "data-var": name }, el("option", { value: "" }, v.default === null ? "(not given)" : `(default: ${dflt})`),
        el("option", { value: "true" }, "true"), el("option", { value: "false" }, "false"));
    } else {
      const hint = { str: "text", int: "a whole number", float: "a number", list: 'a JSON array, e.g. ["a", "b"]' }[v.type];
      input = el("input", { type: "text", "data-var": name, placeholder: dflt ? `default: ${dflt}` : hint });
    }
    form.appendChild(el("label", {}, `${name} (${v.type}${v.required && v.default === null ? "" : ", optional"})`, input));
  }
  $("render-out").innerHTML = "";
  $("render-error").textContent = "";
}

function givenVariables(container) {
  // empty fields are left out: the template's defaults fill them; the server parses each value as its type
  const out = {};
  for (const input of container.querySelectorAll("[data-var]")) if (input.value !== "") out[input.dataset.var] = input.value;
  return out;
}

async function renderShown(ev) {
  ev.preventDefault();
  $("render-error").textContent = "";
  const out = $("render-out");
  out.innerHTML = "";
  try {
    const r = await api("/api/prompts/render", { method: "POST", body: JSON.stringify({ ref: shown.id, variables: givenVariables($("render-vars")) }) });
    if (r.format === "text") out.appendChild(el("pre", { id: "render-text", class: "rendered" }, r.text));
    else for (const m of r.messages) out.appendChild(messageView(m.role, m.content));
  } catch (e) { fail("render-error", e); }
}

async function diffVersions(ev) {
  ev.preventDefault();
  const pre = $("diff-out");
  pre.hidden = false;
  pre.innerHTML = "";
  try {
    const r = await api(`/api/prompts/diff?a=${enc($("diff-a").value)}&b=${enc($("diff-b").value)}`);
    if (!r.diff) pre.textContent = "The two versions are the same.";
    for (const line of r.diff.split("\n")) {
      const cls = line.startsWith("+") && !line.startsWith("+++") ? "add" : line.startsWith("-") && !line.startsWith("---") ? "del" : "";
      pre.append(el("span", { class: cls }, line), "\n");
    }
  } catch (e) { pre.textContent = e.message; }
}

async function moveAlias(ev) {
  ev.preventDefault();
  const alias = $("alias-name").value.trim();
  const result = $("alias-result");
  result.classList.remove("error");
  try {
    const r = await api(`/api/prompts/${enc(current.name)}/aliases/${enc(alias)}`, { method: "POST", body: JSON.stringify({ ref: $("alias-version").value }) });
    const shownId = shown && shown.id;
    await openPrompt(current.name, shownId);
    result.textContent = r.moved ? `@${r.alias}: ${r.from ? label(r.from) : "(new)"} → ${label(r.to)}` : `@${r.alias} already pointed to ${label(r.to)}`;
  } catch (e) { result.textContent = e.message; result.classList.add("error"); }
}

$("render-form").addEventListener("submit", renderShown);
$("diff-form").addEventListener("submit", diffVersions);
$("alias-form").addEventListener("submit", moveAlias);
$("version").addEventListener("change", () => showVersion($("version").value).catch((e) => fail("prompt-error", e)));
const wanted = new URLSearchParams(location.search).get("name");
loadList()
  .then(() => (wanted ? openPrompt(wanted) : null))
  .catch((e) => fail("prompt-error", e));
