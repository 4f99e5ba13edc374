// The dashboard's auto-refresh: off, or reload the page every 5 s. The
// choice is kept in this browser (localStorage) for every dashboard page.
// Pages that show a form to fill or confirm have no data-refresh and never
// reload. The reload drops the parameters that only announce a finished
// action, so the notice is not shown again and again.
(function () {
  "use strict";
  var KEY = "pyncette.dashboard.refresh";
  var NOTICE_PARAMS = ["done", "done_job", "done_queue"];
  var select = document.getElementById("auto-refresh");
  if (!select || !document.body.hasAttribute("data-refresh")) {
    return;
  }
  var timer = null;

  function read() {
    try {
      return window.localStorage.getItem(KEY) || "0";
    } catch (e) {
      return "0";
    }
  }

  function write(value) {
    try {
      window.localStorage.setItem(KEY, value);
    } catch (e) {
      // Private mode: the choice lasts for this page only.
    }
  }

  function reload() {
    var url = new URL(window.location.href);
    NOTICE_PARAMS.forEach(function (name) { url.searchParams.delete(name); });
    window.location.replace(url.toString());
  }

  function apply(value) {
    if (timer !== null) {
      window.clearTimeout(timer);
      timer = null;
    }
    var seconds = parseInt(value, 10);
    if (seconds > 0) {
      timer = window.setTimeout(reload, seconds * 1000);
    }
  }

  select.value = read();
  if (select.value !== read()) {
    select.value = "0";
  }
  select.addEventListener("change", function () {
    write(select.value);
    apply(select.value);
  });
  apply(select.value);
}());
