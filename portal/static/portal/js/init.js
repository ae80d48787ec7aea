// GOV.UK Frontend's bundle sets window.GOVUKFrontend; start every component on the page.
if (window.GOVUKFrontend && window.GOVUKFrontend.isSupported()) {
  window.GOVUKFrontend.initAll();
}
