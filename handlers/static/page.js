// The web page's behaviour: plain DOM, no build step, nothing inline (the page's
// Content-Security-Policy allows none). It speaks the public API only, as curl would.
"use strict";

const $ = (id) => document.getElementById(id);
const STORED = "mp3-converter-user"; // {id, username, token} in localStorage, once a sign-in succeeded
const PAGE_SIZE = 50;
// The service's own words (converter/wav.py), for a file the page refuses before sending it.
const NOT_A_WAV = "The file is not a WAV: expected a RIFF or RF64 file of type WAVE.";

let user = null; // the signed-in user, or null
let nextCursor = null; // the listing's next page, or null on the last

// ---- talking to the service -------------------------------------------------------------------

function basic(id, token) {
  // UTF-8 then base64 (the service's WWW-Authenticate says charset="UTF-8"); btoa alone takes Latin-1 only.
  const bytes = new TextEncoder().encode(`${id}:${token}`);
  return "Basic " + btoa(String.fromCharCode(...bytes));
}

// credentials "omit": the Authorization header is still sent, but a 401 then never makes the
// browser pop up its own Basic-auth dialog over the page's message.
async function call(path, options = {}, as = user) {
  const headers = {...(options.headers || {})};
  if (as) headers.Authorization = basic(as.id, as.token);
  return fetch(path, {...options, headers, credentials: "omit"});
}

// Every error the service answers is {"code", "status", "message", "data"}: show its message,
// and for a 503 when to try again (its Retry-After).
function explain(status, statusText, body, retryAfter) {
  let message = statusText || `HTTP ${status}`;
  try { message = JSON.parse(body).message || message; } catch { /* not JSON: keep the status text */ }
  if (status === 503 && retryAfter) message += ` Try again in ${retryAfter} s.`;
  return message;
}

async function messageOf(response) {
  return explain(response.status, response.statusText, await response.text(), response.headers.get("Retry-After"));
}

// ---- signing in and out -----------------------------------------------------------------------

function remembered() {
  try {
    const stored = JSON.parse(localStorage.getItem(STORED));
    return stored && stored.id && stored.token ? stored : null;
  } catch { return null; }
}

// The pair is checked with GET /users/me before anything is kept in the browser.
// Answers null when signed in, else {status, message}.
async function signIn(candidate) {
  const response = await call("/users/me", {}, candidate);
  if (!response.ok) return {status: response.status, message: await messageOf(response)};
  const {data} = await response.json();
  adopt({id: data.id, username: data.username, token: candidate.token});
  showStorage(data);
  return null;
}

function adopt(account, {fresh = false} = {}) {
  user = account;
  localStorage.setItem(STORED, JSON.stringify(user));
  $("token").textContent = user.token;
  $("token-new").hidden = !fresh;
  setTokenShown(fresh);
  render();
  loadRecords();
  showUnfinished();
}

function signOut() {
  const leaving = user || remembered();
  user = null;
  listing += 1; // a page still on its way is not shown to whoever signs in next
  nextCursor = null;
  $("more").hidden = true;
  localStorage.removeItem(STORED);
  // Nor may this browser go on with their unfinished uploads (the service expires them).
  if (leaving) storedUploadKeys(leaving).forEach((key) => localStorage.removeItem(key));
  $("token").textContent = "";
  setTokenShown(false);
  $("records").replaceChildren();
  $("uploads").replaceChildren();
  unfinishedAsked += 1;
  $("unfinished").hidden = true;
  render();
}

function render() {
  $("signed-out").hidden = !!user;
  $("signed-in").hidden = !user;
  $("convert").hidden = !user;
  $("library").hidden = !user;
  if (user) {
    $("who").textContent = user.username;
    $("who-id").textContent = user.id;
  }
}

function setTokenShown(shown) {
  $("token-box").hidden = !shown;
  $("show-token").setAttribute("aria-expanded", String(shown));
  $("show-token").textContent = shown ? "Hide token" : "Show token";
  $("copied").textContent = "";
}

$("sign-in").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("account-error").textContent = "";
  const problem = await signIn({id: $("sign-in-id").value.trim(), token: $("sign-in-token").value.trim()});
  if (problem) {
    $("account-error").textContent = problem.message;
    $("sign-in-token").value = ""; // as a password field is after a failed sign-in, ready to type again
    return;
  }
  $("sign-in").reset();
});

$("create-user").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("account-error").textContent = "";
  const response = await call("/users", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({username: $("username").value}),
  }, null);
  if (!response.ok) {
    $("account-error").textContent = await messageOf(response);
    return;
  }
  // The service shows this token once: keep it at once, with no further round trip to lose it on.
  const {data} = await response.json();
  $("create-user").reset();
  adopt({id: data.id, username: data.username, token: data.token}, {fresh: true});
  refreshStorage();
});

$("forget").addEventListener("click", signOut);
$("show-token").addEventListener("click", () => setTokenShown($("token-box").hidden));
$("copy-token").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText($("token").textContent);
    $("copied").textContent = "Copied.";
  } catch {
    // Clipboard access needs a secure context (https or localhost): select it for a manual copy.
    getSelection().selectAllChildren($("token"));
    $("copied").textContent = "Selected: press Ctrl+C (⌘C) to copy.";
  }
});

// ---- storage use ------------------------------------------------------------------------------

function size(bytes) {
  const units = ["bytes", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return unit === 0 ? `${value} bytes` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

function showStorage({records, bytes, quota_bytes: quota, uploading_bytes: uploading}) {
  const unfinished = uploading ? ` (and ${size(uploading)} in unfinished uploads)` : "";
  const counted = `${records} recording${records === 1 ? "" : "s"}, ${size(bytes)}${unfinished}`;
  $("storage-text").textContent = quota ? `${counted} of ${size(quota)} allowed.` : `${counted}; no quota.`;
  $("quota-meter").hidden = !quota;
  if (quota) {
    $("quota-meter").max = quota;
    $("quota-meter").value = Math.min(bytes + uploading, quota);
    $("quota-meter").high = quota * 0.9;
  }
}

async function refreshStorage() {
  const response = await call("/users/me");
  if (response.ok) showStorage((await response.json()).data);
}

// ---- the options the API takes, read from its own description -----------------------------------

async function loadOptions() {
  const response = await fetch("/openapi.json");
  if (!response.ok) return;
  const document_ = await response.json();
  const form = document_.paths["/record"].post.requestBody.content["multipart/form-data"].schema.properties;
  $("encoding").options[0].textContent = `Default: ${form.bitrate.default} kbit/s`;
  for (const kbps of form.bitrate.enum) {
    $("bitrates").append(new Option(`${kbps} kbit/s`, `bitrate=${kbps}`));
  }
  for (let quality = form.quality.minimum; quality <= form.quality.maximum; quality += 1) {
    const note = quality === form.quality.minimum ? " (best, largest)" : quality === form.quality.maximum ? " (smallest)" : "";
    $("qualities").append(new Option(`V${quality}${note}`, `quality=${quality}`));
  }
  for (const rate of form.sample_rate.enum) $("sample-rate").append(new Option(`${rate} Hz`, String(rate)));
  for (const name of ["title", "artist", "album"]) $(name).maxLength = form[name].maxLength;
}

// The fields exactly as the API takes them, before the file (the service reads them first).
function chosenOptions() {
  const fields = [];
  const [name, value] = $("encoding").value.split("=");
  if (value) fields.push([name, value]);
  if ($("sample-rate").value) fields.push(["sample_rate", $("sample-rate").value]);
  if ($("channels").value) fields.push(["channels", $("channels").value]);
  for (const tag of ["title", "artist", "album"]) {
    const text = $(tag).value.trim();
    if (text) fields.push([tag, text]);
  }
  return fields;
}

// ---- uploads, each with its own outcome ---------------------------------------------------------
// Every file goes up with tus (tus-js-client, /vendor/): POST /uploads creates the upload, PATCHes
// send the WAV a chunk at a time, and each answer's Upload-Offset is what the service has committed:
// all the PATCH brought. A failed request is tried again from there; a reload resumes too, when the
// same file is chosen again: tus-js-client keeps the upload's address in localStorage under the
// fingerprint below, until the upload is finished.

// 8 MiB a PATCH: every PATCH answer moves the bar on, and no proxy's cap on a request's body comes
// near it.
const CHUNK_BYTES = 8 * 1024 * 1024;
// A failed request is tried again after these (ms); the count starts over whenever the offset moves.
const RETRY_DELAYS = [0, 1000, 3000, 5000, 10000, 20000, 30000, 60000];
// What the service answers when it refuses the WAV or the request: nothing to go on with.
const REFUSED = new Set([400, 413, 415, 422]);
const uploading = new Set(); // the fingerprints of the uploads running in this page

// Whose file, which file and with which options: another user, or other options, is another upload.
function fingerprintOf(file, as, metadata) {
  return [`mp3-converter/${as.id}`, file.name, file.size, file.lastModified, JSON.stringify(metadata)].join("/");
}

// tus-js-client's keys for this user's unfinished uploads ("tus::" + fingerprint + "::" + a number).
function storedUploadKeys(as) {
  const prefix = `tus::mp3-converter/${as.id}/`;
  return Object.keys(localStorage).filter((key) => key.startsWith(prefix));
}

// The uploads this browser could go on with but is not sending (a reload, a closed tab, a lost
// connection): how far each is, asked of the service with a HEAD as a resume would; those it no
// longer has (expired, ended) are forgotten. Their files must be chosen again: a page cannot reopen them.
let unfinishedAsked = 0;
async function showUnfinished() {
  const as = user;
  if (!as) return;
  const mine = ++unfinishedAsked; // a later look outdates this one, so an older answer never wins
  const found = [];
  for (const key of storedUploadKeys(as)) {
    if (uploading.has(key.slice("tus::".length, key.lastIndexOf("::")))) continue;
    let stored;
    let response;
    try {
      stored = JSON.parse(localStorage.getItem(key));
      response = await call(stored.uploadUrl, {method: "HEAD", headers: {"Tus-Resumable": "1.0.0"}}, as);
    } catch { continue; } // not readable, or offline: said another time
    if (response.status === 404 || response.status === 410) localStorage.removeItem(key);
    if (!response.ok) continue;
    const saved = Math.floor((Number(response.headers.get("Upload-Offset")) / stored.size) * 100);
    found.push(`${stored.metadata.filename} (${saved} % saved)`);
  }
  if (mine !== unfinishedAsked || user !== as) return;
  $("unfinished").hidden = found.length === 0;
  $("unfinished").textContent = found.length === 0 ? ""
    : `Not finished: ${found.join(", ")}. Choose the same file again to go on from where it stopped.`;
}

const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  [...event.dataTransfer.files].forEach(upload);
});
$("files").addEventListener("change", () => { [...$("files").files].forEach(upload); $("files").value = ""; });

function uploadRow(file) {
  const row = document.createElement("li");
  row.className = "upload";
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = file.name;
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = 0;
  bar.setAttribute("aria-label", `Upload of ${file.name}`);
  const outcome = document.createElement("span");
  outcome.className = "outcome";
  outcome.textContent = "0 %";
  const note = document.createElement("span");
  note.className = "note muted";
  row.append(name, bar, outcome, note);
  $("uploads").prepend(row);
  return {
    // The bar shows what the service has kept; what is on its way is said beside it.
    progress(kept, sent) {
      bar.value = kept;
      outcome.textContent = sent > kept ? `${kept} % saved, ${sent} % sent` : `${kept} %`;
    },
    resumed(kept) { note.textContent = `Resumed at ${kept} %.`; },
    waiting(kept) { outcome.textContent = `${kept} % saved. Offline: it goes on when the network is back.`; },
    done(record) {
      row.dataset.done = "yes";
      bar.value = 100;
      outcome.textContent = `Done: ${record.filename}`;
    },
    failed(message) {
      row.dataset.done = "no";
      bar.remove();
      outcome.className = "outcome error";
      outcome.textContent = message;
    },
  };
}

// RIFF or RF64, then WAVE: the same first check the service makes, so a dropped photo is
// refused here without sending it.
async function looksLikeWav(file) {
  const head = new TextDecoder("latin1").decode(await file.slice(0, 12).arrayBuffer());
  return (head.startsWith("RIFF") || head.startsWith("RF64")) && head.slice(8, 12) === "WAVE";
}

async function upload(file) {
  const row = uploadRow(file);
  if (!(await looksLikeWav(file))) {
    row.failed(NOT_A_WAV);
    return;
  }
  const as = user;
  const metadata = {filename: file.name, ...Object.fromEntries(chosenOptions())};
  const fingerprint = fingerprintOf(file, as, metadata);
  let kept = 0; // the service's offset: the bytes it holds, converted or as they were sent
  let sent = 0;
  const percent = (bytes) => Math.floor((bytes / file.size) * 100);
  const show = () => row.progress(percent(kept), percent(Math.max(sent, kept)));

  const transfer = new tus.Upload(file, {
    endpoint: "/uploads",
    headers: {Authorization: basic(as.id, as.token)},
    metadata,
    fingerprint: () => Promise.resolve(fingerprint),
    chunkSize: CHUNK_BYTES,
    retryDelays: RETRY_DELAYS,
    // tus-js-client's own rule (a network error, a 5xx, 409, 423; never while offline), and 408
    // too: the service giving up on a slow link is a slow link, not a refusal.
    onShouldRetry(error, attempt, options) {
      const status = error.originalResponse ? error.originalResponse.getStatus() : 0;
      return (status === 408 && navigator.onLine) || tus.defaultOptions.onShouldRetry(error, attempt, options);
    },
    storeFingerprintForResuming: true,
    removeFingerprintOnSuccess: true,
    onProgress(bytesSent) {
      sent = bytesSent;
      show();
    },
    // Every answer with an Upload-Offset, HEAD's included: onChunkComplete reports the same
    // offsets but only after PATCHes, missing the HEAD each resume starts with.
    onAfterResponse(request, response) {
      const offset = response.getHeader("Upload-Offset");
      if (response.getStatus() >= 300 || offset === null) return;
      kept = Number(offset);
      sent = kept;
      show();
      if (request.getMethod() === "HEAD") row.resumed(percent(kept));
    },
    onSuccess() {
      settle();
      finished(transfer.url, as, row);
    },
    onError(error) {
      const response = error.originalResponse;
      if (!response && !navigator.onLine) {
        waitForNetwork();
        return;
      }
      settle();
      if (!response) {
        row.failed("The connection to the service was lost. Choose the file again to go on from where it stopped.");
        return;
      }
      const xhr = response.getUnderlyingObject();
      row.failed(explain(response.getStatus(), xhr.statusText, response.getBody(), response.getHeader("Retry-After")));
      // Refused, not interrupted: it is ended at the service too rather than counting against the
      // user's quota and open uploads until it expires. Anything else can go on later from here.
      if (REFUSED.has(response.getStatus())) transfer.abort(true).catch(() => {});
    },
  });

  // Offline, a request may hang on a dead connection rather than fail: stop it, and start again
  // (from the service's offset, a HEAD away) once the browser is back online.
  let waiting = false;
  function waitForNetwork() {
    if (waiting) return;
    waiting = true;
    transfer.abort();
    row.waiting(percent(kept));
    const back = () => {
      if (!navigator.onLine) return;
      window.removeEventListener("online", back);
      waiting = false;
      transfer.start();
    };
    window.addEventListener("online", back);
    back(); // listening first, then looking: a return before the listener was added is not missed
  }
  window.addEventListener("offline", waitForNetwork);
  const firstHere = !uploading.has(fingerprint); // the same file twice at once: two uploads
  uploading.add(fingerprint);
  function settle() {
    window.removeEventListener("offline", waitForNetwork);
    if (firstHere) uploading.delete(fingerprint);
    showUnfinished();
  }

  if (firstHere) {
    const previous = await transfer.findPreviousUploads();
    previous.sort((a, b) => Date.parse(b.creationTime) - Date.parse(a.creationTime));
    if (previous.length > 0) transfer.resumeFromPreviousUpload(previous[0]);
  }
  transfer.start();
  showUnfinished(); // without this one, now going on
}

// A finished upload's record, as POST /record answers it (the last PATCH's Record-Location is
// only its MP3's link): GET on the upload's own address.
async function finished(address, as, row) {
  let response;
  try {
    response = await call(address, {}, as);
  } catch {
    row.failed("The upload is finished, but the service could not be asked for its record: reload the page.");
    return;
  }
  if (!response.ok) {
    row.failed(await messageOf(response));
    return;
  }
  row.done((await response.json()).data);
  if (user === as) {
    loadRecords();
    refreshStorage();
  }
}

// ---- the library, a page at a time ----------------------------------------------------------------

function minutes(value) {
  const whole = Math.round(value);
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}

function recordRow(record) {
  const row = document.createElement("tr");
  row.dataset.id = record.id;
  const name = document.createElement("td");
  name.textContent = record.filename;
  const length = document.createElement("td");
  length.textContent = minutes(record.duration);
  const listen = document.createElement("td");
  const audio = document.createElement("audio");
  audio.controls = true;
  audio.preload = "metadata";
  audio.src = record.url;
  audio.setAttribute("aria-label", `Play ${record.filename}`);
  if (record.waveform) listen.append(waveform(record, audio));
  listen.append(audio);
  const loudness = document.createElement("td");
  loudness.className = "loudness";
  loudness.append(...loudnessOf(record));
  const actions = document.createElement("td");
  const download = document.createElement("a");
  download.href = record.url;
  download.textContent = "Download";
  download.setAttribute("download", record.filename);
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "danger";
  remove.textContent = "Delete";
  remove.setAttribute("aria-label", `Delete ${record.filename}`);
  remove.addEventListener("click", async () => {
    const answer = await call(`/record?${new URLSearchParams({id: record.id, user: record.user})}`, {method: "DELETE"});
    if (!answer.ok && answer.status !== 404) {
      $("library-error").textContent = await messageOf(answer);
      return;
    }
    row.remove();
    $("empty").hidden = $("records").children.length > 0 || nextCursor !== null;
    refreshStorage();
  });
  actions.append(download, " ", remove);
  row.append(name, length, listen, loudness, actions);
  return row;
}

// ---- what a recording looks and sounds like -------------------------------------------------------

// The waveform (audiowaveform's .dat from /record/waveform: a 24-byte header, then a low and a high
// byte per pixel of samples_per_pixel samples), drawn to the canvas's width; the part played so far
// darker. A click seeks the player there; keyboard users have the player's own controls.
function waveform(record, audio) {
  const canvas = document.createElement("canvas");
  canvas.className = "waveform";
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `Waveform of ${record.filename}`);
  canvas.title = "Click to play from here";
  let peaks = null;
  const draw = () => {
    if (!peaks || !canvas.isConnected) return;
    const width = Math.max(1, Math.round(canvas.clientWidth * devicePixelRatio));
    const height = Math.max(1, Math.round(canvas.clientHeight * devicePixelRatio));
    if (canvas.width !== width || canvas.height !== height) Object.assign(canvas, {width, height});
    const context = canvas.getContext("2d");
    context.clearRect(0, 0, width, height);
    const pixels = peaks.length / 2;
    const played = audio.duration ? (audio.currentTime / audio.duration) * width : 0;
    for (let x = 0; x < width; x += 1) {
      let low = 127;
      let high = -128;
      const last = Math.max(Math.floor(((x + 1) * pixels) / width), Math.floor((x * pixels) / width) + 1);
      for (let pixel = Math.floor((x * pixels) / width); pixel < Math.min(last, pixels); pixel += 1) {
        low = Math.min(low, peaks[2 * pixel]);
        high = Math.max(high, peaks[2 * pixel + 1]);
      }
      if (high < low) continue;
      const top = ((127 - high) / 255) * height;
      const bottom = ((128 - low) / 255) * height;
      context.fillStyle = x < played ? "#2450a6" : "#9aa5b8";
      context.fillRect(x, top, 1, Math.max(1, bottom - top));
    }
  };
  canvas.addEventListener("click", (event) => {
    if (!audio.duration) return;
    const at = (event.clientX - canvas.getBoundingClientRect().left) / canvas.clientWidth;
    audio.currentTime = Math.min(Math.max(at, 0), 1) * audio.duration;
    audio.play().catch(() => {});
  });
  for (const change of ["timeupdate", "seeked", "loadedmetadata"]) audio.addEventListener(change, draw);
  new ResizeObserver(draw).observe(canvas);
  call(`${record.waveform}&format=dat`).then(async (response) => {
    if (!response.ok) return;
    peaks = new Int8Array(await response.arrayBuffer(), 24);
    canvas.dataset.pixels = String(peaks.length / 2);
    draw();
  }).catch(() => {});
  return canvas;
}

// Integrated loudness and true peak, with what they mean in plain words. No integrated loudness:
// silence, or too short to measure (under 0.4 s), or not measured at all (no waveform either).
function loudnessOf(record) {
  const loudness = record.loudness;
  if (!record.waveform) return ["Not measured"];
  if (loudness.integrated === null) return [loudness.true_peak === null ? "Silent" : "Too short to measure"];
  const level = document.createElement("span");
  level.textContent = `${signed(loudness.integrated, 1)} LUFS`;
  const hint = document.createElement("span");
  hint.className = "muted hint";
  const peak = loudness.true_peak;
  if (peak !== null && peak > 0) {
    hint.textContent = `clips at ${signed(peak, 1)} dBTP`;
    hint.className = "hint error";
  } else {
    hint.textContent = levelInWords(loudness.integrated);
  }
  return [level, " ", hint];
}

function levelInWords(lufs) {
  if (lufs > -13) return "loud: streaming services turn it down";
  if (lufs >= -15) return "streaming level";
  if (lufs >= -17.5) return "podcast level";
  if (lufs >= -22) return "between podcast and broadcast level";
  if (lufs >= -24) return "broadcast level";
  return "quiet: quieter than broadcast level";
}

// −23.0 with a real minus sign, as in print; +0.4 for what is above zero.
function signed(value, digits) {
  const text = Math.abs(value).toFixed(digits);
  if (Number(text) === 0) return text;
  return `${value < 0 ? "\u2212" : "+"}${text}`;
}

// From the first page (after an upload, the newest is on it), or on from the last page seen.
// A fresh load outdates any page still on its way, so rows never mix two listings.
let listing = 0;
let loadingMore = false;
async function loadRecords({more = false} = {}) {
  if (!user || (more && (nextCursor === null || loadingMore))) return;
  const query = new URLSearchParams({limit: String(PAGE_SIZE)});
  if (more) query.set("cursor", nextCursor);
  else listing += 1;
  const mine = listing;
  loadingMore = more;
  const response = await call(`/records?${query}`);
  if (more) loadingMore = false;
  if (mine !== listing) return;
  if (!response.ok) {
    $("library-error").textContent = await messageOf(response);
    return;
  }
  $("library-error").textContent = "";
  const {data} = await response.json();
  if (mine !== listing) return;
  const rows = data.records.map(recordRow);
  if (more) $("records").append(...rows);
  else $("records").replaceChildren(...rows);
  nextCursor = data.next;
  $("more").hidden = nextCursor === null;
  $("empty").hidden = $("records").children.length > 0;
}

$("more").addEventListener("click", () => loadRecords({more: true}));
// The next page loads by itself when "More" scrolls into view.
new IntersectionObserver((entries) => {
  if (entries.some((entry) => entry.isIntersecting)) loadRecords({more: true});
}).observe($("more"));

// ---- start --------------------------------------------------------------------------------------

async function start() {
  render();
  loadOptions();
  const stored = remembered();
  if (!stored) return;
  // The stored pair is checked again: the user may have been deleted. Only a 401 forgets it;
  // a service that is briefly down must not sign anyone out.
  const problem = await signIn(stored);
  if (problem && problem.status === 401) signOut();
  if (problem) $("account-error").textContent = problem.message;
}

start();
