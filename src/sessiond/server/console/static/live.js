// The sessions page's seat counts, refreshed from /console/seats.json while someone is there.
// It stops while the tab is hidden and once nobody has touched the page for data-idle seconds,
// so that an unattended tab does not keep its console session alive past the inactivity limit.
(function () {
  "use strict";
  var box = document.getElementById("seats");
  if (!box) {
    return;
  }
  var every = Number(box.dataset.refresh) * 1000;
  var idle = Number(box.dataset.idle) * 1000;
  var status = document.getElementById("seats-status");
  if (!(every > 0)) {
    return;
  }
  var lastInput = Date.now();
  var timer = null;
  ["keydown", "mousedown", "mousemove", "wheel", "touchstart", "focus"].forEach(function (name) {
    window.addEventListener(name, function () { lastInput = Date.now(); }, { passive: true });
  });

  function show(rows, at) {
    rows.forEach(function (row) {
      var line = box.querySelector('tr[data-type="' + row.type + '"]');
      if (!line) {
        return;
      }
      line.querySelector(".in-use").textContent = String(row.in_use);
      line.querySelector(".seats-total").textContent = row.seats === null ? "not limited" : String(row.seats);
      line.querySelector(".free").textContent = row.free === null ? "\u2014" : String(row.free);
    });
    status.textContent = "updated " + at + " UTC";
  }

  function stop(text) {
    window.clearInterval(timer);
    status.textContent = text;
  }

  function tick() {
    if (document.hidden) {
      return;
    }
    if (Date.now() - lastInput > idle) {
      status.textContent = "paused while no one uses the page";
      return;
    }
    fetch(box.dataset.url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) {
          stop("your console session has ended: reload the page");
          return null;
        }
        return response.ok ? response.json() : null;
      })
      .then(function (data) {
        if (data && data.Seats) {
          show(data.Seats, data.At);
        }
      })
      .catch(function () {
        status.textContent = "the server did not answer; trying again";
      });
  }

  timer = window.setInterval(tick, every);
})();
