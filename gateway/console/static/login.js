// The login page: posts JSON (a cross-site form cannot), then goes to the console.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  I18N.apply(document);
  for (const b of document.querySelectorAll("[data-lang]")) {
    b.addEventListener("click", () => { I18N.setLang(b.dataset.lang); I18N.apply(document); });
  }
  const form = document.getElementById("login");
  const error = document.getElementById("error");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    const body = JSON.stringify({
      user: document.getElementById("user").value,
      password: document.getElementById("password").value,
    });
    let r;
    try {
      r = await fetch("/api/login", {method: "POST", headers: {"Content-Type": "application/json"}, body,
                                     credentials: "same-origin"});
    } catch (err) {
      error.textContent = I18N.t("unreachable");
      return;
    }
    if (r.ok) {
      location.href = "/";
    } else if (r.status === 429) {
      error.textContent = I18N.t("throttled");
    } else {
      error.textContent = I18N.t("bad_login");
    }
  });
});
