// zguard console: the progress of a running audit chain verification. While the page shows one
// running, poll GET /console/api/audit/verify every second, move the <progress> bar and its text
// (textContent: nothing in the answer is parsed as markup), and reload the page once it has ended
// (the page then shows the result). Without this script the page refreshes itself (<noscript>).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const job = document.getElementById("verify-job");
  if (!job || job.dataset.state !== "running") {
    return;
  }
  const bar = document.getElementById("verify-progress");
  const count = document.getElementById("verify-count");
  const poll = async () => {
    try {
      const response = await fetch(job.dataset.api, {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      if (!response.ok) {
        window.location.reload(); // signed out, refused or unavailable: the page says which
        return;
      }
      const state = await response.json();
      if (state.state !== "running") {
        window.location.reload();
        return;
      }
      bar.max = Math.max(state.total || 0, 1);
      bar.value = state.checked;
      bar.textContent = `${state.checked} / ${state.total}`;
      count.textContent = job.dataset.counted
        .replace("{checked}", String(state.checked))
        .replace("{total}", String(state.total));
    } catch (error) {
      // the network failed for a moment: try again at the next tick
    }
    window.setTimeout(poll, 1000);
  };
  window.setTimeout(poll, 1000);
});
