// Conveyor dashboard: the CSRF header on every htmx request, and the last-hour chart.
(function () {
  "use strict";

  document.addEventListener("htmx:configRequest", function (event) {
    var token = document.body.dataset.csrf;
    if (token) { event.detail.headers["X-CSRF-Token"] = token; }
  });

  var chart = null;

  function seriesData() {
    var element = document.getElementById("series-data");
    if (!element) { return null; }
    var minutes = JSON.parse(element.textContent || "[]");
    return [
      minutes.map(function (m) { return m.minute; }),
      minutes.map(function (m) { return m.succeeded; }),
      minutes.map(function (m) { return m.failed; }),
      minutes.map(function (m) { return m.p95_s === null ? null : m.p95_s; })
    ];
  }

  function size(container) {
    return { width: Math.max(container.clientWidth, 240), height: 220 };
  }

  function drawChart() {
    var container = document.getElementById("chart");
    var data = seriesData();
    if (!container || !data || typeof uPlot === "undefined") { return; }
    if (chart) { chart.setData(data); return; }
    var dims = size(container);
    chart = new uPlot({
      width: dims.width, height: dims.height,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
      series: [
        {},
        { label: "succeeded / min", stroke: "#2e7d32", fill: "rgba(46,125,50,0.12)", width: 2, points: { show: false } },
        { label: "failed / min", stroke: "#c62828", fill: "rgba(198,40,40,0.12)", width: 2, points: { show: false } },
        { label: "p95 run time (s)", stroke: "#6a1b9a", dash: [6, 4], scale: "s", width: 1.5, points: { show: false } }
      ],
      axes: [{}, { label: "tasks" }, { side: 1, scale: "s", label: "seconds", grid: { show: false } }],
      scales: { s: { auto: true } }
    }, data, container);
    window.addEventListener("resize", function () { chart.setSize(size(container)); });
  }

  document.addEventListener("DOMContentLoaded", drawChart);
  document.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail.target && event.detail.target.id === "overview") { drawChart(); }
  });
})();
