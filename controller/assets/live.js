// Slipway dashboard: keeps a section up to date from server-sent events.
// An element with data-live="URL" has its content replaced by every event
// the URL sends (HTML the server rendered and escaped).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const el of document.querySelectorAll("[data-live]")) {
    const source = new EventSource(el.dataset.live);
    source.onmessage = (e) => { el.innerHTML = e.data; };
    source.addEventListener("end", () => source.close());
  }
});
