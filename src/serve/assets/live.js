// gptx viewer: live updates of a running run (server-sent events) and a refreshing runs list.
(function () {
  "use strict";

  var refresh = document.getElementById("autorefresh");
  if (refresh) {
    var seconds = parseInt(refresh.getAttribute("data-seconds"), 10) || 10;
    setTimeout(function () { location.reload(); }, seconds * 1000);
  }

  var live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  var run = live.getAttribute("data-run");
  var after = live.getAttribute("data-after");
  var scale = live.getAttribute("data-scale");
  var lastPage = live.getAttribute("data-last-page") === "true";
  var pageSize = parseInt(live.getAttribute("data-page-size"), 10) || 100;
  var body = document.querySelector("#timeline tbody");
  var newer = document.getElementById("newer");
  var rows = body ? body.querySelectorAll("tr.step").length : 0;
  var waiting = 0;
  var base = "/runs/" + encodeURIComponent(run);

  var url = base + "/live?scale=" + encodeURIComponent(scale);
  if (after !== "") url += "&after=" + encodeURIComponent(after);
  var source = new EventSource(url);

  var pending = null;
  function reloadSummary() {
    if (pending) return;
    pending = setTimeout(function () {
      pending = null;
      fetch(base + "/summary").then(function (r) {
        return r.ok ? r.text() : null;
      }).then(function (html) {
        var old = document.getElementById("summary");
        if (html && old) old.outerHTML = html;
      }).catch(function () {});
    }, 250);
  }

  function countStep() {
    var total = document.getElementById("step-total");
    if (total) total.textContent = String((parseInt(total.textContent, 10) || 0) + 1);
  }

  // The step still running: one row at the end of the last page, replaced when it ends.
  function dropInflight() {
    var r = document.getElementById("inflight");
    if (r) r.remove();
  }
  source.addEventListener("inflight", function (e) {
    var d = JSON.parse(e.data);
    dropInflight();
    if (!d.html || !body || !lastPage || rows >= pageSize) return;
    var empty = body.querySelector("tr.empty");
    if (empty) empty.remove();
    body.insertAdjacentHTML("beforeend", d.html);
  });

  source.addEventListener("step", function (e) {
    var d = JSON.parse(e.data);
    if (!d.html) return;
    dropInflight();
    countStep();
    if (body && lastPage && rows < pageSize) {
      var empty = body.querySelector("tr.empty");
      if (empty) empty.remove();
      body.insertAdjacentHTML("beforeend", d.html);
      var row = body.lastElementChild;
      if (row) row.classList.add("new");
      rows += 1;
    } else if (newer) {
      waiting += 1;
      newer.hidden = false;
      newer.querySelector("span").textContent = String(waiting);
    }
  });
  source.addEventListener("event", reloadSummary);
  source.addEventListener("problem", function (e) {
    var d = JSON.parse(e.data);
    var note = document.createElement("div");
    note.className = "banner bad";
    note.textContent = d.error || "a damaged trace line";
    var timeline = document.getElementById("timeline");
    if (timeline) timeline.insertBefore(note, timeline.firstChild);
  });
  source.addEventListener("finished", function () {
    source.close();
    dropInflight();
    live.setAttribute("data-state", "finished");
    reloadSummary();
  });
})();
