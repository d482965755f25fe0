// The time series chart (uPlot): water area and valid fraction by acquisition date. A click on
// a point steps the map to that date.
import uPlot from "uplot";

let plot = null;

function seconds(value) {
  const t = Date.parse(value);
  return Number.isNaN(t) ? null : t / 1000;
}

export function drawChart(container, series, onPick) {
  if (plot) {
    plot.destroy();
    plot = null;
  }
  container.replaceChildren();
  const points = series
    .map((e, i) => ({ i, x: seconds(e.datetime), area: e.water_area_km2,
                      valid: e.valid_fraction === null ? null : e.valid_fraction * 100 }))
    .filter((p) => p.x !== null)
    .sort((a, b) => a.x - b.x);
  const summary = points.map((p) => `${new Date(p.x * 1000).toISOString().slice(0, 10)}: `
                                    + `${p.area === null ? "?" : p.area.toFixed(3)} km²`);
  container.setAttribute("aria-label", points.length
    ? `Water area over time. ${summary.join("; ")}.` : "No dated result to chart.");
  if (!points.length) {
    const p = document.createElement("p");
    p.className = "hint";
    p.textContent = "No dated result to chart.";
    container.append(p);
    return;
  }
  const width = Math.max(container.clientWidth || 0, 260);
  const opts = {
    width, height: 170,
    legend: { show: true, live: false },
    cursor: { points: { size: 8 } },
    scales: {
      // one date alone: a month around it rather than uPlot's default span of years
      x: { time: true, range: (u, min, max) => (min === max ? [min - 15 * 86400, max + 15 * 86400]
                                                             : [min, max]) },
      y: { range: (u, min, max) => [0, Math.max(max * 1.15, 0.001)] },
      pct: { range: [0, 100] },
    },
    axes: [
      { stroke: "#495057", grid: { stroke: "#eee" } },
      { label: "km²", stroke: "#0b5bd3", grid: { stroke: "#eee" }, size: 50 },
      { scale: "pct", side: 1, label: "valid %", stroke: "#868e96", grid: { show: false },
        size: 45 },
    ],
    series: [
      {},
      { label: "water km²", stroke: "#0070ff", width: 2, points: { show: true, size: 7 },
        value: (u, v) => (v === null ? "–" : v.toFixed(3)) },
      { label: "valid %", scale: "pct", stroke: "#868e96", width: 1, dash: [4, 4],
        points: { show: true, size: 5 }, value: (u, v) => (v === null ? "–" : v.toFixed(1)) },
    ],
  };
  const data = [points.map((p) => p.x), points.map((p) => p.area), points.map((p) => p.valid)];
  plot = new uPlot(opts, data, container);
  plot.over.addEventListener("click", () => {
    const idx = plot.cursor.idx;
    if (idx !== null && idx !== undefined && points[idx]) onPick(points[idx].i);
  });
}
