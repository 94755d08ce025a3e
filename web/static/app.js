// The upload form (the files checked before sending, the preview, the upload as an open batch:
// the files sent a few at a time, each tried again should the connection break, with one
// progress bar)
// and the waiting page (live progress through Server-Sent Events, polling when they fail, the
// event log). Without this script the form posts as any form does and the waiting page reloads
// itself. All text goes in through textContent: nothing from the server is parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

/// "1.5 MiB", "64.0 KiB", "12 bytes": as the server says sizes.
function humanBytes(n) {
  const MIB = 1024 * 1024;
  if (n >= MIB && n % MIB === 0) return `${n / MIB} MiB`;
  if (n >= MIB) return `${(n / MIB).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} bytes`;
}

function humanSeconds(s) {
  if (!isFinite(s)) return "";
  if (s < 1) return "less than a second";
  if (s < 90) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - m * 60)} s`;
}

/// The message of an API error: `{"error": {"code", "message"}}` (or an older `{"error": text}`).
function errorMessage(body, status) {
  if (body && body.error) {
    if (typeof body.error === "string") return body.error;
    if (body.error.message) return body.error.message;
  }
  return `the server answered ${status}`;
}

// ---------------------------------------------------------------------------------------------
// The upload form.

/// The type of a file from its first bytes, as the server tells it (jobs::pipeline::Format::sniff):
/// the name does not count.
function sniff(b) {
  const at = (i, ...bytes) => bytes.every((v, k) => b[i + k] === v);
  if (at(0, 0xff, 0xd8, 0xff)) return "JPEG";
  if (at(0, 0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a)) return "PNG";
  if (at(0, 0x52, 0x49, 0x46, 0x46) && at(8, 0x57, 0x45, 0x42, 0x50)) return "WebP";
  if (at(0, 0x47, 0x49, 0x46, 0x38)) return "GIF";
  if (at(0, 0x42, 0x4d)) return "BMP";
  if (at(0, 0x49, 0x49, 0x2a, 0x00) || at(0, 0x4d, 0x4d, 0x00, 0x2a)) return "TIFF";
  return null;
}

async function fileType(file) {
  try {
    return sniff(new Uint8Array(await file.slice(0, 16).arrayBuffer()));
  } catch (e) {
    return null;
  }
}

/// Checks the chosen files against the limits on the page: which are left out and why, and
/// what blocks the upload (too many, too large).
async function checkFiles(files, limits) {
  const items = [];
  for (const file of files) {
    let reason = null;
    if (file.size === 0) {
      reason = "the file is empty";
    } else if (!(await fileType(file))) {
      reason = `not an image we can read (${limits.accepted}; the content counts, not the name)`;
    }
    items.push({ file, reason });
  }
  const kept = items.filter((i) => !i.reason).map((i) => i.file);
  const total = kept.reduce((sum, f) => sum + f.size, 0);
  let block = null;
  const big = kept.filter((f) => f.size > limits.maxFileBytes);
  if (items.length > 0 && kept.length === 0) {
    block = `None of the chosen files is an image we can read (${limits.accepted}). Choose other files.`;
  } else if (kept.length > limits.maxFiles) {
    block = `Too many files: ${kept.length} chosen, and a batch takes at most ${limits.maxFiles}. Choose fewer, or send them in several batches.`;
  } else if (big.length > 0) {
    const names = big.map((f) => `${f.name} (${humanBytes(f.size)})`).join(", ");
    block = `Too large: ${names}. Each file may be ${humanBytes(limits.maxFileBytes)} at most; leave ${big.length === 1 ? "it" : "them"} out to go on.`;
  } else if (total > limits.maxBatchBytes) {
    block = `The files come to ${humanBytes(total)}, more than the ${humanBytes(limits.maxBatchBytes)} a batch may hold. Choose fewer, or send them in several batches.`;
  }
  return { items, kept, total, block };
}

function showChecked(check) {
  const list = $("chosen");
  list.replaceChildren();
  for (const { file, reason } of check.items) {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = file.name;
    li.append(name, ` (${humanBytes(file.size)})`);
    if (reason) {
      li.className = "refused";
      const why = document.createElement("span");
      why.className = "reason";
      why.textContent = ` left out: ${reason}`;
      li.append(" —", why);
    }
    list.appendChild(li);
  }
  const refused = check.items.length - check.kept.length;
  let summary = "";
  if (check.items.length > 0) {
    summary = `${check.kept.length} image${check.kept.length === 1 ? "" : "s"} to send, ${humanBytes(check.total)}.`;
    if (refused > 0) {
      summary += ` ${refused} file${refused === 1 ? " is" : "s are"} left out (see why below).`;
    }
  }
  $("chosen-summary").textContent = summary;
}

function alertText(text) {
  const alert = $("form-alert");
  alert.textContent = text || "";
  alert.hidden = !text;
}

/// A copy of `file` at most 640 px wide and high, as a JPEG, for the preview; null when the
/// browser cannot decode it.
async function smallCopy(file) {
  if (!window.createImageBitmap) return null;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (e) {
    return null;
  }
  const scale = Math.min(1, 640 / Math.max(bitmap.width, bitmap.height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff"; // under transparent parts: a JPEG has no alpha
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  if (bitmap.close) bitmap.close();
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.85));
}

/// The form's choices (not its files) as a FormData, in the form's order.
function choices(form, limits) {
  const data = new FormData(form);
  data.delete("files");
  const logo = $("logo");
  data.delete("logo");
  if (logo && logo.files.length && logo.files[0].size <= limits.maxLogoBytes) {
    data.append("logo", logo.files[0], logo.files[0].name);
  }
  return data;
}

/// The preview: `POST /api/preview` with the choices, and a small copy of the first image
/// chosen (or none: the server's sample photo), redrawn as the choices change.
function setupPreview(form, limits) {
  const aside = $("preview");
  const img = $("preview-img");
  const caption = $("preview-caption");
  if (!aside || !window.fetch || !window.URL || !URL.createObjectURL || !window.AbortController) {
    return { use() {} };
  }
  aside.hidden = false;
  let source = null; // { blob, name }: a small copy of the user's image
  let timer = null;
  let controller = null;
  let shown = null;
  let count = 0;

  img.addEventListener("load", () => {
    if (shown && shown !== img.src) URL.revokeObjectURL(shown);
    shown = img.src;
    count += 1;
    img.dataset.count = String(count);
    img.hidden = false;
    aside.classList.remove("stale");
  });

  const draw = async () => {
    if (controller) controller.abort();
    controller = new AbortController();
    const data = choices(form, limits);
    if (source) data.append("image", source.blob, "preview.jpg");
    aside.classList.add("stale");
    try {
      const res = await fetch("/api/preview", {
        method: "POST",
        body: data,
        signal: controller.signal,
        cache: "no-store",
        headers: { Accept: "image/*, application/json" },
      });
      if (res.status === 503) {
        const wait = Number(res.headers.get("Retry-After")) || 1;
        schedule(wait * 1000);
        return;
      }
      if (!res.ok) {
        const body = await res.json().catch(() => null);
        caption.textContent = `No preview: ${errorMessage(body, res.status)}.`;
        return;
      }
      const blob = await res.blob();
      img.src = URL.createObjectURL(blob);
      img.alt = source
        ? `Your choices applied to a small copy of ${source.name}`
        : "Your choices applied to a sample photo";
      caption.textContent = source
        ? `Your choices on a small copy of ${source.name}.`
        : "Your choices on a sample photo. Choose images to see them on yours.";
    } catch (e) {
      if (e.name !== "AbortError") caption.textContent = "No preview right now.";
    }
  };
  const schedule = (delay) => {
    clearTimeout(timer);
    timer = setTimeout(draw, delay);
  };
  // Typing and sliding redraw after a pause; other changes at once.
  form.addEventListener("input", (e) => {
    if (e.target.type !== "file") schedule(250);
  });
  form.addEventListener("change", (e) => {
    if (e.target.id === "logo" || e.target.type !== "file") schedule(50);
  });
  schedule(0);
  return {
    /// Draws on a small copy of the first of `files` the browser can decode (or the sample).
    async use(files) {
      let next = null;
      for (const file of files.slice(0, 3)) {
        const blob = await smallCopy(file);
        if (blob) {
          next = { blob, name: file.name };
          break;
        }
      }
      source = next;
      schedule(0);
    },
  };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/// Whether an answer is worth asking again: none at all (the connection broke), or the server
/// busy, slow or down for a moment (408, 429, 5xx).
const retryable = (status) => status === 0 || status === 408 || status === 429 || status >= 500;

/// Attempts at one request before giving up; the waits between them grow from half a second to
/// 15 s (about three minutes in all), or follow the server's Retry-After.
const ATTEMPTS = 15;

function backoff(attempt, retryAfter) {
  const asked = Number(retryAfter);
  if (asked > 0) return Math.min(asked, 60) * 1000;
  const base = Math.min(15000, 500 * 2 ** (attempt - 1));
  return base / 2 + Math.random() * (base / 2);
}

/// One request by XMLHttpRequest (for the upload's progress): resolves to its status (0 when the
/// connection failed), its JSON body and its Retry-After; never rejects.
function send(method, url, body, headers, onProgress) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    xhr.setRequestHeader("Accept", "application/json");
    for (const [k, v] of Object.entries(headers || {})) xhr.setRequestHeader(k, v);
    if (onProgress) xhr.upload.addEventListener("progress", (e) => onProgress(e.loaded));
    xhr.addEventListener("load", () => {
      let json = null;
      try {
        json = JSON.parse(xhr.responseText);
      } catch (e) {
        json = null;
      }
      resolve({ status: xhr.status, body: json, retryAfter: xhr.getResponseHeader("Retry-After") });
    });
    const broke = () => resolve({ status: 0, body: null, retryAfter: null });
    xhr.addEventListener("error", broke);
    xhr.addEventListener("abort", broke);
    xhr.addEventListener("timeout", broke);
    xhr.send(body);
  });
}

/// `request()` until it gets an answer that is not worth asking again, waiting longer each time;
/// `onRetry(seconds)` is told of each wait.
async function persist(request, onRetry) {
  let res = null;
  for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
    res = await request();
    if (!retryable(res.status) || attempt === ATTEMPTS) return res;
    const wait = backoff(attempt, res.retryAfter);
    if (onRetry) onRetry(wait / 1000, res.status);
    await sleep(wait);
  }
  return res;
}

/// Files sent at once.
const PARALLEL = 4;

/// The upload as an open batch: `POST /api/batches/open` with the choices, each file
/// `PUT` on its own (four at a time, each tried again on a broken connection or a server error),
/// one progress bar for all, then `POST …/close` and the waiting page. A connection cut midway
/// costs only the files in flight, which are sent again.
async function upload(data, files, total, button) {
  const box = $("upload-progress");
  const bar = $("upload-bar");
  const percent = $("upload-percent");
  const text = $("upload-text");
  // From zero: an earlier attempt may have left its figures.
  bar.value = 0;
  bar.textContent = "0 %";
  percent.textContent = "0 %";
  text.textContent = "";
  box.hidden = false;
  box.dataset.retries = "0";
  button.disabled = true;
  button.textContent = "Uploading…";
  const started = performance.now();
  let samples = [{ t: started, loaded: 0 }];
  const loaded = files.map(() => 0);
  let finished = 0;
  let trouble = "";
  const show = () => {
    const sent = loaded.reduce((a, b) => a + b, 0);
    const pct = total > 0 ? Math.min(100, Math.floor((sent / total) * 100)) : 100;
    bar.value = pct;
    bar.textContent = `${pct} %`;
    percent.textContent = `${pct} %`;
    const now = performance.now();
    samples.push({ t: now, loaded: sent });
    samples = samples.filter((s) => now - s.t <= 3000);
    const first = samples[0];
    const rate = now > first.t ? ((sent - first.loaded) * 1000) / (now - first.t) : 0;
    let line = `${finished} of ${files.length} file${files.length === 1 ? "" : "s"}, ${humanBytes(sent)} of ${humanBytes(total)} sent`;
    if (rate > 0) line += `, ${humanBytes(Math.round(rate))}/s`;
    if (sent < total && rate > 0) line += `, about ${humanSeconds((total - sent) / rate)} left`;
    text.textContent = `${line}.${trouble}`;
  };
  const retrying = (seconds, status) => {
    box.dataset.retries = String(Number(box.dataset.retries) + 1);
    trouble = status === 0
      ? ` The connection broke; trying again in ${humanSeconds(seconds)}…`
      : ` The server is busy; trying again in ${humanSeconds(seconds)}…`;
    show();
  };
  const fail = (message) => {
    alertText(`The upload did not go through: ${message}. Your choices are kept; you can try again.`);
    box.hidden = true;
    button.disabled = false;
    button.textContent = "Upload and process";
  };
  const failure = (res) => {
    if (res.status === 0) return "the connection was lost";
    let message = errorMessage(res.body, res.status);
    if (res.retryAfter) message += ` (try again in ${res.retryAfter} s)`;
    return message;
  };

  // The batch, made once however often the request is sent (Idempotency-Key).
  const key = window.crypto && crypto.randomUUID
    ? crypto.randomUUID()
    : `${Date.now()}-${Math.random().toString(36).slice(2)}`;
  const opened = await persist(
    () => send("POST", "/api/batches/open", data, { "Idempotency-Key": key }),
    retrying,
  );
  if ((opened.status !== 201 && opened.status !== 200) || !opened.body || !opened.body.files_url) {
    fail(failure(opened));
    return;
  }
  const batch = opened.body;
  $("upload").dataset.batch = batch.id;
  show();

  // The files, a few at a time; each is named by its place, so that sending it again is harmless.
  let next = 0;
  let refused = null;
  const sender = async () => {
    while (refused === null && next < files.length) {
      const i = next++;
      const file = files[i];
      const url = `${batch.files_url}/f${i}?name=${encodeURIComponent(file.name)}`;
      const res = await persist(
        () => {
          loaded[i] = 0;
          return send("PUT", url, file, {}, (n) => {
            loaded[i] = Math.min(n, file.size);
            show();
          });
        },
        (seconds, status) => {
          loaded[i] = 0;
          retrying(seconds, status);
        },
      );
      if (res.status !== 201 && res.status !== 200) {
        refused = `${file.name}: ${failure(res)}`;
        return;
      }
      loaded[i] = file.size;
      finished++;
      trouble = "";
      show();
    }
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL, files.length) }, sender));
  if (refused !== null) {
    fail(refused);
    return;
  }

  text.textContent = `${files.length} file${files.length === 1 ? "" : "s"} sent in ${humanSeconds((performance.now() - started) / 1000)}. Opening your batch…`;
  const closed = await persist(() => send("POST", batch.close_url, null, {}), retrying);
  if (closed.status !== 200) {
    fail(failure(closed));
    return;
  }
  window.location.assign(batch.page_url);
}

function setupUpload() {
  const form = $("upload");
  if (!form) return;
  const limits = {
    maxFiles: Number(form.dataset.maxFiles),
    maxFileBytes: Number(form.dataset.maxFileBytes),
    maxBatchBytes: Number(form.dataset.maxBatchBytes),
    maxLogoBytes: Number(form.dataset.maxLogoBytes),
    accepted: form.dataset.accepted,
  };
  const input = $("files");
  const drop = $("drop");
  const preview = setupPreview(form, limits);
  let checking = Promise.resolve({ items: [], kept: [], total: 0, block: null });
  const check = () => {
    const files = Array.from(input.files);
    checking = checkFiles(files, limits).then((result) => {
      showChecked(result);
      alertText(result.block);
      preview.use(result.kept);
      return result;
    });
  };
  input.addEventListener("change", check);
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) {
      input.files = e.dataTransfer.files;
      check();
    }
  });
  const logo = $("logo");
  if (logo) {
    logo.addEventListener("change", () => {
      const f = logo.files[0];
      alertText(f && f.size > limits.maxLogoBytes
        ? `The logo is ${humanBytes(f.size)}, more than the limit of ${humanBytes(limits.maxLogoBytes)}.`
        : null);
    });
  }
  if (!window.XMLHttpRequest || !window.FormData) return; // the form posts itself
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const button = $("submit");
    if (button.disabled) return;
    const result = await checking;
    if (!input.files.length) {
      alertText("Choose at least one image.");
      return;
    }
    if (result.block) {
      alertText(result.block);
      $("form-alert").focus();
      return;
    }
    const f = logo && logo.files[0];
    if (f && f.size > limits.maxLogoBytes) {
      alertText(`The logo is ${humanBytes(f.size)}, more than the limit of ${humanBytes(limits.maxLogoBytes)}.`);
      return;
    }
    alertText(null);
    // The batch with its choices first, then the files: the server starts on each image as it
    // arrives.
    upload(choices(form, limits), result.kept, result.total, button);
  });
}

// ---------------------------------------------------------------------------------------------
// The waiting page.

const STATUS_TEXT = {
  uploading: "Receiving your files…",
  open: "Receiving your files…",
  queued: "Waiting for a worker…",
  processing: "Processing…",
  archiving: "Packing the zip…",
  done: "Ready.",
  failed: "Failed.",
  cancelled: "Cancelled.",
  expired: "Expired.",
};

const isFinal = (s) => s === "done" || s === "failed" || s === "cancelled" || s === "expired";

function expiryText(iso) {
  if (!iso) return "";
  const at = new Date(iso);
  const minutes = Math.max(0, Math.round((at - Date.now()) / 60000));
  const hhmm = at.toISOString().slice(11, 16);
  return `Available until ${hhmm} UTC (about ${minutes} min from now).`;
}

function render(b) {
  const section = $("batch");
  section.dataset.status = b.status;
  const status = $("status");
  status.textContent = STATUS_TEXT[b.status] || b.status;
  status.className = `status status-${b.status}`;
  const progress = $("progress");
  const processed = b.done + b.failed;
  progress.max = Math.max(b.total, 1);
  progress.value = b.total > 0 ? processed : 0;
  progress.textContent = `${processed} of ${b.total}`;
  $("count").textContent = `${processed} of ${b.total}`;
  $("failed-count").textContent = b.failed > 0 ? `, ${b.failed} failed` : "";
  const ready = $("ready");
  if (b.download_url) {
    $("download").href = b.download_url;
    const expiry = $("expiry");
    expiry.dataset.expires = b.expires_at || "";
    expiry.textContent = expiryText(b.expires_at);
    ready.hidden = false;
  } else {
    ready.hidden = true;
  }
  const cancelLine = $("cancel-line");
  if (cancelLine && isFinal(b.status)) cancelLine.hidden = true;
  const err = $("batch-error");
  err.textContent = b.error || "";
  err.hidden = !b.error;
  if (b.status === "expired") return; // the list of a finished, deleted batch is not news
  const rows = $("images");
  rows.replaceChildren();
  for (const img of b.images || []) {
    const tr = document.createElement("tr");
    tr.className = `image-${img.status}`;
    for (const text of [img.name, img.status, img.error || ""]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    rows.appendChild(tr);
  }
}

const EVENT_TEXT = {
  "batch.uploaded": "uploaded",
  "image.started": "started",
  "image.done": "done",
  "image.failed": "failed",
  "image.retried": "to be tried again",
  "batch.archived": "zip ready",
  "batch.failed": "batch failed",
  "batch.cancelled": "cancelled",
  "batch.downloaded": "downloaded",
  "batch.expired": "expired, files deleted",
  "webhook.delivered": "webhook delivered",
  "webhook.failed": "webhook failed",
};

/// The event log (`GET /api/batches/{id}/events`), loaded when its <details> is opened and
/// again on news while it is open.
function setupEvents(id) {
  const details = $("events");
  if (!details || !window.fetch) return { refresh() {} };
  const list = $("event-list");
  const status = $("events-status");
  let loading = false;
  let again = false;
  let last = 0;
  let timer = null;
  const load = async () => {
    if (!details.open) return;
    if (loading) {
      again = true;
      return;
    }
    loading = true;
    last = Date.now();
    try {
      const res = await fetch(`/api/batches/${encodeURIComponent(id)}/events`, {
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      const body = await res.json().catch(() => null);
      if (!res.ok || !body || !Array.isArray(body.events)) {
        status.textContent = `The event log is not available (${errorMessage(body, res.status)}).`;
      } else {
        list.replaceChildren();
        for (const ev of body.events) {
          const li = document.createElement("li");
          const time = document.createElement("time");
          time.dateTime = ev.at;
          const at = new Date(ev.at);
          time.textContent = isNaN(at) ? String(ev.at) : at.toISOString().slice(11, 19);
          const kind = document.createElement("span");
          kind.className = "kind";
          kind.textContent = EVENT_TEXT[ev.kind] || ev.kind;
          const parts = [];
          if (ev.image) parts.push(ev.image);
          if (ev.worker) parts.push(`by ${ev.worker}`);
          if (ev.attempt) parts.push(`attempt ${ev.attempt}`);
          if (ev.detail) parts.push(ev.detail);
          li.append(time, " ", kind);
          if (parts.length) li.append(`: ${parts.join(", ")}`);
          list.appendChild(li);
        }
        const n = body.events.length;
        status.textContent = `${n} event${n === 1 ? "" : "s"}, oldest first (times in UTC).`;
      }
    } catch (e) {
      status.textContent = "The event log could not be loaded; it is tried again on the next change.";
    }
    loading = false;
    if (again) {
      again = false;
      refresh();
    }
  };
  // At most one load every 2 s while news comes in.
  const refresh = () => {
    if (!details.open) return;
    clearTimeout(timer);
    timer = setTimeout(load, Math.max(0, last + 2000 - Date.now()));
  };
  details.addEventListener("toggle", () => {
    if (details.open) load();
  });
  return { refresh };
}

/// The Cancel button: asks first, then posts to `POST /api/batches/{id}/cancel`; the page shows
/// the answer at once, and the live stream says the same.
function setupCancel(id, update) {
  const line = $("cancel-line");
  const button = $("cancel");
  const note = $("cancel-note");
  if (!line || !button || !window.fetch) return;
  line.hidden = false;
  button.addEventListener("click", async () => {
    if (!window.confirm("Cancel this batch? Images not processed yet will not be, and every file of it is deleted now.")) return;
    button.disabled = true;
    note.textContent = "Cancelling…";
    try {
      const res = await fetch(`/api/batches/${encodeURIComponent(id)}/cancel`, {
        method: "POST",
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      const body = await res.json().catch(() => null);
      if (res.ok && body) {
        note.textContent = "";
        update(body);
        return;
      }
      note.textContent = `Not cancelled: ${errorMessage(body, res.status)}.`;
    } catch (e) {
      note.textContent = "Not cancelled: the server could not be reached; please try again.";
    }
    button.disabled = false;
  });
}

function setupBatch() {
  const section = $("batch");
  if (!section) return;
  const id = section.dataset.id;
  const note = $("live-note");
  const events = setupEvents(id);
  const finished = (b) => {
    note.hidden = true;
    events.refresh();
    if (b.status === "done") {
      setInterval(() => {
        const expiry = $("expiry");
        expiry.textContent = expiryText(expiry.dataset.expires);
      }, 30000);
    }
  };
  const update = (b) => {
    render(b);
    events.refresh();
    if (isFinal(b.status)) finished(b);
  };
  if (isFinal(section.dataset.status)) return;
  setupCancel(id, update);

  // Polling, when Server-Sent Events are not available or fail.
  const poll = () => {
    section.dataset.live = "poll";
    note.textContent = "Checking for news every second.";
    note.hidden = false;
    const tick = async () => {
      try {
        const res = await fetch(`/api/batches/${encodeURIComponent(id)}`, { cache: "no-store" });
        const body = await res.json().catch(() => null);
        if (res.status === 404) {
          note.textContent = `This batch cannot be found (${errorMessage(body, 404)}).`;
          return;
        }
        if (res.status === 410) {
          update({ status: "expired", total: 0, done: 0, failed: 0, images: [], error: errorMessage(body, 410) });
          return;
        }
        if (res.ok && body) {
          update(body);
          if (isFinal(body.status)) return;
        }
      } catch (e) {
        // A network hiccup: try again on the next tick.
      }
      setTimeout(tick, 1000);
    };
    tick();
  };

  if (!window.EventSource) {
    poll();
    return;
  }
  const source = new EventSource(`/api/batches/${encodeURIComponent(id)}/stream`);
  source.addEventListener("open", () => {
    section.dataset.live = "sse";
    note.textContent = "This page updates live.";
    note.hidden = false;
  });
  source.addEventListener("status", (e) => {
    section.dataset.live = "sse";
    let b;
    try {
      b = JSON.parse(e.data);
    } catch (err) {
      return;
    }
    update(b);
    if (isFinal(b.status)) source.close();
  });
  source.addEventListener("error", () => {
    // A stream that broke, or never opened: the API is asked instead.
    if (isFinal(section.dataset.status)) return;
    source.close();
    poll();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupUpload();
  setupBatch();
});
