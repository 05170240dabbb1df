/**
 * The dashboard: one self-contained page (no build step) that reads the same JSON API as
 * everyone else. The admin token, when auth is on, is asked for once and kept in the
 * browser's localStorage.
 */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>asg-id-registry</title>
<style>
  :root { --leased: #2e9d5b; --free: #d9dde3; --cooling: #e8a33d; --retired: #6b7280; --expired: #d64545; }
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1f2933; background: #f7f8fa; }
  header { display: flex; flex-wrap: wrap; gap: 24px; align-items: baseline; padding: 16px 24px; background: #fff; border-bottom: 1px solid #e3e6ea; }
  h1 { font-size: 18px; margin: 0; }
  .counts span { margin-right: 16px; }
  .dot { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; vertical-align: -1px; }
  .banner { padding: 10px 24px; font-weight: 600; display: none; }
  .banner.degraded { display: block; background: #fde8e8; color: #9b1c1c; border-bottom: 1px solid #f5b5b5; }
  .banner.unhealthy { display: block; background: #1f2933; color: #fff; }
  main { padding: 16px 24px; }
  #grid { display: flex; flex-wrap: wrap; gap: 3px; }
  .cell { width: 14px; height: 14px; border-radius: 2px; cursor: default; }
  /* A small pool: each cell says its identifier. */
  #grid.labelled { gap: 4px; }
  #grid.labelled .cell { width: auto; height: auto; padding: 2px 6px; font: 11px/16px ui-monospace, SFMono-Regular, Menlo, monospace; color: #1f2933; }
  #grid.labelled .cell.leased, #grid.labelled .cell.retired, #grid.labelled .cell.expired { color: #fff; text-shadow: 0 0 2px rgba(0, 0, 0, .6); }
  #grid.labelled .cell.retired-held { padding: 2px 8px; }
  .cell.leased { background: var(--leased); } .cell.free { background: var(--free); }
  .cell.cooling { background: var(--cooling); } .cell.retired { background: var(--retired); }
  /* Expired but not reclaimed yet: still the owner's (it may renew), but the reaper will take it. */
  .cell.expired, .dot.expired { background: repeating-linear-gradient(135deg, var(--leased) 0 3px, var(--expired) 3px 6px); }
  /* Retired from the pool file but still held: it leaves the pool when freed. */
  .cell.retired-held, .dot.retired-held { box-shadow: inset 0 0 0 3px var(--retired); }
  #tip { position: fixed; pointer-events: none; background: #1f2933; color: #fff; padding: 6px 8px; border-radius: 4px; font-size: 12px; display: none; white-space: pre; }
  .muted { color: #6b7280; }
  form#login { display: none; margin: 24px; }
  form#login input { font: inherit; padding: 4px 8px; width: 320px; }
  #login-error { color: #9b1c1c; font-weight: 600; margin-top: 8px; }
</style>
</head>
<body>
<header>
  <h1>asg-id-registry</h1>
  <div class="counts" id="counts"></div>
  <div class="muted"><span id="reaper"></span><span id="reaper-reason"></span></div>
  <div class="muted" id="updated"></div>
</header>
<div class="banner" id="banner"></div>
<form id="login"><label>Admin token <input id="token" type="password" autocomplete="off"></label> <button>Use</button><div id="login-error" role="alert"></div></form>
<main>
  <div id="grid" role="list" aria-label="identifiers"></div>
  <p class="muted" id="more"></p>
</main>
<div id="tip"></div>
<script>
(function () {
  'use strict';
  var PAGE = 10000, REFRESH_MS = 5000;
  /** Up to this many identifiers, each cell shows its name; above, the cells are squares (the name is in its label and tooltip). */
  var LABELLED_MAX = 256;
  var COLORS = { leased: 'var(--leased)', free: 'var(--free)', cooling: 'var(--cooling)', retired: 'var(--retired)' };
  var $ = function (id) { return document.getElementById(id); };
  var token = localStorage.getItem('idreg-token') || '';
  var lastOk = 0;
  /** Counted from the listing, which needs an admin token: null (shown as a dash) until it is read, never a 0 that may be false. */
  var marks = null;
  var UNKNOWN = '\u2014';

  function human(s) {
    s = Math.max(0, Math.floor(s));
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60), x = s % 60;
    return d ? d + 'd' + h + 'h' : h ? h + 'h' + m + 'm' : m ? m + 'm' + x + 's' : x + 's';
  }

  function get(path) {
    var headers = token ? { Authorization: 'Bearer ' + token } : {};
    return fetch(path, { headers: headers }).then(function (r) {
      return r.json().then(function (body) { return { status: r.status, body: body, date: Date.parse(r.headers.get('date') || '') }; });
    });
  }

  function renderHealth(h) {
    var b = h.body, banner = $('banner');
    banner.className = 'banner';
    if (b.status === 'degraded') { banner.className = 'banner degraded'; banner.textContent = 'Degraded: ' + ((b.pool_file && b.pool_file.reason) || b.reaper.reason || 'the reaper is held'); }
    if (b.status === 'unhealthy') { banner.className = 'banner unhealthy'; banner.textContent = 'Unhealthy: ' + (b.error || 'the database cannot be read'); }
    if (b.pool) {
      var unknownTitle = marks ? '' : ' title="counted from the listing, which needs an admin token"';
      $('counts').innerHTML = ['leased', 'free', 'cooling', 'retired'].map(function (s) {
        return '<span data-count="' + s + '"><i class="dot" style="background:' + COLORS[s] + '"></i>' + s + ' <b>' + b.pool[s] + '</b></span>';
      }).join('') + '<span>total <b>' + b.pool.total + '</b></span>' +
        '<span data-count="expired"' + unknownTitle + '><i class="dot expired"></i>expired, not reclaimed <b>' + (marks ? marks.expired + marks.more : UNKNOWN) + '</b></span>' +
        '<span data-count="retired-held"' + unknownTitle + '><i class="dot retired-held" style="background:var(--leased)"></i>retired, still held <b>' + (marks ? marks.retiredHeld + marks.more : UNKNOWN) + '</b></span>';
    }
    var r = b.reaper;
    $('reaper').textContent = 'up ' + b.uptime + ' · reaper: ' + (r.last_run_at ? 'last sweep ' + human((h.date - Date.parse(r.last_run_at)) / 1000) + ' ago, reclaimed ' + r.last_reclaimed : 'not run yet') + (r.held ? ' · HELD' : '');
    // Why the last sweep reclaimed nothing of what has expired (the startup grace, say): the
    // banner says it when the guard holds; otherwise it is said here.
    $('reaper-reason').textContent = r.reason && !r.held ? ' · ' + r.reason : '';
  }

  function until(iso, now) { return human((Date.parse(iso) - now) / 1000); }

  /** The tooltip: who holds it and since when; when an expired one will be reclaimed, a cooling one free. */
  function tipOf(x, now, expired) {
    var lines = [x.identifier + '  ' + x.status + (x.retired ? ' (retired)' : '')];
    if (x.client_id) {
      lines.push('owner ' + x.client_id + '  epoch ' + x.epoch);
      if (x.instance) lines.push('zone ' + x.instance.availability_zone + '  ' + x.instance.instance_type + '  account ' + x.instance.account_id);
      lines.push('last seen ' + human((now - Date.parse(x.last_seen)) / 1000) + ' ago');
      lines.push(expired ? 'expired ' + human((now - Date.parse(x.expires_at)) / 1000) + ' ago, not reclaimed yet (the owner can still renew)'
        : 'expires in ' + until(x.expires_at, now) + ' without liveness');
      if (x.retired) lines.push('retired from the pool file: leaves the pool once freed');
    } else {
      lines.push('epoch ' + x.epoch);
      if (x.status === 'cooling' && x.available_at) lines.push('free in ' + until(x.available_at, now) + ' (at ' + x.available_at.slice(11, 19) + ' UTC)');
    }
    if (x.watermark !== null && x.watermark !== undefined) lines.push('watermark ' + x.watermark + ' (the next holder stays above it)');
    return lines.join('\\n');
  }

  /** What a cell is, in words: its accessible name (and what a test or a screen reader reads). */
  function labelOf(x, expired) {
    return x.identifier + ': ' + x.status + (x.retired ? ' (retired)' : '') + (x.client_id ? ', held by ' + x.client_id : '') +
      (expired ? ', expired, not reclaimed yet' : '');
  }

  function renderGrid(res) {
    // "Now" is the registry's (its Date header), so expiry does not depend on this machine's clock.
    var now = res.date || Date.now(), grid = $('grid'), frag = document.createDocumentFragment();
    var labelled = res.body.length <= LABELLED_MAX;
    // Only the first page is listed: beyond it there may be more ("3+").
    marks = { expired: 0, retiredHeld: 0, more: res.body.length >= PAGE ? '+' : '' };
    res.body.forEach(function (x) {
      var c = document.createElement('div');
      var expired = x.status === 'leased' && !!x.expires_at && Date.parse(x.expires_at) <= now;
      var retiredHeld = x.retired === true && !!x.client_id;
      if (expired) marks.expired++;
      if (retiredHeld) marks.retiredHeld++;
      c.className = 'cell ' + x.status + (expired ? ' expired' : '') + (retiredHeld ? ' retired-held' : '');
      c.setAttribute('role', 'listitem');
      c.setAttribute('aria-label', labelOf(x, expired));
      if (labelled) c.textContent = x.identifier;
      c.dataset.identifier = x.identifier;
      c.dataset.status = x.status;
      c.dataset.owner = x.client_id || '';
      c.dataset.zone = x.instance ? x.instance.availability_zone : '';
      c.dataset.expired = String(expired);
      c.dataset.retired = String(x.retired === true);
      c.dataset.tip = tipOf(x, now, expired);
      frag.appendChild(c);
    });
    grid.className = labelled ? 'labelled' : '';
    grid.replaceChildren(frag);
    $('more').textContent = res.body.length >= PAGE ? 'Showing the first ' + PAGE + ' identifiers.' : '';
  }

  /** Asks for a token, saying why: none yet, refused, or not an admin token. */
  function askForToken(status) {
    $('grid').replaceChildren();
    marks = null;
    $('login').style.display = 'block';
    $('login-error').textContent = !token ? ''
      : status === 403 ? 'That token is not an admin token (403): listing needs one of the registry\\'s ADMIN_TOKENS.'
      : 'The registry refused that token (401): use one of its ADMIN_TOKENS.';
    if (token) localStorage.removeItem('idreg-token');
  }

  function refresh() {
    Promise.all([get('/health'), get('/identifiers?limit=' + PAGE)]).then(function (rs) {
      if (rs[1].status === 401 || rs[1].status === 403) { askForToken(rs[1].status); renderHealth(rs[0]); return; }
      $('login').style.display = 'none';
      renderGrid(rs[1]);
      renderHealth(rs[0]);
      lastOk = Date.now();
    }).catch(function () { $('banner').className = 'banner unhealthy'; $('banner').textContent = 'The registry cannot be reached.'; });
  }

  $('login').addEventListener('submit', function (e) {
    e.preventDefault();
    token = $('token').value.trim();
    localStorage.setItem('idreg-token', token);
    refresh();
  });
  $('grid').addEventListener('mousemove', function (e) {
    var t = e.target, tip = $('tip');
    if (!t.dataset || !t.dataset.tip) { tip.style.display = 'none'; return; }
    tip.textContent = t.dataset.tip;
    tip.style.left = (e.clientX + 12) + 'px';
    tip.style.top = (e.clientY + 12) + 'px';
    tip.style.display = 'block';
  });
  $('grid').addEventListener('mouseleave', function () { $('tip').style.display = 'none'; });
  setInterval(function () { if (lastOk) $('updated').textContent = 'updated ' + human((Date.now() - lastOk) / 1000) + ' ago'; }, 1000);
  setInterval(refresh, REFRESH_MS);
  refresh();
})();
</script>
</body>
</html>
`;
