// Runs at the start of <body> (not inline, so a strict Content-Security-Policy
// can forbid inline scripts): tells GOV.UK Frontend's CSS that JavaScript runs.
document.body.className +=
  " js-enabled" + ("noModule" in HTMLScriptElement.prototype ? " govuk-frontend-supported" : "");
