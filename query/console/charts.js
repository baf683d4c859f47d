// Charts of the console, drawn by uPlot (vendored; loaded before this
// module as the global `uPlot`). One helper per kind of picture, so every
// page draws the same way: times in UTC seconds, gaps where a step has no
// figure, drag to zoom and double-click to reset (uPlot's own cursor).

/** Line colours, in order. */
export const COLORS = ['#1f6feb', '#d97706', '#059669', '#9333ea', '#dc2626', '#0891b2'];

/** Every chart on the page, so a page change can free them. */
const live = new Set();

/** Frees every chart drawn so far. */
export function destroyAll() {
  for (const u of live) u.destroy();
  live.clear();
}

function width(el) {
  return Math.max(320, Math.floor(el.getBoundingClientRect().width || 800));
}

function utc(ts) {
  return uPlot.tzDate(new Date(ts * 1e3), 'Etc/UTC');
}

/** The steps of `[from, to)` at `step` seconds, and each series' figures
 * on them (null where a step has no point). `lines` are
 * `{label, points: [[t, v], …], shift}`: `shift` seconds are added to a
 * line's times (a comparison with yesterday is drawn over today). */
export function alignSteps(from, to, step, lines) {
  const xs = [];
  for (let t = from; t < to; t += step) xs.push(t);
  const index = new Map(xs.map((t, i) => [t, i]));
  const ys = lines.map((line) => {
    const col = new Array(xs.length).fill(null);
    for (const [t, v] of line.points) {
      const i = index.get(t + (line.shift || 0));
      if (i !== undefined) col[i] = v;
    }
    return col;
  });
  return [xs, ...ys];
}

/** A time chart of `data` (`[xs, ys…]`) in `el`: `lines` give each y
 * column's label and style (`dash`, `color`, `points`), `band` the indexes
 * of a low and a high column to fill between in grey (drawn without
 * lines), `height` in pixels, `onZoom(from, to)` called with the x range
 * shown after each zoom (the whole range again after a double-click),
 * `minSpan` the fewest seconds the x axis shows (a chart of a few readings
 * would otherwise stretch them over years). Returns the uPlot instance. */
export function timeChart(el, data, { lines, band, height = 260, title, onZoom, minSpan } = {}) {
  const series = [{ label: 'time (UTC)' }];
  lines.forEach((l, i) => {
    const hidden = band && (i + 1 === band[0] || i + 1 === band[1]);
    series.push({
      label: l.label,
      stroke: hidden ? 'rgba(0,0,0,0)' : l.color || COLORS[i % COLORS.length],
      width: hidden ? 0 : l.width || 1.5,
      dash: l.dash,
      spanGaps: false,
      ...(l.points ? { points: l.points } : {}),
    });
  });
  const opts = {
    title,
    width: width(el),
    height,
    tzDate: utc,
    series,
    scales: { x: minSpan ? { time: true, range: (u, lo, hi) => [Math.min(lo, hi - minSpan), hi] } : { time: true } },
    cursor: { drag: { x: true, y: false } },
    legend: { live: true },
    hooks: onZoom ? { setScale: [(u, key) => { if (key === 'x') onZoom(u.scales.x.min, u.scales.x.max); }] } : {},
  };
  if (band) {
    opts.bands = [{ series: band.slice().reverse(), fill: 'rgba(120,120,120,0.22)' }];
  }
  const u = new uPlot(opts, data, el);
  live.add(u);
  el.dataset.lines = lines.map((l) => l.label).join('|');
  el.dataset.points = String(data[0].length);
  el.dataset.nonNull = data.slice(1).map((col) => col.filter((v) => v !== null).length).join(',');
  return u;
}
