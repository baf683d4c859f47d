// The Spoolhouse console: pages over the query service's JSON API, routed
// by the URL's fragment (`#series?event=vote&…`), so every view is a link
// that can be kept and shared. Text from the API is only ever set as text
// (never as HTML). Each page sets `data-ready` on <body> once drawn, and
// `data-error` if the API refused, so a reader (or a test) knows when the
// page is complete.

import { alignSteps, COLORS, destroyAll, timeChart } from '/console/charts.js';

const STEPS = { minute: 60, '5min': 300, hour: 3600, day: 86400 };
const RANGES = { '1h': 3600, '6h': 21600, '24h': 86400, '7d': 604800, '30d': 2592000 };
const COMPARE = { none: 0, yesterday: 86400, last_week: 604800 };
/** Health is read this often while its page is open. */
const HEALTH_POLL_MS = 2000;
/** Samples of the health history chart kept (10 minutes at 2 s). */
const HEALTH_HISTORY_MAX = 300;
/** Drops charted with their two windows; the rest are listed. */
const DROPS_CHARTED = 10;

let registry = null;
let healthTimer = null;
const healthHistory = new Map();

// ---- small helpers ---------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'data') Object.assign(el.dataset, v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

class ApiError extends Error {}

/** GETs `path` with `params` (arrays repeat a parameter); the JSON answer,
 * or an ApiError carrying the service's own message. */
async function api(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    for (const x of [].concat(v)) if (x !== undefined && x !== null && x !== '') q.append(k, x);
  }
  const s = q.toString();
  const r = await fetch(s ? `${path}?${s}` : path, { headers: { accept: 'application/json' } });
  const body = await r.json().catch(() => ({ error: `HTTP ${r.status} with no JSON body` }));
  if (!r.ok) throw new ApiError(body.error || `HTTP ${r.status}`);
  return body;
}

function fmt(v, digits = 1) {
  if (v === null || v === undefined || Number.isNaN(v)) return '—';
  return Number(v).toLocaleString('en-US', { maximumFractionDigits: digits });
}

function bytes(v) {
  if (v === null || v === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${fmt(v, i ? 1 : 0)} ${units[i]}`;
}

function utc(t) {
  return `${new Date(t * 1000).toISOString().slice(0, 16).replace('T', ' ')} UTC`;
}

/** The finest step giving at most `max` points over `seconds`. */
function stepFor(seconds, max = 240) {
  for (const [name, s] of Object.entries(STEPS)) if (seconds / s <= max) return name;
  return 'day';
}

// ---- series names (docs/api.md, "Series") -----------------------------

function escapeValue(v) {
  return v.replace(/[\\,={}]/g, (c) => `\\${c}`);
}

/** The series name of metric `base` (`vote.count()`) with `dims` (name →
 * value, in the metric's dimension order; empty values left out). */
function seriesName(base, metric, dims) {
  const parts = (metric ? metric.dimensions : [])
    .filter((d) => dims[d.name])
    .map((d) => `${d.name}=${escapeValue(dims[d.name])}`);
  return parts.length ? `${base}{${parts.join(',')}}` : base;
}

/** `{base, event, dims}` of a series name. */
function parseName(name) {
  let i = 0;
  while (i < name.length && name[i] !== '{') i += name[i] === '\\' ? 2 : 1;
  const base = name.slice(0, i);
  const dims = {};
  if (i < name.length) {
    let key = '', cur = '', inValue = false;
    const flush = () => { if (key) dims[key] = cur; key = ''; cur = ''; inValue = false; };
    for (let j = i + 1; j < name.length - 1; j += 1) {
      const c = name[j];
      if (c === '\\') { cur += name[j + 1]; j += 1; } else if (c === '=' && !inValue) { key = cur; cur = ''; inValue = true; } else if (c === ',') flush(); else cur += c;
    }
    flush();
  }
  return { base, event: base.split('.')[0], dims };
}

function metricsOf(event) {
  const e = registry.events.find((x) => x.name === event);
  return e ? e.metrics : [];
}

function eventsWithMetrics() {
  return registry.events.filter((e) => e.metrics.length > 0);
}

// ---- routing ---------------------------------------------------------

function route() {
  const raw = location.hash.replace(/^#/, '');
  const [page, query] = raw.split('?');
  return { page: page || 'series', params: new URLSearchParams(query || '') };
}

function go(page, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    for (const x of [].concat(v)) if (x !== undefined && x !== null && x !== '') q.append(k, x);
  }
  location.hash = `${page}?${q}`;
}

const PAGES = {
  series: seriesPage,
  drops: dropsPage,
  anomalies: anomaliesPage,
  progress: progressPage,
  health: healthPage,
};

async function render() {
  const { page, params } = route();
  clearInterval(healthTimer);
  healthTimer = null;
  destroyAll();
  delete document.body.dataset.ready;
  delete document.body.dataset.error;
  for (const a of document.querySelectorAll('nav a')) {
    a.classList.toggle('current', a.getAttribute('href') === `#${page}`);
  }
  const main = document.getElementById('page');
  main.replaceChildren();
  const draw = PAGES[page] || seriesPage;
  try {
    await draw(main, params);
    document.body.dataset.ready = page;
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    main.append(h('p', { class: 'error' }, e.message));
    document.body.dataset.error = e.message;
    document.body.dataset.ready = page;
  }
}

// ---- controls --------------------------------------------------------

function select(name, options, value, label) {
  const s = h('select', { name });
  for (const o of options) {
    const [v, text] = Array.isArray(o) ? o : [o, o];
    s.append(h('option', { value: v, selected: v === value }, text));
  }
  return h('label', {}, label || name, ' ', s);
}

function input(name, value, label, attrs = {}) {
  return h('label', {}, label || name, ' ', h('input', { name, value: value ?? '', ...attrs }));
}

/** A form whose every change navigates to `page` with its fields. */
function controls(page, fields, extra = {}) {
  const form = h('form', { class: 'controls' }, fields, h('button', { type: 'submit' }, 'Show'));
  const submit = () => {
    const params = { ...extra };
    for (const el of form.elements) if (el.name) params[el.name] = el.value;
    go(page, params);
  };
  form.addEventListener('change', (ev) => { if (ev.target.tagName === 'SELECT') submit(); });
  form.addEventListener('submit', (ev) => { ev.preventDefault(); submit(); });
  return form;
}

function coverage(answer) {
  const missing = answer.missing || [];
  const note = h('p', { id: 'coverage', class: missing.length || answer.partial ? 'partial' : 'whole', data: { missing: missing.join(','), partial: String(!!answer.partial) } });
  if (missing.length) note.append(`Partial: ${missing.join(', ')} did not answer; figures are without ${missing.length > 1 ? 'them' : 'it'}.`);
  else if (answer.partial) note.append('Partial: a shard did not answer; figures may be low.');
  else note.append('Every datacenter answered.');
  return note;
}

/** `from`, `to` of a page: explicit unix seconds, or `range` ending now. */
function timeRange(params, step) {
  const s = STEPS[step] || 60;
  if (params.get('from') && params.get('to')) {
    return { from: Number(params.get('from')), to: Number(params.get('to')) };
  }
  // The current step too: its point grows as its minutes are aggregated.
  const to = Math.ceil(Date.now() / 1000 / s) * s;
  return { from: to - (RANGES[params.get('range')] || RANGES['6h']), to };
}

// ---- series explorer ---------------------------------------------------

async function seriesPage(main, params) {
  const events = eventsWithMetrics();
  let name = params.get('series');
  const parsed = name ? parseName(name) : null;
  const event = parsed ? parsed.event : params.get('event') || events[0].name;
  const metrics = metricsOf(event);
  const base = parsed ? parsed.base : params.get('metric') || metrics[0]?.name;
  const metric = metrics.find((m) => m.name === base) || metrics[0];
  const dims = parsed ? parsed.dims : {};
  if (!parsed) for (const d of metric.dimensions) dims[d.name] = params.get(`d.${d.name}`) || '';
  name = seriesName(metric.name, metric, dims);
  const step = params.get('step') || '5min';
  const scope = params.get('scope') || 'global';
  const compare = params.get('compare') || 'none';
  const { from, to } = timeRange(params, step);
  const explicit = params.get('from') && params.get('to');

  const dimFields = metric.dimensions.map((d) => {
    const list = `values-${d.name}`;
    return [
      input(`d.${d.name}`, dims[d.name], d.name, { list, placeholder: 'all', size: 10 }),
      h('datalist', { id: list }, d.values.map((v) => h('option', { value: v }))),
    ];
  });
  main.append(
    h('h2', {}, 'Series'),
    controls('series', [
      select('event', events.map((e) => e.name), event),
      select('metric', metrics.map((m) => m.name), metric.name),
      dimFields,
      explicit
        ? [input('from', from, 'from (unix s)', { size: 11 }), input('to', to, 'to', { size: 11 })]
        : select('range', Object.keys(RANGES), params.get('range') || '6h', 'last'),
      select('step', Object.keys(STEPS), step),
      select('scope', [['global', 'every DC, merged'], ['each', 'each DC'], ['dc', `this DC (${registry.dc})`]], scope),
      select('compare', [['none', 'no comparison'], ['yesterday', 'vs yesterday'], ['last_week', 'vs last week']], compare),
    ]),
  );
  // `each`: every DC's own line, from one global read split by DC.
  const query = scope === 'each' ? { step, scope: 'global', split: 'dc' } : { step, scope };
  const shift = COMPARE[compare] || 0;
  const [now, before] = await Promise.all([
    api('/v1/series', { ...query, metric: name, from, to }),
    shift ? api('/v1/series', { ...query, metric: name, from: from - shift, to: to - shift }) : null,
  ]);
  const label = (s) => (s.dc ? `${s.dc}${now.missing.includes(s.dc) ? ' (did not answer)' : ''}` : name);
  const lines = now.series.map((s, i) => ({ label: label(s), points: s.points, color: COLORS[i % COLORS.length] }));
  if (before) {
    before.series.forEach((s, i) => lines.push({
      label: `${s.dc ? `${s.dc}, ` : ''}${compare.replace('_', ' ')}`,
      points: s.points,
      shift,
      dash: [6, 4],
      color: before.series.length > 1 ? COLORS[i % COLORS.length] : '#888',
    }));
  }
  const data = alignSteps(now.from, now.to, STEPS[now.step], lines);
  const chart = h('div', { id: 'series-chart', class: 'chart', data: { series: name, step: now.step, from: now.from, to: now.to } });
  main.append(
    coverage(before ? { partial: now.partial || before.partial, missing: [...new Set([...now.missing, ...before.missing])] } : now),
    h('p', { class: 'hint' }, `${name}, ${utc(now.from)} – ${utc(now.to)}, one point per ${now.step}; drag across the chart to zoom, double-click to zoom out.`),
    chart,
  );
  // Zooming shows the same points; for a long history the link reads the
  // zoomed range again at the finest step that keeps the chart readable.
  const zoom = h('p', { id: 'zoom', hidden: true });
  main.append(zoom);
  const onZoom = (lo, hi) => {
    const z = { from: Math.floor(lo / 60) * 60, to: Math.ceil(hi / 60) * 60 };
    const finer = stepFor(z.to - z.from);
    zoom.hidden = z.from <= now.from && z.to >= now.to - STEPS[now.step];
    const link = { ...Object.fromEntries(params), series: name, ...z, step: finer };
    delete link.range;
    zoom.replaceChildren(h('a', { href: `#series?${new URLSearchParams(link)}` },
      `Read ${utc(z.from)} – ${utc(z.to)} again by ${finer}`));
  };
  timeChart(chart, data, { lines, height: 340, onZoom });
}

// ---- drops -------------------------------------------------------------

/** What the drops and anomalies pages share: an event (default the
 * first with metrics), a scope and an optional end `to`, read from
 * `params`; and a form with the event picker, `fields` and the scope. */
function detection(page, params, fields) {
  const q = {
    event: params.get('event') || eventsWithMetrics()[0].name,
    scope: params.get('scope') || 'global',
    to: params.get('to') || undefined,
  };
  const form = (more) => controls(page, [
    select('event', eventsWithMetrics().map((e) => e.name), q.event),
    fields(more),
    select('scope', [['global', 'every DC'], ['dc', `this DC (${registry.dc})`]], q.scope),
  ], q.to ? { to: q.to } : {});
  return { q, form };
}

async function dropsPage(main, params) {
  const { q: base, form } = detection('drops', params, (q) => [
    select('window', ['15m', '30m', '1h', '3h', '6h', '1d'], q.window),
    select('reference', ['previous', 'yesterday', 'last_week'], q.reference),
    select('direction', [['down', 'drops'], ['up', 'rises'], ['both', 'both']], q.direction),
  ]);
  const q = {
    ...base,
    window: params.get('window') || '1h',
    reference: params.get('reference') || 'previous',
    direction: params.get('direction') || 'down',
  };
  main.append(h('h2', {}, 'Drops'), form(q));
  const d = await api('/v1/drops', q);
  main.append(
    coverage(d),
    h('p', { class: 'hint' }, `${d.changes_found} changes among ${d.series_compared} series: ${utc(d.current.from)} – ${utc(d.current.to)} against ${d.reference.kind.replace('_', ' ')} (${utc(d.reference.from)} – ${utc(d.reference.to)}), most significant first.`),
  );
  if (!d.changes.length) {
    main.append(h('p', { class: 'empty' }, 'No significant change in this window.'));
    return;
  }
  const charted = d.changes.slice(0, DROPS_CHARTED);
  const seconds = d.current.to - d.current.from;
  const step = stepFor(seconds);
  const names = charted.map((c) => c.series);
  const [cur, ref] = await Promise.all([
    api('/v1/series', { metric: names, from: d.current.from, to: d.current.to, step, scope: d.scope }),
    api('/v1/series', { metric: names, from: d.reference.from, to: d.reference.to, step, scope: d.scope }),
  ]);
  const list = h('ol', { id: 'drops', class: 'cards' });
  main.append(list);
  const charts = [];
  d.changes.forEach((c, i) => {
    const change = c.change === null ? 'from 0' : `${c.change > 0 ? '+' : ''}${fmt(c.change * 100)} %`;
    const card = h('li', { class: 'card', data: { series: c.series, rank: i + 1 } },
      h('div', { class: 'card-head' },
        h('a', { href: `#series?${new URLSearchParams({ series: c.series, from: d.current.from - seconds, to: d.current.to, step })}` }, c.series),
        h('span', { class: 'figures' }, `${fmt(c.reference)} → ${fmt(c.current)} (${change}), score ${fmt(c.score, 2)}`)));
    list.append(card);
    if (i < charted.length) {
      const el = h('div', { class: 'chart small' });
      card.append(el);
      const shift = d.current.from - d.reference.from;
      const lines = [
        { label: 'current window', points: cur.series[i].points },
        { label: `${d.reference.kind.replace('_', ' ')} window`, points: ref.series[i].points, shift, dash: [6, 4], color: '#888' },
      ];
      charts.push([el, alignSteps(cur.from, cur.to, STEPS[cur.step], lines), lines]);
    }
  });
  for (const [el, data, lines] of charts) timeChart(el, data, { lines, height: 160 });
}

// ---- anomalies -----------------------------------------------------------

async function anomaliesPage(main, params) {
  const { q: base, form } = detection('anomalies', params, (q) => [
    select('window', ['3h', '6h', '12h', '1d', '3d', '7d'], q.window),
    select('step', ['5min', 'hour'], q.step),
  ]);
  const q = { ...base, window: params.get('window') || '6h', step: params.get('step') || 'hour' };
  main.append(h('h2', {}, 'Anomalies'), form(q));
  const a = await api('/v1/anomalies', q);
  main.append(
    coverage(a),
    h('p', { class: 'hint' }, `${a.anomalies_found} alerts among ${a.series_evaluated} series, ${utc(a.from)} – ${utc(a.to)} by ${a.step}, heaviest first. The grey band is the prediction ± 3σ; red points are outside it. Click an alert for its roll-up hierarchy.`),
  );
  if (a.thresholds.length) {
    main.append(h('ul', { class: 'thresholds' }, a.thresholds.map((t) => h('li', {}, `rule ${t.rule} (${t.rule_series}, ${t.condition}): ${t.series} at ${t.violations.map(([ts, v]) => `${utc(ts)} = ${fmt(v)}`).join(', ')}`))));
  }
  if (!a.anomalies.length) {
    main.append(h('p', { class: 'empty' }, 'Nothing outside its band in this range.'));
    return;
  }
  const list = h('ol', { id: 'anomalies', class: 'cards' });
  main.append(list);
  const charts = [];
  a.anomalies.forEach((x, i) => {
    const tree = h('div', { class: 'hierarchy', hidden: true });
    const head = h('button', { type: 'button', class: 'card-head', onclick: () => openHierarchy(tree, x, a) },
      h('strong', {}, x.series),
      h('span', { class: 'figures' }, `weight ${fmt(x.weight)}, ${x.flagged_steps} step${x.flagged_steps === 1 ? '' : 's'} flagged; worst ${utc(x.time)}: ${fmt(x.actual)} against ${fmt(x.prediction)} (${fmt(x.low)} – ${fmt(x.high)}), ${x.method} prediction`));
    const el = h('div', { class: 'chart small' });
    list.append(h('li', { class: 'card', data: { series: x.series, weight: x.weight, rank: i + 1 } }, head, el, tree));
    const xs = x.points.map((p) => p.t);
    const data = [xs,
      x.points.map((p) => p.actual),
      x.points.map((p) => p.prediction),
      x.points.map((p) => p.low),
      x.points.map((p) => p.high),
      x.points.map((p) => (p.flagged ? p.actual : null))];
    const lines = [
      { label: 'actual' },
      { label: 'prediction', dash: [6, 4], color: '#555' },
      { label: 'low' },
      { label: 'high' },
      { label: 'outside the band', color: '#dc2626', width: 0, points: { show: true, size: 9, fill: '#dc2626' } },
    ];
    charts.push([el, data, lines]);
  });
  for (const [el, data, lines] of charts) timeChart(el, data, { lines, band: [3, 4], height: 200 });
}

/** Shows an alert's roll-up hierarchy: the alert and the flagged series
 * it stands for (ancestors it explains, descendants it spreads over),
 * fewest dimensions first, each charted and linked into the explorer. */
async function openHierarchy(tree, alert, answer) {
  if (!tree.hidden) { tree.hidden = true; return; }
  tree.hidden = false;
  if (tree.dataset.drawn) return;
  tree.dataset.drawn = '1';
  const names = [alert.series, ...alert.suppressed].slice(0, 50);
  const depth = (n) => Object.keys(parseName(n).dims).length;
  names.sort((x, y) => depth(x) - depth(y) || x.localeCompare(y));
  const span = answer.to - answer.from;
  tree.append(h('ul', {}, names.map((n) => h('li', { style: `margin-left:${depth(n) * 1.2}em`, class: n === alert.series ? 'cause' : '' },
    h('a', { href: `#series?${new URLSearchParams({ series: n, from: answer.from - span, to: answer.to, step: answer.step, compare: 'last_week' })}` }, n),
    n === alert.series ? ' (the alert)' : ''))));
  let s;
  try {
    s = await api('/v1/series', { metric: names, from: answer.from, to: answer.to, step: answer.step, scope: answer.scope });
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    tree.append(h('p', { class: 'error' }, e.message));
    return;
  }
  const lines = s.series.map((x) => ({ label: x.metric, points: x.points }));
  const el = h('div', { class: 'chart small' });
  tree.append(el);
  timeChart(el, alignSteps(s.from, s.to, STEPS[s.step], lines), { lines, height: 200 });
}

// ---- watch progress ------------------------------------------------------

async function progressPage(main, params) {
  const withState = registry.events.find((e) => e.state);
  main.append(h('h2', {}, 'Watch progress'));
  if (!withState) {
    main.append(h('p', { class: 'empty' }, 'The registry declares no keyed state to look up.'));
    return;
  }
  const [userField, videoField] = withState.state.key;
  const user = params.get('user') || '';
  const videos = params.get('videos') || '';
  main.append(controls('progress', [
    input('user', user, userField, { size: 20 }),
    input('videos', videos, `${videoField || userField} (one, or several with commas)`, { size: 30 }),
  ]));
  if (!user || !videos) {
    main.append(h('p', { class: 'hint' }, `The newest ${withState.state.value} of a ${userField} in each ${videoField}: Redis first, then ClickHouse.`));
    return;
  }
  // The ids are a comma-separated list: the commas must stay commas.
  const list = videos.split(',').map((v) => encodeURIComponent(v.trim())).join(',');
  const answer = await api(`/v1/progress/${encodeURIComponent(user)}?videos=${list}`);
  const table = h('table', { id: 'progress' },
    h('tr', {}, [videoField, withState.state.value, 'event time', 'source', 'missing DCs'].map((x) => h('th', {}, x))));
  for (const it of answer.items) {
    table.append(h('tr', { data: { video: String(it[videoField]) } },
      h('td', {}, String(it[videoField])), h('td', { class: 'value' }, String(it.value)),
      h('td', {}, new Date(it.event_time_ms).toISOString()), h('td', {}, it.source),
      h('td', {}, it.missing.join(', ') || '—')));
  }
  main.append(answer.items.length ? table : h('p', { class: 'empty' }, `No progress for ${userField} ${user} in ${videos} in any datacenter that answered.`));
}

// ---- pipeline health -------------------------------------------------------

function rate(now, before, key) {
  if (!before || now[key] === null || before[key] === null || now[key] === undefined || before[key] === undefined) return null;
  const dt = (now.scraped_at_ms - before.scraped_at_ms) / 1000;
  const d = now[key] - before[key];
  // A smaller total means the service restarted: no rate across that.
  return dt > 0 && d >= 0 ? d / dt : null;
}

async function healthPage(main) {
  main.append(
    h('h2', {}, 'Pipeline health'),
    h('p', { class: 'hint' }, `Every datacenter's collectors and shippers (one of each per app host), relays (relay mode) and query service, read from their /metrics every ${HEALTH_POLL_MS / 1000} s through ${registry.dc}'s query service; rates are the change between two readings.`),
  );
  const table = h('table', { id: 'health' });
  const chart = h('div', { id: 'health-chart', class: 'chart' });
  main.append(table, h('h3', {}, 'Events in per second'), chart);
  let previous = new Map();
  let u = null;
  const poll = async () => {
    const p = await api('/v1/pipeline');
    table.replaceChildren(h('tr', {}, ['datacenter', 'state', 'events/s in', 'spool', 'shipper lag (ClickHouse / Redis)', 'ClickHouse rows/s', 'Redis hits/s', 'services'].map((x) => h('th', {}, x))));
    for (const dc of p.datacenters) {
      const before = previous.get(dc.name);
      const state = !dc.answered ? 'missing' : dc.partial ? 'partial' : 'ok';
      const evps = rate(dc, before, 'events_in_total');
      const lag = dc.shipper_lag_seconds || {};
      // Collectors and shippers run on every app host: "3/3 up", the hosts
      // that did not answer in the title.
      const services = Object.entries(dc.services).map(([n, s]) => {
        const many = s.hosts !== undefined && s.hosts !== 1;
        const text = many ? `${n} ${s.hosts_up}/${s.hosts} up` : `${n} ${s.up ? 'up' : 'down'}`;
        const title = s.error ? (s.down && s.down.length ? `down: ${s.down.join(', ')}; ${s.error}` : s.error) : (s.address || `${s.hosts} hosts`);
        return h('span', { class: s.up ? 'up' : 'down', title }, text);
      });
      // Invalid inbox lines kept for the operator (each collector's /healthz names its file).
      if (dc.inbox_lines_quarantined_total > 0) {
        services.push(h('span', { class: 'down quarantine', title: 'invalid inbox lines kept in the collectors\' quarantine files (rejected.jsonl; each collector\'s /healthz names its file and last entry)' }, ` ${fmt(dc.inbox_lines_quarantined_total)} quarantined`));
      }
      // Relay mode (ADR 0017): each relay, its sessions and spool.
      for (const r of dc.relays || []) {
        const title = r.up ? `${r.address}: ${fmt(r.sessions)} forwarder sessions, spool ${bytes(r.spool_bytes)}` : `${r.address}: ${r.error}`;
        services.push(h('span', { class: r.up ? 'up relay' : 'down relay', title }, ` relay ${r.name} ${r.up ? `up, ${fmt(r.sessions)} sessions` : 'down'}`));
      }
      table.append(h('tr', { class: state, data: { dc: dc.name, state, eventsPerS: evps ?? '' } },
        h('th', {}, dc.name),
        h('td', { class: 'state' }, state === 'missing' ? 'missing: did not answer' : state),
        h('td', {}, fmt(evps)),
        h('td', {}, bytes(dc.spool_bytes)),
        h('td', {}, `${fmt(lag.clickhouse, 2)} s / ${fmt(lag.redis, 2)} s`),
        h('td', {}, fmt(rate(dc, before, 'clickhouse_rows_total'))),
        h('td', {}, fmt(rate(dc, before, 'redis_hits_total'))),
        h('td', { class: 'services' }, services,
          dc.aggregator ? h('span', { class: 'aggregator', title: 'the app host whose shipper aggregates this DC\'s minutes' }, ` aggregator ${dc.aggregator}`) : '',
          dc.silent_hosts ? h('span', { class: 'down', title: 'hosts left out of the DC\'s watermark: their records stopped changing' }, ` ${dc.silent_hosts} silent`) : '')));
      if (!healthHistory.has(dc.name)) healthHistory.set(dc.name, []);
      const hist = healthHistory.get(dc.name);
      // A DC that does not answer has no rate: a gap in its line.
      if (evps !== null || !dc.answered) hist.push([Math.floor(dc.scraped_at_ms / 1000), evps]);
      if (hist.length > HEALTH_HISTORY_MAX) hist.shift();
    }
    table.dataset.missing = p.missing.join(',');
    previous = new Map(p.datacenters.map((d) => [d.name, d]));
    const names = [...healthHistory.keys()];
    const xs = [...new Set(names.flatMap((n) => healthHistory.get(n).map(([t]) => t)))].sort((a, b) => a - b);
    const data = [xs, ...names.map((n) => {
      const m = new Map(healthHistory.get(n));
      return xs.map((t) => (m.has(t) ? m.get(t) : null));
    })];
    if (u) u.setData(data);
    else if (xs.length) {
      chart.replaceChildren();
      u = timeChart(chart, data, { lines: names.map((n) => ({ label: n })), height: 220, minSpan: 120 });
    }
    else chart.replaceChildren(h('p', { class: 'hint' }, 'Rates appear with the next reading.'));
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  };
  await poll();
  healthTimer = setInterval(() => poll().catch((e) => {
    table.dataset.error = e.message;
  }), HEALTH_POLL_MS);
}

// ---- start -----------------------------------------------------------------

async function start() {
  try {
    registry = await api('/v1/registry');
  } catch (e) {
    document.getElementById('page').append(h('p', { class: 'error' }, `The query service did not describe its registry: ${e.message}`));
    document.body.dataset.error = e.message;
    return;
  }
  document.getElementById('dc').textContent = `${registry.dc} of ${registry.datacenters.join(', ')}`;
  window.addEventListener('hashchange', render);
  await render();
}

start();
