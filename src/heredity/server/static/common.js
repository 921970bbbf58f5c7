// Shared by the pages: JSON fetch with the lab's error shape, and the model picker.
async function api(path, options = {}) {
  const r = await fetch(path, { headers: { "Content-Type": "application/json" }, ...options });
  if (r.status === 204) return null;
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((body.error && body.error.message) || `${r.status} ${r.statusText}`);
  return body;
}

async function fillModels(select) {
  const saved = localStorage.getItem("heredity.model");
  // sentence encoders (kind "embedding") embed at /v1/embeddings; they do not chat or generate
  const data = (await api("/v1/models")).data.filter((m) => m.kind !== "embedding");
  select.innerHTML = "";
  for (const m of data) {
    const o = document.createElement("option");
    o.value = m.id;
    o.textContent = m.kind === "bundled" ? `${m.id} (bundled)` : `${m.name} · ${m.id}`;
    select.appendChild(o);
  }
  if (saved && data.some((m) => m.id === saved)) select.value = saved;
  select.addEventListener("change", () => localStorage.setItem("heredity.model", select.value));
  return data;
}

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}
