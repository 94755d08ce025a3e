// The upload form's file chooser (drag and drop, list of chosen files) and the waiting page's
// live progress. All text goes in through textContent: nothing from the server is parsed as HTML.
"use strict";

function setupUpload() {
  const form = document.getElementById("upload");
  if (!form) return;
  const input = document.getElementById("files");
  const drop = document.getElementById("drop");
  const chosen = document.getElementById("chosen");
  const showChosen = () => {
    chosen.replaceChildren();
    for (const f of input.files) {
      const li = document.createElement("li");
      li.textContent = `${f.name} (${Math.ceil(f.size / 1024)} KiB)`;
      chosen.appendChild(li);
    }
  };
  input.addEventListener("change", showChosen);
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) {
      input.files = e.dataTransfer.files;
      showChosen();
    }
  });
  form.addEventListener("submit", () => {
    const button = document.getElementById("submit");
    button.disabled = true;
    button.textContent = "Uploading…";
  });
}

const STATUS_TEXT = {
  uploading: "Receiving your files…",
  queued: "Waiting for a worker…",
  processing: "Processing…",
  archiving: "Packing the zip…",
  done: "Ready.",
  failed: "Failed.",
  expired: "Expired.",
};

function expiryText(iso) {
  if (!iso) return "";
  const at = new Date(iso);
  const minutes = Math.max(0, Math.round((at - Date.now()) / 60000));
  const hhmm = at.toISOString().slice(11, 16);
  return `Available until ${hhmm} UTC (about ${minutes} min from now).`;
}

function render(b) {
  const section = document.getElementById("batch");
  section.dataset.status = b.status;
  const status = document.getElementById("status");
  status.textContent = STATUS_TEXT[b.status] || b.status;
  status.className = `status status-${b.status}`;
  const progress = document.getElementById("progress");
  progress.max = b.total;
  progress.value = b.done + b.failed;
  document.getElementById("count").textContent = `${b.done + b.failed} of ${b.total}`;
  document.getElementById("failed-count").textContent = b.failed > 0 ? `, ${b.failed} failed` : "";
  const ready = document.getElementById("ready");
  if (b.download_url) {
    document.getElementById("download").href = b.download_url;
    const expiry = document.getElementById("expiry");
    expiry.dataset.expires = b.expires_at || "";
    expiry.textContent = expiryText(b.expires_at);
    ready.hidden = false;
  } else {
    ready.hidden = true;
  }
  const err = document.getElementById("batch-error");
  err.textContent = b.error || "";
  err.hidden = !b.error;
  const rows = document.getElementById("images");
  rows.replaceChildren();
  for (const img of b.images) {
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

function setupBatch() {
  const section = document.getElementById("batch");
  if (!section) return;
  const id = section.dataset.id;
  const final = (s) => s === "done" || s === "failed" || s === "expired";
  const tick = async () => {
    try {
      const res = await fetch(`/api/batches/${encodeURIComponent(id)}`, { cache: "no-store" });
      if (res.status === 410) {
        // The answer says how long files are kept (RESULT_TTL_SECONDS).
        const gone = await res.json().catch(() => ({}));
        render({ status: "expired", total: 0, done: 0, failed: 0, images: [], error: gone.error || "This batch has expired." });
        return;
      }
      if (res.ok) {
        const b = await res.json();
        render(b);
        if (final(b.status)) {
          if (b.status === "done") setInterval(() => {
            const expiry = document.getElementById("expiry");
            expiry.textContent = expiryText(expiry.dataset.expires);
          }, 30000);
          return;
        }
      }
    } catch (e) {
      // Network hiccup: try again on the next tick.
    }
    setTimeout(tick, 1000);
  };
  if (!final(section.dataset.status)) setTimeout(tick, 500);
}

document.addEventListener("DOMContentLoaded", () => {
  setupUpload();
  setupBatch();
});
