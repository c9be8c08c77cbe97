// The web page's behaviour: plain DOM, no build step. Credentials live in localStorage.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "mp3-converter-user";

function account() {
  try { return JSON.parse(localStorage.getItem(KEY)); } catch { return null; }
}

function authHeader(user) {
  return "Basic " + btoa(`${user.id}:${user.token}`);
}

// Every error the service answers is {"code", "status", "message", "data"}: show its message.
async function messageOf(response) {
  try { return (await response.json()).message || response.statusText; } catch { return response.statusText; }
}

function show() {
  const user = account();
  $("create-user").hidden = !!user;
  $("signed-in").hidden = !user;
  $("convert").hidden = !user;
  $("library").hidden = !user;
  if (user) {
    $("who").textContent = user.username;
    $("who-id").textContent = user.id;
    refresh();
  }
}

$("create-user").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("account-error").textContent = "";
  const response = await fetch("/users", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({username: $("username").value}),
  });
  if (!response.ok) {
    $("account-error").textContent = await messageOf(response);
    return;
  }
  const {data} = await response.json();
  localStorage.setItem(KEY, JSON.stringify(data));
  $("token").textContent = data.token;
  $("token-once").hidden = false;
  show();
});

$("copy-token").addEventListener("click", async () => {
  await navigator.clipboard.writeText($("token").textContent);
  $("copied").hidden = false;
});

$("forget").addEventListener("click", () => {
  localStorage.removeItem(KEY);
  $("token-once").hidden = true;
  $("records").replaceChildren();
  show();
});

const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  [...event.dataTransfer.files].forEach(upload);
});
$("files").addEventListener("change", () => { [...$("files").files].forEach(upload); $("files").value = ""; });

// XMLHttpRequest rather than fetch: only it reports upload progress.
function upload(file) {
  const user = account();
  const row = document.createElement("div");
  row.className = "upload";
  const name = document.createElement("span");
  name.textContent = file.name;
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = 0;
  const percent = document.createElement("span");
  percent.className = "percent";
  percent.textContent = "0 %";
  row.append(name, bar, percent);
  $("uploads").prepend(row);

  const form = new FormData();
  form.append("user", user.id);
  form.append("token", user.token);
  const choice = $("bitrate").value;
  if (choice.startsWith("v")) form.append("quality", choice.slice(1));
  else if (choice) form.append("bitrate", choice);
  form.append("file", file, file.name);

  const request = new XMLHttpRequest();
  request.open("POST", "/record");
  request.upload.addEventListener("progress", (event) => {
    if (!event.lengthComputable) return;
    bar.value = Math.round((event.loaded / event.total) * 100);
    percent.textContent = `${bar.value} %`;
  });
  request.addEventListener("load", () => {
    if (request.status === 201) {
      bar.value = 100;
      percent.textContent = "100 %";
      row.dataset.done = "yes";
      refresh();
    } else {
      let message = request.statusText;
      try { message = JSON.parse(request.responseText).message; } catch { /* keep the status text */ }
      const error = document.createElement("span");
      error.className = "error";
      error.textContent = message;
      row.replaceChildren(name, error);
    }
  });
  request.addEventListener("error", () => { percent.textContent = "failed"; });
  request.send(form);
}

function seconds(value) {
  const minutes = Math.floor(value / 60);
  return `${minutes}:${String(Math.round(value % 60)).padStart(2, "0")}`;
}

async function refresh() {
  const user = account();
  if (!user) return;
  const response = await fetch("/records", {headers: {Authorization: authHeader(user)}});
  $("library-error").textContent = response.ok ? "" : await messageOf(response);
  if (!response.ok) return;
  const {data} = await response.json();
  const rows = data.records.map((record) => {
    const row = document.createElement("tr");
    row.dataset.id = record.id;
    const name = document.createElement("td");
    name.textContent = record.filename;
    const length = document.createElement("td");
    length.textContent = seconds(record.duration);
    const listen = document.createElement("td");
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "metadata";
    audio.src = record.url;
    listen.append(audio);
    const actions = document.createElement("td");
    const download = document.createElement("a");
    download.href = record.url;
    download.textContent = "Download";
    download.setAttribute("download", record.filename);
    const remove = document.createElement("button");
    remove.className = "danger";
    remove.textContent = "Delete";
    remove.addEventListener("click", async () => {
      const url = new URL(record.url);
      const answer = await fetch(`/record${url.search}`, {method: "DELETE", headers: {Authorization: authHeader(user)}});
      if (!answer.ok) $("library-error").textContent = await messageOf(answer);
      refresh();
    });
    actions.append(download, " ", remove);
    row.append(name, length, listen, actions);
    return row;
  });
  $("records").replaceChildren(...rows);
  $("empty").hidden = rows.length > 0;
}

show();
