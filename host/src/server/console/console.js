// The console's one script, served from the binary under a CSP that allows
// no inline script: confirmations for forms that ask for one.
"use strict";
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form instanceof HTMLFormElement ? form.dataset.confirm : undefined;
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
// The organisation switcher submits on change.
document.addEventListener("change", (event) => {
  if (event.target instanceof HTMLSelectElement && event.target.id === "org-switch") {
    event.target.form.submit();
  }
});
