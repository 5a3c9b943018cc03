// zguard console: trace an image to its audit record. The chosen file is sent as the raw body of
// POST /v1/provenance/trace (the same route scripts use) with the session's CSRF token; the
// answer is shown as text (textContent: nothing in it is ever parsed as markup).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("trace-form");
  if (!form) {
    return;
  }
  const out = document.getElementById("trace-result");
  const button = form.querySelector("button");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = form.querySelector("input[type=file]").files[0];
    if (!file) {
      return;
    }
    button.disabled = true;
    out.textContent = form.dataset.working;
    try {
      const response = await fetch("/v1/provenance/trace", {
        method: "POST",
        headers: { "Content-Type": "application/octet-stream", "X-CSRF-Token": form.dataset.csrf },
        body: file,
        credentials: "same-origin",
      });
      out.textContent = JSON.stringify(await response.json(), null, 2);
    } catch (error) {
      out.textContent = form.dataset.failed;
    } finally {
      button.disabled = false;
    }
  });
});
