// Chat page: stream answers from /v1/chat/completions into a stored conversation; thumbs and better answers
// go to /api/conversations/ID/messages/IDX/feedback; "Export" turns all feedback into dataset artifacts.
const $ = (id) => document.getElementById(id);
let conv = null; // the open conversation as stored: {id, model, system_prompt, messages: [...]}
let busy = false;
const ICON = (d) => `<svg class="icon" viewBox="0 0 24 24" width="14" height="14" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="${d}"/></svg>`;
const THUMB_UP = ICON("M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3zM7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3");
const THUMB_DOWN = ICON("M10 15v4a3 3 0 0 0 3 3l4-9V2H5.72a2 2 0 0 0-2 1.7l-1.38 9a2 2 0 0 0 2 2.3zm7-13h2.67A2.31 2.31 0 0 1 22 4v7a2.31 2.31 0 0 1-2.33 2H17");

async function loadConversations() {
  const { data } = await api("/api/conversations");
  const ul = $("conversations");
  ul.innerHTML = "";
  for (const c of data) {
    const li = el("li", { class: conv && conv.id === c.id ? "on" : "", "data-id": c.id, title: c.title },
      c.title || "(untitled)", el("small", {}, `${c.messages} messages · ${c.updated_at.slice(0, 16).replace("T", " ")}`));
    li.addEventListener("click", () => openConversation(c.id));
    ul.appendChild(li);
  }
}

async function openConversation(id) {
  conv = await api(`/api/conversations/${id}`);
  if (conv.system_prompt !== null) $("system").value = conv.system_prompt;
  render();
  loadConversations();
}

function newChat() {
  conv = null;
  render();
  loadConversations();
  $("prompt").focus();
}

function render() {
  const box = $("messages");
  box.innerHTML = "";
  if (!conv) {
    box.appendChild(el("p", { class: "note" }, "A new conversation. Answers are saved; rate them to build training data."));
    return;
  }
  if (conv.system_prompt) box.appendChild(msgView({ role: "system", content: conv.system_prompt }));
  for (const m of conv.messages) box.appendChild(msgView(m));
  box.scrollTop = box.scrollHeight;
}

function msgView(m) {
  const text = el("div", { class: "text" }, m.content);
  const view = el("div", { class: `msg ${m.role}` }, el("div", { class: "who" }, m.role === "assistant" && m.model ? `assistant · ${m.model}` : m.role), text);
  if (m.role === "assistant" && m.idx !== undefined) view.appendChild(feedbackBar(m));
  return view;
}

function feedbackBar(m) {
  const up = el("button", { class: `ghost thumb-up ${m.rating === 1 ? "on" : ""}`, title: "good answer" });
  up.innerHTML = THUMB_UP + " good";
  const down = el("button", { class: `ghost thumb-down ${m.rating === -1 ? "on" : ""}`, title: "bad answer" });
  down.innerHTML = THUMB_DOWN + " bad";
  const write = el("button", { class: "ghost write-better" }, "✎ write a better answer");
  const status = el("span", { class: "note status" });
  const bar = el("div", { class: "actions", "data-idx": m.idx }, up, down, write, status);
  const wrap = el("div", {}, bar);
  if (m.better) wrap.appendChild(el("div", { class: "better-shown" }, m.better));
  const rate = async (r) => {
    const value = m.rating === r ? 0 : r;
    try {
      const got = await api(`/api/conversations/${conv.id}/messages/${m.idx}/feedback`, { method: "PUT", body: JSON.stringify({ rating: value }) });
      m.rating = got.rating;
      up.classList.toggle("on", m.rating === 1);
      down.classList.toggle("on", m.rating === -1);
      status.textContent = m.rating ? "saved" : "cleared";
    } catch (e) { status.textContent = e.message; status.classList.add("error"); }
  };
  up.addEventListener("click", () => rate(1));
  down.addEventListener("click", () => rate(-1));
  write.addEventListener("click", () => {
    if (wrap.querySelector(".better")) return;
    const ta = el("textarea", { rows: 3 });
    ta.value = m.better || m.content;
    const save = el("button", {}, "Save");
    const form = el("div", { class: "better" }, ta, save);
    save.addEventListener("click", async () => {
      try {
        const got = await api(`/api/conversations/${conv.id}/messages/${m.idx}/feedback`, { method: "PUT", body: JSON.stringify({ better: ta.value }) });
        m.better = got.better;
        form.remove();
        wrap.querySelector(".better-shown")?.remove();
        if (m.better) wrap.appendChild(el("div", { class: "better-shown" }, m.better));
        status.textContent = "better answer saved";
      } catch (e) { status.textContent = e.message; status.classList.add("error"); }
    });
    wrap.appendChild(form);
    ta.focus();
  });
  return wrap;
}

async function send(ev) {
  ev.preventDefault();
  const content = $("prompt").value.trim();
  if (!content || busy) return;
  busy = true;
  $("send").disabled = true;
  const model = $("model").value;
  try {
    if (!conv) conv = await api("/api/conversations", { method: "POST", body: JSON.stringify({ model, system_prompt: $("system").value.trim() || null }) });
    const history = conv.messages.map((m) => ({ role: m.role, content: m.content }));
    const messages = [...(conv.system_prompt ? [{ role: "system", content: conv.system_prompt }] : []), ...history, { role: "user", content }];
    $("prompt").value = "";
    const box = $("messages");
    if (!conv.messages.length) render();
    box.appendChild(msgView({ role: "user", content }));
    const answer = msgView({ role: "assistant", content: "", model });
    answer.classList.add("streaming");
    box.appendChild(answer);
    const textDiv = answer.querySelector(".text");
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, messages, stream: true, conversation_id: conv.id,
        temperature: Number($("temperature").value), max_tokens: Number($("max-tokens").value) }),
    });
    if (!r.ok) { const b = await r.json().catch(() => ({})); throw new Error((b.error && b.error.message) || r.statusText); }
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const line = buf.slice(0, cut).trim();
        buf = buf.slice(cut + 2);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const obj = JSON.parse(data);
        if (obj.error) throw new Error(obj.error.message);
        for (const ch of obj.choices || []) if (ch.delta && ch.delta.content) textDiv.textContent += ch.delta.content;
        box.scrollTop = box.scrollHeight;
      }
    }
    answer.classList.remove("streaming");
    await openConversation(conv.id);
  } catch (e) {
    $("messages").appendChild(el("p", { class: "error" }, e.message));
  } finally {
    busy = false;
    $("send").disabled = false;
  }
}

async function exportFeedback() {
  const out = $("export-result");
  out.textContent = "exporting…";
  out.classList.remove("error");
  try {
    const r = await api("/api/export", { method: "POST", body: JSON.stringify({}) });
    out.innerHTML = "";
    out.append(`${r.counts.sft} SFT rows, ${r.counts.preferences} preference pairs from ${r.counts.conversations} conversations: `);
    for (const k of ["sft", "preferences", "conversations"]) out.append(el("a", { href: `/artifacts/${r[k]}` }, k), " ");
  } catch (e) { out.textContent = e.message; out.classList.add("error"); }
}

// The system prompt from a stored prompt template: text templates are listed (the latest version and each
// alias); a template's variables get a small form; the rendered text fills the system prompt, still editable.
async function fillTemplates() {
  const sel = $("system-template");
  const { data } = await api("/api/prompts");
  for (const p of data.filter((x) => x.format === "text")) {
    const vars = p.variables.length ? ` (${p.variables.join(", ")})` : "";
    sel.appendChild(el("option", { value: p.name }, p.name + vars));
    for (const a of Object.keys(p.aliases)) sel.appendChild(el("option", { value: `${p.name}@${a}` }, `${p.name}@${a}${vars}`));
  }
}

async function useTemplate(ref, variables) {
  const r = await api("/api/prompts/render", { method: "POST", body: JSON.stringify({ ref, variables }) });
  $("system").value = r.text;
}

async function chooseTemplate() {
  const ref = $("system-template").value;
  const box = $("template-vars");
  box.innerHTML = "";
  box.hidden = true;
  if (!ref) return;
  const status = el("span", { class: "note status" });
  try {
    const vars = (await api(`/api/prompts/${encodeURIComponent(ref)}/template`)).template.variables;
    const names = Object.keys(vars).sort();
    const needed = names.filter((n) => vars[n].required && vars[n].default === null);
    if (!needed.length) await useTemplate(ref, {}); // nothing to ask: rendered with its defaults at once
    if (!names.length) return;
    for (const n of names) {
      const v = vars[n];
      const dflt = v.default === null ? "" : JSON.stringify(v.default);
      const input = el("input", { type: "text", "data-var": n, placeholder: dflt ? `default: ${dflt}` : v.type });
      box.appendChild(el("label", {}, `${n} (${v.type}${needed.includes(n) ? "" : ", optional"})`, input));
    }
    const use = el("button", { type: "button", id: "use-template" }, "Use template");
    use.addEventListener("click", async () => {
      const given = {};
      for (const input of box.querySelectorAll("[data-var]")) if (input.value !== "") given[input.dataset.var] = input.value;
      status.classList.remove("error");
      try { await useTemplate(ref, given); status.textContent = "system prompt filled"; } catch (e) { status.textContent = e.message; status.classList.add("error"); }
    });
    box.append(use, status);
    box.hidden = false;
  } catch (e) {
    status.textContent = e.message;
    status.classList.add("error");
    box.append(status);
    box.hidden = false;
  }
}

$("system-template").addEventListener("change", chooseTemplate);
$("send-form").addEventListener("submit", send);
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) send(e); });
$("new-chat").addEventListener("click", newChat);
$("export").addEventListener("click", exportFeedback);
fillModels($("model")).then(() => { render(); loadConversations(); }).catch((e) => $("messages").appendChild(el("p", { class: "error" }, e.message)));
fillTemplates().catch((e) => $("messages").appendChild(el("p", { class: "error" }, e.message)));
