// The monitor updates itself: every 5 seconds it fetches this same page and swaps in its main
// part. The page is rendered (and escaped) by the server; nothing is built from JSON here.
"use strict";

async function refresh() {
  try {
    const res = await fetch(location.href, { cache: "no-store", credentials: "same-origin" });
    if (res.ok) {
      const doc = new DOMParser().parseFromString(await res.text(), "text/html");
      const fresh = doc.getElementById("monitor");
      const current = document.getElementById("monitor");
      if (fresh && current) current.replaceWith(document.importNode(fresh, true));
    }
  } catch (e) {
    // The server is away for a moment: try again on the next tick.
  }
}

document.addEventListener("DOMContentLoaded", () => setInterval(refresh, 5000));
