// Live progress on a wave's page: asks the progress endpoint every few seconds and updates the
// progress bar, the counts and each mailbox's state tag in place. Without this script the page
// falls back to a meta refresh (inside <noscript>) and a "Refresh now" link.

const POLL_LIMIT = 720; // stop after an hour of polling; a reload starts again

function tagClass(tag) {
  return "govuk-tag " + tag;
}

function setWidthClass(element, percent) {
  for (const name of Array.from(element.classList)) {
    if (name.startsWith("portal-w-")) {
      element.classList.remove(name);
    }
  }
  element.classList.add("portal-w-" + Math.max(0, Math.min(100, Math.round(percent))));
}

function apply(section, data) {
  const percent = Number(data.percent) || 0;
  const bar = section.querySelector("[data-wave-bar]");
  const fill = section.querySelector("[data-wave-fill]");
  if (bar) {
    bar.setAttribute("aria-valuenow", String(percent));
  }
  if (fill) {
    setWidthClass(fill, percent);
  }
  const percentText = section.querySelector("[data-wave-percent]");
  if (percentText) {
    percentText.textContent = String(percent);
  }
  const finished = section.querySelector("[data-wave-finished]");
  if (finished) {
    finished.textContent = Number(data.finished || 0).toLocaleString("en-GB");
  }
  for (const count of section.querySelectorAll("[data-state-count]")) {
    const value = data.by_state ? data.by_state[count.dataset.stateCount] : undefined;
    if (value !== undefined) {
      count.textContent = Number(value).toLocaleString("en-GB");
    }
  }
  const status = document.querySelector("[data-wave-status]");
  if (status && data.status_label) {
    status.textContent = data.status_label;
    status.className = tagClass(data.status_tag || "");
  }
  const checked = document.querySelector("[data-preflight-checked]");
  if (checked && data.preflight) {
    checked.textContent = Number(data.preflight.checked || 0).toLocaleString("en-GB");
  }
  for (const entry of data.entries || []) {
    const tag = document.querySelector('[data-entry-state="' + entry.id + '"]');
    if (tag) {
      tag.textContent = entry.label;
      tag.className = tagClass(entry.tag);
    }
    const error = document.querySelector('[data-entry-error="' + entry.id + '"]');
    if (error) {
      error.textContent = entry.error || "";
    }
  }
}

function start(section) {
  const url = section.dataset.progressUrl;
  const every = Math.max(2, Number(section.dataset.pollSeconds) || 5) * 1000;
  let polls = 0;
  let wasActive = section.dataset.active === "true";
  if (!wasActive) {
    return; // nothing is moving: no need to ask
  }

  async function poll() {
    polls += 1;
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!response.ok) {
        return; // signed out or gone: leave the page as it is
      }
      const data = await response.json();
      apply(section, data);
      if (wasActive && !data.active) {
        // The run or pre-flight just finished: reload once for the buttons and results it unlocks.
        window.location.reload();
        return;
      }
      wasActive = Boolean(data.active);
      if (data.active && polls < POLL_LIMIT) {
        window.setTimeout(poll, every);
      }
    } catch {
      if (polls < POLL_LIMIT) {
        window.setTimeout(poll, every * 2);
      }
    }
  }

  window.setTimeout(poll, every);
}

for (const section of document.querySelectorAll("[data-wave-progress]")) {
  start(section);
}
