// Sonde results: a list of TraceJobs per namespace and a page per job, drawn from the results server's own API
// (/api/v1). Everything from the API goes into the page as text, never as markup; result SVGs are shown only as
// images (the server sends them with a sandboxing Content-Security-Policy). The token lives in an HttpOnly
// cookie set by /login, so this script never holds it after the login form.
'use strict';

const enc = encodeURIComponent;
const SVG_NS = 'http://www.w3.org/2000/svg';
/// Rows of the live tail kept on the page (newest first).
const TAIL_ROWS = 200;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function table(id, headers, rows, numeric = []) {
  const head = el('tr', {}, ...headers.map(h => el('th', {}, h)));
  const body = rows.map(r => el('tr', {}, ...r.map((c, i) => el('td', numeric.includes(i) ? { class: 'num' } : {}, c))));
  return el('table', { id }, el('thead', {}, head), el('tbody', {}, ...body));
}

class Unauthorized extends Error {}

async function problem(res) {
  try {
    const p = await res.json();
    return p.detail || p.title || res.statusText;
  } catch (_) {
    return res.statusText;
  }
}

async function api(path) {
  const res = await fetch(path, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
  if (res.status === 401) throw new Unauthorized(await problem(res));
  if (!res.ok) throw new Error(`${res.status}: ${await problem(res)}`);
  return res.json();
}

const jobsPath = ns => `/api/v1/namespaces/${enc(ns)}/tracejobs`;
const finished = phase => phase === 'Succeeded' || phase === 'Failed';
const fmt = n => (typeof n === 'number' && !Number.isInteger(n) ? n.toFixed(2) : (n ?? ''));

// What the current view must stop when the page changes (a live tail).
let leave = () => {};

function route() {
  leave();
  leave = () => {};
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const main = document.getElementById('app');
  main.replaceChildren();
  const where = document.getElementById('where');
  where.replaceChildren();
  let view;
  if (parts[0] === 'ns' && parts[1] && parts[2] === 'jobs' && parts[3]) {
    where.append(el('a', { href: `#/ns/${enc(parts[1])}` }, parts[1]), ' / ', parts[3]);
    view = jobPage(main, parts[1], parts[3]);
  } else if (parts[0] === 'ns' && parts[1]) {
    where.append(parts[1]);
    view = jobList(main, parts[1]);
  } else if (parts[0] !== 'login' && localStorage.getItem('sonde.namespace')) {
    location.hash = `#/ns/${enc(localStorage.getItem('sonde.namespace'))}`;
    return;
  } else {
    view = Promise.resolve(loginPage(main));
  }
  view.catch(e => {
    if (e instanceof Unauthorized) {
      main.replaceChildren();
      loginPage(main, `Log in again: ${e.message}`);
      return;
    }
    main.append(el('p', { class: 'error', role: 'alert' }, e.message));
  });
}

function loginPage(main, message) {
  const token = el('textarea', {
    id: 'token', rows: '6', required: '', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'kubectl create token <account> --audience sonde-results',
  });
  const namespace = el('input', { id: 'namespace', required: '', value: localStorage.getItem('sonde.namespace') || 'default' });
  const error = el('p', { class: 'error', role: 'alert', id: 'login-error' }, message || '');
  const form = el('form', { id: 'login' },
    el('h2', {}, 'Log in'),
    el('p', { class: 'muted' }, 'Paste a Kubernetes token for this server\'s audience. It is kept in an HttpOnly cookie for this site only.'),
    el('label', { for: 'token' }, 'Token'), token,
    el('label', { for: 'namespace' }, 'Namespace'), namespace,
    el('button', { type: 'submit' }, 'Log in'), error);
  form.addEventListener('submit', async ev => {
    ev.preventDefault();
    error.textContent = '';
    const res = await fetch('/login', {
      method: 'POST', credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ token: token.value.trim() }),
    });
    if (!res.ok) {
      error.textContent = await problem(res);
      return;
    }
    const ns = namespace.value.trim();
    localStorage.setItem('sonde.namespace', ns);
    location.hash = `#/ns/${enc(ns)}`;
  });
  main.append(form);
}

async function jobList(main, ns) {
  const jobs = await api(jobsPath(ns));
  main.append(el('h2', {}, `TraceJobs in ${ns}`));
  if (jobs.length === 0) {
    main.append(el('p', { class: 'muted' }, 'No TraceJobs here yet.'));
    return;
  }
  const rows = jobs.map(j => [
    el('a', { href: `#/ns/${enc(ns)}/jobs/${enc(j.name)}` }, j.name),
    j.probe,
    el('span', { class: `phase ${j.phase}` }, j.phase),
    j.captured, j.breaches, j.upload || '', j.created || '',
  ]);
  main.append(el('section', {}, table('jobs', ['Name', 'Probe', 'Phase', 'Captured', 'Breaches', 'Results', 'Created'], rows, [3, 4])));
}

async function jobPage(main, ns, name) {
  const base = `${jobsPath(ns)}/${enc(name)}`;
  const job = await api(base);
  const st = job.status || {};
  const counts = st.counts || {};
  main.append(
    el('h2', {}, `${name} `, el('span', { class: `phase ${st.phase}`, id: 'phase' }, st.phase || 'Pending')),
    el('p', { class: 'muted', id: 'facts' },
      `probe ${job.probe} · nodes ${st.progress || '–'} · captured ${counts.captured ?? 0} · dropped ${counts.dropped ?? 0}`
      + ` · breaches ${counts.breaches ?? 0}${st.upload ? ` · results ${st.upload.state}` : ''}`));

  const conditions = (st.conditions || []).map(c => [c.type, c.status, c.reason || '', c.message || '', c.lastTransitionTime || '']);
  main.append(el('section', {}, el('h3', {}, 'Conditions'),
    table('conditions', ['Type', 'Status', 'Reason', 'Message', 'Since'], conditions)));

  const summary = el('section', {}, el('h3', {}, 'Summary'));
  const s = st.summary;
  if (s && (s.rows.length || s.figures.length)) {
    summary.append(table('summary', [s.keyMeaning || 'key', 'count', 'per second', 'max'],
      s.rows.map(r => [r.key, r.count, fmt(r.perSecond), fmt(r.max)]), [1, 2, 3]));
    if (s.figures.length) {
      summary.append(table('figures', ['figure', 'value', 'unit'], s.figures.map(f => [f.name, fmt(f.value), f.unit]), [1]));
    }
  } else {
    summary.append(el('p', { class: 'muted' }, 'No summary yet: it comes when the nodes finish.'));
  }
  main.append(summary);

  for (const node of job.nodes) {
    main.append(await nodeResults(`${base}/nodes/${enc(node)}`, node));
  }

  const events = el('tbody');
  const note = el('p', { class: 'muted', id: 'events-note' });
  main.append(el('section', {}, el('h3', {}, 'Events'), note,
    el('table', { id: 'events' }, el('thead', {}, el('tr', {}, el('th', {}, 'node'), el('th', {}, 'event'))), events)));
  if (finished(st.phase)) {
    const page = await api(`${base}/events?limit=${TAIL_ROWS}`);
    page.events.forEach(e => events.append(eventRow(e)));
    note.textContent = page.caughtUp ? `${page.events.length} events` : `the first ${page.events.length} events`;
  } else {
    follow(`${base}/events/tail`, events, note);
  }
}

/// A node's histograms (as charts) and flame graph, whichever it stored.
async function nodeResults(files, node) {
  const section = el('section', { class: 'node' }, el('h3', {}, `Node ${node}`));
  const res = await fetch(`${files}/histograms.json`, { credentials: 'same-origin' });
  if (res.ok) {
    for (const h of await res.json()) section.append(histogramChart(h));
  }
  const img = el('img', { class: 'flamegraph', alt: `flame graph of ${node}`, src: `${files}/flamegraph.svg` });
  const link = el('a', { href: `${files}/flamegraph.svg`, target: '_blank', rel: 'noopener' }, img);
  img.addEventListener('error', () => link.remove());
  section.append(link);
  return section;
}

/// A log2 histogram as horizontal bars, one per non-empty bucket.
function histogramChart(h) {
  const width = 720, row = 18, label = 170, room = 80, top = 22;
  const most = Math.max(1, ...h.buckets.map(b => b.count));
  const chart = svg('svg', {
    class: 'histogram', width, height: top + h.buckets.length * row + 4,
    role: 'img', 'aria-label': `histogram ${h.name}`,
  });
  chart.append(svg('text', { x: 0, y: 14, 'font-weight': '600' }, `${h.name} (${h.unit}, ${h.total} samples)`));
  h.buckets.forEach((b, i) => {
    const y = top + i * row;
    const w = Math.max(1, ((width - label - room) * b.count) / most);
    chart.append(
      svg('text', { x: label - 8, y: y + 13, 'text-anchor': 'end' }, `${b.low} – ${b.high}`),
      svg('rect', { class: 'bar', x: label, y: y + 3, width: w, height: row - 5 }),
      svg('text', { x: label + w + 6, y: y + 13 }, b.count));
  });
  return chart;
}

function eventRow(e) {
  const fields = Object.entries(e).filter(([k]) => k !== 'node')
    .map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : v}`).join(' ');
  return el('tr', {}, el('td', {}, e.node || ''), el('td', { class: 'fields' }, fields));
}

/// The live tail: Server-Sent Events, newest on top; the browser resumes with Last-Event-ID after a drop.
function follow(url, rows, note) {
  const source = new EventSource(url);
  let seen = 0;
  note.textContent = 'following the live tail…';
  source.onmessage = m => {
    seen += 1;
    rows.prepend(eventRow(JSON.parse(m.data)));
    while (rows.rows.length > TAIL_ROWS) rows.deleteRow(-1);
    note.textContent = `live: ${seen} events so far (the newest ${Math.min(seen, TAIL_ROWS)} shown)`;
  };
  source.addEventListener('trouble', m => { note.textContent = `trouble reading results: ${m.data}`; });
  for (const ended of ['refused', 'gone']) {
    source.addEventListener(ended, m => {
      source.close();
      note.textContent = `the live tail ended: ${m.data}`;
    });
  }
  source.addEventListener('end', () => {
    source.close();
    route(); // the job finished: show its final results
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) note.textContent = 'the live tail was refused or ended; reload to retry';
  };
  leave = () => source.close();
}

document.getElementById('logout').addEventListener('click', async () => {
  await fetch('/logout', { method: 'POST', credentials: 'same-origin' });
  location.hash = '#/login';
});
window.addEventListener('hashchange', route);
route();
