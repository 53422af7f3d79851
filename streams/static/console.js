// The livelearn console: fetch console.json every few seconds, fill the tables, draw the
// Vega-Lite plots (livelearnRender, from the page). Served by the worker (streams/console.py).
const token = new URLSearchParams(location.hash.slice(1)).get('token');
const headers = token ? {Authorization: 'Bearer ' + token} : {};
const esc = s => String(s ?? '').replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
const num = v => (v === null || v === undefined) ? '' : (Number.isInteger(v) ? String(v) : Number(v).toFixed(3));
const when = ts => ts ? new Date(ts * 1000).toLocaleTimeString() : '';
const json = v => esc(JSON.stringify(v ?? null));
function table(id, head, rows) {
  const el = document.getElementById(id);
  el.innerHTML = '<tr>' + head.map(h => '<th>' + esc(h) + '</th>').join('') + '</tr>' +
    (rows.length ? rows.join('') : '<tr><td colspan="' + head.length + '" class="none">none yet</td></tr>');
}
function show(d) {
  document.getElementById('updated').textContent = 'updated ' + when(d.generated);
  table('lag', ['topic', 'records behind'], Object.entries(d.lag).map(([t, v]) =>
    '<tr><td>' + esc(t) + '</td><td data-metric="lag" data-topic="' + esc(t) + '">' + num(v) + '</td></tr>'));
  document.getElementById('freshness-count').textContent = num(d.freshness.count);
  document.getElementById('latency-count').textContent = num(d.latency.count);
  table('model-metrics', ['model source metric', 'value'], Object.entries(d.model_metrics).map(([k, v]) =>
    '<tr><td>' + esc(k) + '</td><td data-metric="model" data-key="' + esc(k) + '">' + num(v) + '</td></tr>'));
  document.getElementById('serving').textContent = d.serving.join(', ') || 'nothing yet';
  table('alerts', ['time', 'model', 'detector', 'severity', 'signal', 'value', 'action'], d.alerts.map(a =>
    '<tr><td>' + when(a.ts) + '</td><td>' + esc(a.model) + '</td><td>' + esc(a.detector) + '</td><td>' + esc(a.severity) +
    '</td><td>' + esc(a.signal) + '</td><td>' + num(a.value) + '</td><td>' + esc(a.action) + '</td></tr>'));
  table('alert-counts', ['severity', 'alerts raised here'], Object.entries(d.drift_alert_counts).map(([k, v]) =>
    '<tr><td>' + esc(k) + '</td><td data-metric="drift_alerts" data-severity="' + esc(k) + '">' + num(v) + '</td></tr>'));
  table('jobs', ['time', 'job', 'kind', 'gate', 'version', 'candidate', 'serving before'], d.jobs.map(j =>
    '<tr><td>' + when(j.ts) + '</td><td>' + esc(j.job_id) + '</td><td>' + esc(j.kind) + '</td><td class="gate-' + esc(j.status) + '">' +
    esc(j.status) + (j.reason ? ' (' + esc(j.reason) + ')' : '') + '</td><td>' + esc(j.model_version) + '</td><td>' +
    json(j.metrics) + '</td><td>' + json(j.baseline_metrics) + '</td></tr>'));
  table('versions', ['version', 'status', 'kind', 'job', 'metrics'], d.versions.map(v =>
    '<tr><td>' + esc(v.version) + (v.serving ? ' <b>(serving)</b>' : '') + '</td><td>' + esc(v.status) + '</td><td>' +
    esc(v.kind) + '</td><td>' + esc(v.job_id) + '</td><td>' + json(v.metrics) + '</td></tr>'));
  table('dead', ['topic', 'dead letters', 'latest reasons'], d.dead_letters.map(r =>
    '<tr><td>' + esc(r.topic) + '</td><td data-metric="dead_letters" data-topic="' + esc(r.topic) + '">' + num(r.count) +
    '</td><td>' + r.latest.map(x => '<div>@' + esc(x.offset) + ': ' + esc(x.error) + '</div>').join('') + '</td></tr>'));
  for (const [name, spec] of Object.entries(d.plots)) {
    livelearnRender(document.getElementById('plot-' + name), spec);
  }
  document.body.dataset.loaded = String(d.generated);
}
async function refresh() {
  try {
    const r = await fetch('console.json', {headers, cache: 'no-store'});
    if (!r.ok) { throw new Error(r.status + ' ' + (await r.text())); }
    show(await r.json());
    document.getElementById('error').textContent = '';
  } catch (e) {
    document.getElementById('error').textContent = 'console.json: ' + e.message;
  }
}
refresh();
setInterval(refresh, window.LIVELEARN_REFRESH_MS || 3000);
