// store-monitoring pages: the little that needs JavaScript. Everything else works without it.
// - Run a report from the dashboard through the JSON API (POST /trigger_report) and follow its progress
//   (GET /get_report), then open the report's page.
// - Follow a running report on its page, and reload the page once it is done.
// - With an API token (SM_API_TOKEN), send it as `Authorization: Bearer` from this tab's sessionStorage.
"use strict";
(function () {
  var TOKEN_KEY = "sm_token";
  var POLL_MS = 500;

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY); } catch (e) { return null; }
  }
  function setToken(value) {
    try {
      if (value) { sessionStorage.setItem(TOKEN_KEY, value); } else { sessionStorage.removeItem(TOKEN_KEY); }
    } catch (e) { /* storage unavailable: the cookie still opens the pages */ }
  }

  // fetch() with the token; asks for it once when the API answers 401.
  function api(url, options, retried) {
    options = options || {};
    var headers = Object.assign({ "Accept": "application/json" }, options.headers || {});
    var current = token();
    if (current) { headers["Authorization"] = "Bearer " + current; }
    return fetch(url, Object.assign({}, options, { headers: headers, credentials: "same-origin" }))
      .then(function (response) {
        if (response.status === 401 && !retried && document.body.dataset.auth === "required") {
          var entered = window.prompt("The API token (SM_API_TOKEN):");
          if (entered) { setToken(entered.trim()); return api(url, options, true); }
        }
        return response;
      });
  }

  function errorText(response, body) {
    if (body && typeof body.error === "string") { return body.error; }
    if (body && typeof body.message === "string") { return body.message; }
    if (body && body.detail) { return JSON.stringify(body.detail); }
    return "the service answered " + response.status;
  }

  function readJson(response) {
    return response.json().catch(function () { return null; })
      .then(function (body) { return { response: response, body: body }; });
  }

  function percent(value) { return Math.round(100 * (value || 0)) + " %"; }

  // Follow a report until it is done; `onProgress(fraction)`, then `onDone(answer)` or `onError(text)`.
  function follow(reportId, onProgress, onDone, onError) {
    function tick() {
      api("/get_report?report_id=" + encodeURIComponent(reportId)).then(readJson).then(function (r) {
        if (!r.response.ok) { onError(errorText(r.response, r.body)); return; }
        if (r.body.status === "Running") { onProgress(r.body.progress); setTimeout(tick, POLL_MS); return; }
        if (r.body.status === "Failed") { onError("the report failed: " + r.body.error); return; }
        onProgress(1);
        onDone(r.body);
      }).catch(function (e) { onError("cannot reach the service (" + e + ")"); });
    }
    tick();
  }

  function setupTrigger(form) {
    var message = document.getElementById("trigger-message");
    var box = document.getElementById("trigger-progress");
    var bar = document.getElementById("trigger-progress-bar");
    var text = box.querySelector(".progress-text");
    var button = document.getElementById("trigger-button");
    var reach = form.elements["reach_minutes"];
    var unbounded = form.elements["unbounded"];

    function syncReach() { reach.disabled = unbounded.checked; }
    unbounded.addEventListener("change", syncReach);
    syncReach();

    function say(textValue, isError) {
      message.textContent = textValue;
      message.classList.toggle("error", !!isError);
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var body = {};
      var asOf = form.elements["as_of"].value;
      if (asOf) { body.as_of = asOf + (asOf.length === 16 ? ":00" : "") + "Z"; }
      if (unbounded.checked) {
        body.reach_minutes = null;
      } else if (reach.value !== "") {
        body.reach_minutes = parseInt(reach.value, 10);
      }
      var ids = form.elements["store_ids"].value.split(/[\s,;]+/).filter(function (s) { return s; });
      if (ids.length) { body.store_ids = ids; }
      if (form.elements["extended"].checked) { body.columns = "extended"; }

      button.disabled = true;
      say("Starting the report…");
      api("/trigger_report", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body)
      }).then(readJson).then(function (r) {
        if (r.response.status !== 202) {
          button.disabled = false;
          say("Not started: " + errorText(r.response, r.body), true);
          return;
        }
        var id = r.body.report_id;
        box.hidden = false;
        say("Report " + id + " is running.");
        follow(id, function (fraction) {
          bar.value = fraction || 0;
          text.textContent = percent(fraction);
        }, function () {
          say("Report " + id + " is complete; opening it…");
          window.location.assign("/reports/" + id + "/view");
        }, function (problem) {
          button.disabled = false;
          say(problem, true);
        });
      }).catch(function (e) {
        button.disabled = false;
        say("Cannot reach the service (" + e + ")", true);
      });
    });
  }

  function setupProgress(box) {
    var bar = box.querySelector("progress");
    var text = box.querySelector(".progress-text");
    follow(box.dataset.reportId, function (fraction) {
      bar.value = fraction || 0;
      text.textContent = percent(fraction);
    }, function () { window.location.reload(); }, function (problem) {
      text.textContent = problem;
      if (/failed/.test(problem)) { window.location.reload(); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var login = document.getElementById("login-form");
    if (login) {
      login.addEventListener("submit", function () { setToken(login.elements["token"].value.trim()); });
    }
    document.querySelectorAll("[data-logout]").forEach(function (button) {
      button.addEventListener("click", function () { setToken(null); });
    });
    var trigger = document.getElementById("trigger-form");
    if (trigger) { setupTrigger(trigger); }
    document.querySelectorAll("[data-report-progress]").forEach(setupProgress);
  });
})();
