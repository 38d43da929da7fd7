// The page of `clipblip serve`: search the collection, then look at one photo (caption, question, labels).
// Everything from the server is shown with textContent, never as HTML; images arrive as blobs fetched with
// the API key in a header, so no key ever sits in a URL.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "clipblip-api-key";
const state = {
  key: sessionStorage.getItem(KEY_STORE),
  models: [],      // GET /v1/models
  database: null,  // GET /v1/database, or null without --db
  photo: null,     // the photo being looked at: {blob, name, id (a database photo's id, or null), at (a video's frame)}
  urls: [],        // object URLs of the shown thumbnails, revoked on the next search
};

class PageError extends Error {}

// --- talking to the server ----------------------------------------------------------------------------

async function api(path, body) {
  const headers = state.key ? { Authorization: "Bearer " + state.key } : {};
  const init = { headers };
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    askForKey(state.key ? "that API key was refused" : "this server asks for an API key");
    throw new PageError("an API key is needed");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message || message; } catch (_) { /* not our JSON */ }
    throw new PageError(message);
  }
  return response;
}

const postJSON = async (path, body) => (await api(path, body)).json();
const getJSON = async (path) => (await api(path)).json();

function asDataURI(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new PageError("cannot read that file"));
    reader.readAsDataURL(blob);
  });
}

// --- messages -------------------------------------------------------------------------------------------

function say(text) { $("status").textContent = text; }

function warn(text, kind = "warning") {
  const item = document.createElement("li");
  item.className = kind;
  item.textContent = text;
  $("warnings").append(item);
}

function failed(where) {
  return (error) => {
    if (error instanceof PageError && error.message === "an API key is needed") return;
    say(`${where}: ${error.message}`);
  };
}

function askForKey(why) {
  say(why);
  $("key-form").hidden = false;
  $("key").focus();
}

// --- start ------------------------------------------------------------------------------------------------

async function start() {
  $("warnings").replaceChildren();
  state.models = (await getJSON("/v1/models")).data;
  $("key-form").hidden = true;
  try {
    state.database = await getJSON("/v1/database");
  } catch (error) {
    state.database = null;
  }
  const db = state.database;
  const random = state.models.filter((m) => m.random_weights).map((m) => m.id);
  if (db && db.random_weights && !random.includes(db.model)) random.push(`${db.model} (the search database's model)`);
  if (random.length) {
    warn(`RANDOM weights: ${random.join(", ")}. What ${random.length > 1 ? "these models say" : "this model says"} ` +
         "shows the plumbing, not meaning.");
  }
  fillModels("caption-model", (m) => m.ops.includes("caption"));
  fillModels("vqa-model", (m) => m.ops.includes("vqa"));
  // zero-shot labels need both towers: a folder exported with one tower alone embeds one modality only
  fillModels("clip-model", (m) => m.scoring !== null && m.ops.includes("embed_image") && m.ops.includes("embed_text"));
  $("search").hidden = !db;
  if (db) {
    const byText = db.queries.includes("text");  // the database's model may hold its image tower alone
    $("query").disabled = !byText;
    if (!byText) $("query").placeholder = "no text tower for this database: search by a photo";
    $("search-info").textContent = `${db.count} photos indexed by ${db.model} (${db.family})`;
    const rerankers = db.rerank_models;
    $("rerank-label").hidden = rerankers.length === 0 && !db.rerank_default;
    fillSelect($("rerank-model"), rerankers);
    $("rerank-model").hidden = rerankers.length < 2;
  }
  say(`serving ${state.models.map((m) => m.id).join(", ")}` + (db ? ` · search ${db.count} photos` : ""));
  fromURL();
}

function fillSelect(select, names) {
  select.replaceChildren(...names.map((name) => new Option(name, name)));
}

function fillModels(selectId, does) {
  const names = state.models.filter(does).map((m) => m.id);
  const select = $(selectId);
  fillSelect(select, names);
  select.hidden = names.length < 2;
  select.closest("form").hidden = names.length === 0;
}

// --- search -------------------------------------------------------------------------------------------------

function fromURL() {
  const params = new URLSearchParams(location.search);
  if (params.has("k")) $("k").value = params.get("k");
  $("rerank").checked = params.get("rerank") === "1";
  $("query").value = params.get("q") || "";
  if (!state.database) return;
  if (params.get("q")) search({ text: params.get("q") }, false);
  else if (params.get("like")) search(likeQuery(params.get("like"), params.get("at")), false);
}

function likeQuery(id, at) {
  return at === null || at === undefined ? { like: id } : { like: id, like_at: Number(at) };
}

// mm:ss (h:mm:ss from an hour), whole seconds
function clock(seconds) {
  const whole = Math.max(0, Math.floor(seconds));
  const h = Math.floor(whole / 3600), m = Math.floor((whole % 3600) / 60), s = whole % 60;
  const mm = String(m).padStart(2, "0"), ss = String(s).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

function toURL(query) {
  const params = new URLSearchParams();
  if (query.text !== undefined) params.set("q", query.text);
  if (query.like !== undefined) params.set("like", query.like);
  if (query.like_at !== undefined) params.set("at", String(query.like_at));
  params.set("k", $("k").value);
  if (query.text !== undefined && $("rerank").checked) params.set("rerank", "1");
  history.pushState(null, "", "?" + params.toString());
}

async function search(query, remember = true) {
  const k = Math.max(1, parseInt($("k").value, 10) || 12);
  const body = { ...query, k };
  if (query.text !== undefined && $("rerank").checked) {
    body.rerank = true;
    if ($("rerank-model").value) body.rerank_model = $("rerank-model").value;
  }
  if (remember && query.image === undefined) toURL(query);
  if (query.image !== undefined) history.pushState(null, "", `?k=${k}`);
  $("search-info").textContent = query.image !== undefined
    ? "searching by the chosen image (an uploaded image is not kept in the URL)…" : "searching…";
  const answer = await postJSON("/v1/search", body);
  showHits(answer.hits, body.rerank);
  const what = query.text !== undefined ? `“${query.text}”` : query.like_at !== undefined
    ? "a moment of a video of the collection" : query.like !== undefined ? "a photo of the collection" : "the chosen image";
  const kinds = answer.hits.some((hit) => hit.start !== undefined) ? "photos and moments" : "photos";
  $("search-info").textContent = `${answer.hits.length} ${kinds} nearest to ${what}` +
    (body.rerank ? ", re-ranked by BLIP's image–text matching" : "");
}

function showHits(hits, reranked) {
  for (const url of state.urls) URL.revokeObjectURL(url);
  state.urls = [];
  const figures = hits.map((hit) => {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.alt = hit.name;
    img.title = "more like this";
    img.dataset.id = hit.id;
    if (hit.start !== undefined) img.dataset.at = String(hit.frame);
    img.addEventListener("click", () => search(likeQuery(hit.id, hit.start === undefined ? null : hit.frame))
      .catch(failed("search")));
    const caption = document.createElement("figcaption");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = reranked ? ` ITM ${hit.score.toFixed(3)} · cos ${hit.itc.toFixed(3)}` : ` ${hit.score.toFixed(3)}`;
    const look = document.createElement("button");
    look.type = "button";
    look.textContent = "look";
    look.addEventListener("click", () => lookAtStored(hit).catch(failed("look")));
    const where = hit.start !== undefined ? ` @ ${clock(hit.start)}–${clock(hit.end)}` : "";
    caption.append(hit.name + where, score, look);
    if (hit.start !== undefined) figure.classList.add("video");
    figure.append(img, caption);
    thumbnails.observe(img);
    return figure;
  });
  $("results").replaceChildren(...figures);
}

// Thumbnails load when they scroll into view, fetched with the key and shown as blobs.
const thumbnails = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    const img = entry.target;
    thumbnails.unobserve(img);
    const at = img.dataset.at !== undefined ? `?at=${encodeURIComponent(img.dataset.at)}` : "";
    api(`/v1/photos/${img.dataset.id}/thumbnail${at}`)
      .then((response) => response.blob())
      .then((blob) => {
        const url = URL.createObjectURL(blob);
        state.urls.push(url);
        img.src = url;
      })
      .catch(failed(`thumbnail of ${img.alt}`));
  }
}, { rootMargin: "200px" });

// --- one photo ------------------------------------------------------------------------------------------------

async function lookAtStored(hit) {
  say(`fetching ${hit.name}…`);
  if (hit.start !== undefined) {  // a moment of a video: its frame to work on, and the video from its start
    const at = encodeURIComponent(String(hit.frame));
    const blob = await (await api(`/v1/photos/${hit.id}/thumbnail?size=512&at=${at}`)).blob();
    const link = await (await api(`/v1/videos/${hit.id}/link`)).json();  // a signed URL: <video> sends no key
    lookAt({ blob, name: `${hit.name} @ ${clock(hit.frame)}`, id: hit.id, at: hit.frame });
    play(link.url, hit.start);
    say(`playing ${hit.name} from ${clock(hit.start)}`);
    return;
  }
  const blob = await (await api(`/v1/photos/${hit.id}`)).blob();  // the original, asked for
  lookAt({ blob, name: hit.name, id: hit.id });
  say(`looking at ${hit.name}`);
}

function play(url, start) {
  const video = $("look-video");
  video.hidden = false;
  video.dataset.start = String(start);
  video.src = url;  // the server's own path, signed; only ever a same-origin URL the server gave
  video.addEventListener("loadedmetadata", () => { video.currentTime = start; video.play().catch(() => {}); },
    { once: true });
}

function lookAt(photo) {
  if (state.photo) URL.revokeObjectURL($("look-image").src);
  const video = $("look-video");
  video.pause();
  video.removeAttribute("src");
  video.hidden = true;
  state.photo = photo;
  $("look").hidden = false;
  $("look-name").textContent = photo.name;
  $("look-image").src = URL.createObjectURL(photo.blob);
  $("look-image").alt = photo.name;
  for (const id of ["caption", "answer"]) $(id).textContent = "";
  $("probabilities").replaceChildren();
  $("scoring").textContent = "";
  $("look-similar").hidden = !state.database || !(photo.id || state.database.queries.includes("image"));
  if (!$("caption-form").hidden) caption().catch(failed("caption"));
  $("look").scrollIntoView({ block: "nearest" });
}

async function caption() {
  $("caption").textContent = "…";
  const answer = await postJSON("/v1/caption", {
    model: $("caption-model").value, images: [await asDataURI(state.photo.blob)],
    num_beams: parseInt($("beams").value, 10) || 1, max_new_tokens: parseInt($("max-tokens").value, 10) || 20,
  });
  $("caption").textContent = answer.results[0].text;
}

async function ask() {
  $("answer").textContent = "…";
  const answer = await postJSON("/v1/vqa", {
    model: $("vqa-model").value, images: [await asDataURI(state.photo.blob)], question: $("question").value,
  });
  $("answer").textContent = answer.results[0].text;
}

async function classify() {
  const labels = $("labels").value.split(",").map((label) => label.trim()).filter(Boolean);
  if (labels.length === 0) throw new PageError("type one label or more, separated by commas");
  const answer = await postJSON("/v1/classify", { model: $("clip-model").value, images: [await asDataURI(state.photo.blob)], labels });
  $("probabilities").replaceChildren(...answer.results[0].map(({ label, probability }) => {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = label;
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = probability;
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(100 * probability).toFixed(1)}%`;
    item.append(name, bar, value);
    return item;
  }));
  $("scoring").textContent = SCORING[answer.scoring] || answer.scoring;
}

const SCORING = {
  softmax: "Softmax over these labels: they share 100%.",
  sigmoid: "Each label scored on its own (sigmoid): they need not add up to 100%.",
};

function chosen(file) {
  if (!file || !file.type.startsWith("image/")) {
    say(file ? `${file.name}: not an image` : "no image in what was given");
    return;
  }
  const name = file.name || "pasted image";
  lookAt({ blob: file, name, id: null });
  if (state.database && state.database.queries.includes("image")) {
    asDataURI(file).then((image) => search({ image })).catch(failed("search"));
  }
}

// --- wiring ------------------------------------------------------------------------------------------------------

function on(id, event, handler) { $(id).addEventListener(event, handler); }

function submitted(id, run, where) {
  on(id, "submit", (event) => {
    event.preventDefault();
    run().catch(failed(where));
  });
}

document.addEventListener("DOMContentLoaded", () => {
  submitted("search-form", async () => {
    const text = $("query").value.trim();
    if (text) await search({ text });
  }, "search");
  submitted("caption-form", caption, "caption");
  submitted("ask-form", ask, "answer");
  submitted("labels-form", classify, "labels");
  submitted("key-form", async () => {
    state.key = $("key").value;
    sessionStorage.setItem(KEY_STORE, state.key);
    await start();
  }, "start");
  on("file", "change", () => chosen($("file").files[0]));
  on("search-like", "click", () => {
    const photo = state.photo;
    const query = photo.id ? Promise.resolve(likeQuery(photo.id, photo.at)) : asDataURI(photo.blob).then((image) => ({ image }));
    query.then((q) => search(q)).catch(failed("search"));
  });
  const drop = $("drop");
  document.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  document.addEventListener("dragleave", () => drop.classList.remove("over"));
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    chosen(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (file) chosen(file);
  });
  window.addEventListener("popstate", () => fromURL());
  start().catch(failed("start"));
});
