// zguard console: progress while a generation runs. On submit of the Generate form, draw a
// random ticket for the hidden field, disable the button, show an indeterminate <progress> and
// poll GET /console/api/generate/queue?ticket=... every second for where the job stands, until
// the answer page replaces this one. The texts come translated from the page (data-*): this
// script has no catalog, and it writes textContent only. Without it the form posts as it always did.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("generate");
  const box = document.getElementById("generate-progress");
  if (!form || !box) {
    return;
  }
  const ticketField = document.getElementById("ticket");
  const button = document.getElementById("generate-submit");
  const bar = document.getElementById("generate-bar");
  const status = document.getElementById("generate-status");
  const fill = (text, values) =>
    Object.entries(values).reduce((out, [name, value]) => out.replace(`{${name}}`, String(value)), text);
  let ticket = "";
  let shown = "";
  const say = (text) => {
    if (text !== shown) {
      shown = text; // unchanged text is not re-announced
      status.textContent = text;
    }
  };
  const poll = async () => {
    try {
      const url = `${box.dataset.api}?ticket=${encodeURIComponent(ticket)}`;
      const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (response.ok) {
        const queue = await response.json();
        const position = queue.position;
        // Not queued (yet, or any more: the images are being encoded) reads as "generating" too.
        if (position && position.state === "waiting") {
          say(fill(box.dataset.waiting, { ahead: position.ahead }));
        } else {
          say(box.dataset.generating);
        }
      }
    } catch (error) {
      // the network failed for a moment, or the page is navigating: try again at the next tick
    }
    window.setTimeout(poll, 1000);
  };
  form.addEventListener("submit", () => {
    const bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    ticket = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    if (ticketField) {
      ticketField.value = ticket;
    }
    // Disabled after the browser has read the form (a disabled button is not sent, and this one
    // carries no value), so a second press cannot post the form twice.
    window.setTimeout(() => {
      button.disabled = true;
    }, 0);
    bar.hidden = false;
    say(box.dataset.generating);
    window.setTimeout(poll, 1000);
  });
  // Back from the answer page (bfcache): the form is usable again.
  window.addEventListener("pageshow", (event) => {
    if (event.persisted) {
      button.disabled = false;
      bar.hidden = true;
      say("");
    }
  });
});
