/* brume console: one page, plain JavaScript, no framework and no build step.
 * It reads the JSON endpoints under /api/ (see the README) and builds the
 * DOM with textContent only: nothing from the store is ever parsed as HTML.
 * The admin token, when the config has one, is kept for this tab only
 * (sessionStorage) and sent as a header, never as a cookie. */
(function () {
  'use strict';

  var view = document.getElementById('view');
  var statusEl = document.getElementById('status');
  var tokenBox = document.getElementById('token-box');
  var timer = null; /* the current view's refresh */

  /* ---- helpers ---------------------------------------------------------- */

  function el(tag, attrs) {
    var e = document.createElement(tag);
    var k;
    for (k in attrs || {}) {
      if (k === 'text') e.textContent = attrs[k];
      else if (k === 'cls') e.className = attrs[k];
      else if (k.slice(0, 2) === 'on') e.addEventListener(k.slice(2), attrs[k]);
      else if (attrs[k] !== null && attrs[k] !== undefined && attrs[k] !== false) e.setAttribute(k, attrs[k]);
    }
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined) continue;
      e.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function svg(tag, attrs) {
    var e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }

  function say(msg, bad) {
    statusEl.textContent = msg || '';
    statusEl.className = bad ? 'error' : '';
  }

  function time(t) {
    if (!t) return '';
    return new Date(t * 1000).toISOString().replace('T', ' ').slice(0, 19) + 'Z';
  }

  function age(seconds) {
    if (seconds < 90) return Math.round(seconds) + 's';
    if (seconds < 5400) return Math.round(seconds / 60) + 'm';
    if (seconds < 172800) return Math.round(seconds / 3600) + 'h';
    return Math.round(seconds / 86400) + 'd';
  }

  function bytes(n) {
    if (n < 1024) return n + ' B';
    if (n < 1048576) return (n / 1024).toFixed(1) + ' KB';
    if (n < 1073741824) return (n / 1048576).toFixed(1) + ' MB';
    return (n / 1073741824).toFixed(2) + ' GB';
  }

  function pretty(text) {
    try { return JSON.stringify(JSON.parse(text), null, 2); } catch (e) { return text; }
  }

  /* A datetime-local input's value as seconds since the epoch, or ''. */
  function epoch(input) {
    if (!input.value) return '';
    var t = new Date(input.value).getTime();
    return isNaN(t) ? '' : String(Math.floor(t / 1000));
  }

  function query(params) {
    var parts = [];
    for (var k in params)
      if (params[k] !== '' && params[k] !== null && params[k] !== undefined)
        parts.push(encodeURIComponent(k) + '=' + encodeURIComponent(params[k]));
    return parts.length ? '?' + parts.join('&') : '';
  }

  /* Calls the API: resolves with the decoded answer, or rejects with a
   * message (and asks for the token on 401). */
  function api(path, body) {
    var headers = {};
    var token = sessionStorage.getItem('brume-token');
    if (token) headers.Authorization = 'Bearer ' + token;
    var opts = { headers: headers, credentials: 'omit', cache: 'no-store' };
    if (body !== undefined) {
      opts.method = 'POST';
      headers['Content-Type'] = 'application/json';
      headers['X-Brume-Console'] = '1';
      opts.body = JSON.stringify(body);
    }
    return fetch(path, opts).then(function (r) {
      return r.json().catch(function () { return { ok: false, error: r.statusText }; })
        .then(function (data) {
          if (r.status === 401) {
            tokenBox.hidden = false;
            throw new Error('this brume wants its admin token');
          }
          if (!r.ok) throw new Error(data.error || r.statusText);
          return data;
        });
    });
  }

  function failed(err) {
    say(err.message || String(err), true);
  }

  /* A table; HEADS starting with # are numbers. ROWS: a list of rows, or
   * the tbody to use. */
  function table(id, heads, rows) {
    var thead = el('tr');
    heads.forEach(function (h) {
      var num = h.charAt(0) === '#';
      thead.appendChild(el('th', { cls: num ? 'num' : null, text: num ? h.slice(1) : h }));
    });
    var tbody = Array.isArray(rows) ? el('tbody') : rows;
    if (Array.isArray(rows)) rows.forEach(function (r) { tbody.appendChild(r); });
    return el('table', { id: id }, el('thead', null, thead), tbody);
  }

  function td(text, cls) {
    return el('td', { cls: cls || null, text: text === null || text === undefined ? '' : String(text) });
  }

  function stateCell(state) {
    return td(state, 'state-' + state);
  }

  /* A run log (engine.h): [i, rule] for a call that went well, an object
   * for the others. */
  function runs(list) {
    return (list || []).map(function (r) {
      if (Array.isArray(r)) return { i: r[0], rule: r[1], status: 'ok' };
      if (r.more) return { more: r.more };
      return { i: r.i, rule: r.rule, topic: r.topic, status: r.status || 'ok', at: r.at, msg: r.msg };
    });
  }

  function runSummary(list) {
    var ok = 0, bad = 0;
    runs(list).forEach(function (r) {
      if (r.more) return;
      if (r.status === 'ok') ok++;
      else bad++;
    });
    if (!ok && !bad) return '';
    return ok + ' ok' + (bad ? ', ' + bad + ' failed' : '');
  }

  function runsTable(id, list) {
    var rows = runs(list).map(function (r) {
      if (r.more) return el('tr', null, el('td', { colspan: 5, cls: 'muted', text: r.more + ' more calls not listed' }));
      return el('tr', { 'data-status': r.status }, td(r.i, 'num'),
        td(r.rule + (r.topic ? ' (emitted ' + r.topic + ')' : '')), td(r.status, 'st-' + r.status),
        td(r.at || ''), td(r.msg || ''));
    });
    if (!rows.length) return el('p', { cls: 'muted', text: 'No rule ran on it.' });
    return table(id, ['#event', 'rule', 'how', 'where', 'message'], rows);
  }

  /* Bars for a series; CLS colours them. */
  function chart(values, cls, unit) {
    var s = svg('svg', { viewBox: '0 0 120 40', preserveAspectRatio: 'none' });
    var max = Math.max.apply(null, [1].concat(values));
    var w = 120 / 60;
    var start = 60 - values.length;
    values.forEach(function (v, i) {
      var h = v ? Math.max(1, 38 * v / max) : 0;
      var r = svg('rect', { x: (start + i) * w, y: 40 - h, width: w * 0.8, height: h });
      if (cls) r.setAttribute('class', cls);
      var t = svg('title', {});
      t.textContent = v + (unit || '');
      r.appendChild(t);
      s.appendChild(r);
    });
    return s;
  }

  function sum(v) { return v.reduce(function (a, b) { return a + b; }, 0); }

  function card(id, label, value, graph) {
    return el('div', { cls: 'card', id: id }, el('div', { cls: 'label', text: label }),
      el('div', { cls: 'value', text: value }), graph);
  }

  function refreshEvery(seconds, fn) {
    timer = setInterval(function () { if (!document.hidden) fn(); }, seconds * 1000);
  }

  /* ---- overview --------------------------------------------------------- */

  function overview() {
    var root = el('section', { id: 'view-overview' }, el('h2', { text: 'Overview: the last hour' }));
    var body = el('div');
    root.appendChild(body);
    view.appendChild(root);
    function load() {
      api('/api/overview').then(function (o) {
        body.textContent = '';
        var s = o.series;
        var cards = el('div', { cls: 'cards' },
          card('card-requests', 'Requests to sources', sum(s.requests), chart(s.requests)),
          card('card-runs', 'Rule runs', sum(s.runs), chart(s.runs)),
          card('card-errors', 'Rule errors', sum(s.errors), chart(s.errors, 'bad')),
          card('card-done', 'Deliveries done', sum(s.done), chart(s.done, 'ok')),
          card('card-retry', 'Delivery retries', sum(s.retry), chart(s.retry, 'warn')),
          card('card-dead', 'Dead letters', sum(s.dead), chart(s.dead, 'bad')),
          card('card-outbox', 'Outbox: pending (oldest ' + age(o.outbox.oldest_seconds) + ')',
            o.outbox.pending, chart(s.pending, 'warn')),
          card('card-journal', 'Journal: ' + o.journal.rows + ' bodies (cap ' +
            (o.journal.max_bytes ? bytes(o.journal.max_bytes) : 'none') + ')',
            bytes(o.journal.bytes), chart(s.journal_bytes, null, ' B')));
        Object.keys(s.topics).forEach(function (t) {
          if (!sum(s.topics[t]) && t === 'other') return;
          cards.appendChild(card('card-topic-' + t, 'Events: ' + t, sum(s.topics[t]), chart(s.topics[t])));
        });
        body.appendChild(cards);
        body.appendChild(el('h3', { text: 'Rule set ' + o.rule_set + ' (' + o.rules.length + ' rules, brume ' + o.version + ', ' + o.workers + ' workers)' }));
        body.appendChild(table('rules-table', ['rule', 'file', 'topics', 'where'], o.rules.map(function (r) {
          return el('tr', null, td(r.name), td(r.file), td(r.topics.join(', ')), td(r.where ? 'yes' : ''));
        })));
        body.appendChild(el('h3', { text: 'Last reload' }));
        var rl = o.reload;
        if (!rl) {
          body.appendChild(el('p', { id: 'reload', cls: 'muted', text: 'None since brume started.' }));
        } else {
          body.appendChild(el('p', { id: 'reload', text: time(rl.at) + ' (' + rl.trigger + '): ' +
            (rl.ok ? 'ok, the new set runs' : 'failed, the set above stays') }));
          if (!rl.ok) {
            var ul = el('ul', { cls: 'errors', id: 'reload-errors' });
            rl.errors.forEach(function (e) {
              ul.appendChild(el('li', { text: (e.file ? e.file + (e.line ? ':' + e.line : '') + ': ' : '') + e.message }));
            });
            body.appendChild(ul);
          }
        }
        say('updated ' + time(o.now));
      }).catch(failed);
    }
    load();
    refreshEvery(10, load);
  }

  /* ---- events ----------------------------------------------------------- */

  function events() {
    var f = {
      topic: el('input', { id: 'ev-topic', placeholder: 'alarms' }),
      source: el('input', { id: 'ev-source', placeholder: 'mist' }),
      since: el('input', { id: 'ev-since', type: 'datetime-local' }),
      until: el('input', { id: 'ev-until', type: 'datetime-local' }),
      kind: el('select', { id: 'ev-kind' }, el('option', { value: 'text', text: 'text in the body' }),
        el('option', { value: 'field', text: 'event field = value' })),
      match: el('input', { id: 'ev-match', placeholder: 'rogue  or  type=rogue_ap' })
    };
    var rows = el('tbody');
    var more = el('div', { cls: 'more' });
    var next = null;
    function params() {
      var p = { topic: f.topic.value.trim(), source: f.source.value.trim(), since: epoch(f.since), until: epoch(f.until) };
      var m = f.match.value;
      if (m && f.kind.value === 'field') {
        var eq = m.indexOf('=');
        p.field = eq > 0 ? m.slice(0, eq).trim() : m.trim();
        p.value = eq > 0 ? m.slice(eq + 1) : '';
      } else if (m) {
        p.q = m;
      }
      return p;
    }
    function load(older) {
      var p = params();
      if (older) p.before = next;
      api('/api/events' + query(p)).then(function (r) {
        if (!older) rows.textContent = '';
        r.events.forEach(function (e) {
          var tr = el('tr', { cls: 'clickable', 'data-id': e.id, onclick: function () { location.hash = '#event/' + e.id; } },
            el('td', { cls: 'num' }, el('a', { href: '#event/' + e.id, text: e.id })), td(time(e.received)), td(e.source),
            td(e.topic), td(e.events, 'num'), td(bytes(e.bytes), 'num'), td(runSummary(e.runs)));
          rows.appendChild(tr);
        });
        next = r.next;
        more.textContent = '';
        if (next) {
          more.appendChild(el('button', { id: 'ev-older', cls: 'secondary', text: 'Older',
            onclick: function () { load(true); } }));
          if (r.events.length === 0) more.appendChild(el('span', { cls: 'muted', text: ' nothing matched down to #' + next + ' yet' }));
        } else if (!rows.children.length) {
          more.appendChild(el('span', { cls: 'muted', id: 'ev-none', text: 'No body matches.' }));
        }
        say(rows.children.length + ' shown');
      }).catch(failed);
    }
    var bar = el('div', { cls: 'filters' },
      el('label', null, 'topic', f.topic), el('label', null, 'source', f.source),
      el('label', null, 'from', f.since), el('label', null, 'until', f.until),
      el('label', null, 'match', f.kind), el('label', null, '\u00a0', f.match),
      el('button', { id: 'ev-search', text: 'Search', onclick: function () { load(false); } }));
    f.match.addEventListener('keydown', function (e) { if (e.key === 'Enter') load(false); });
    view.appendChild(el('section', { id: 'view-events' }, el('h2', { text: 'Events: the journal, newest first' }), bar,
      el('table', { id: 'events-table' }, el('thead', null, el('tr', null,
        el('th', { cls: 'num', text: 'id' }), el('th', { text: 'received' }), el('th', { text: 'source' }),
        el('th', { text: 'topic' }), el('th', { cls: 'num', text: 'events' }), el('th', { cls: 'num', text: 'size' }),
        el('th', { text: 'rules' }))), rows), more));
    load(false);
  }

  function deliveryRows(list) {
    return list.map(function (d) {
      return el('tr', { cls: 'clickable', 'data-id': d.id, 'data-state': d.state,
        onclick: function () { location.hash = '#delivery/' + d.id; } },
        el('td', { cls: 'num' }, el('a', { href: '#delivery/' + d.id, text: d.id })), td(d.target), td(d.rule),
        td(d.event), stateCell(d.state), td(d.attempts, 'num'), td(d.last_status || '', 'num'),
        td(d.state === 'pending' ? 'next ' + time(d.next_at) : time(d.last_attempt)), td(d.last_error || ''));
    });
  }

  var deliveryHeads = ['#id', 'target', 'rule', 'event', 'state', '#attempts', '#status', 'when', 'last error'];

  function eventView(id) {
    var root = el('section', { id: 'event-view' });
    view.appendChild(root);
    api('/api/event?id=' + encodeURIComponent(id)).then(function (e) {
      root.appendChild(el('h2', { text: 'Body #' + e.id + ': ' + e.topic }));
      root.appendChild(el('dl', { cls: 'kv' },
        el('dt', { text: 'received' }), el('dd', { text: time(e.received) }),
        el('dt', { text: 'source' }), el('dd', { text: e.source }),
        el('dt', { text: 'events' }), el('dd', { text: e.events }),
        el('dt', { text: 'size' }), el('dd', { text: bytes(e.bytes) + (e.truncated ? ' (shown in part)' : '') })));
      root.appendChild(el('div', { cls: 'actions' }, el('button', { id: 'ev-play', cls: 'secondary',
        text: 'Run it in the playground', onclick: function () { location.hash = '#playground/' + e.id; } })));
      root.appendChild(el('div', { cls: 'row' },
        el('div', null, el('h3', { text: 'Body' }), el('pre', { id: 'event-body', text: e.truncated ? e.body : pretty(e.body) })),
        el('div', null, el('h3', { text: 'What the rules did' }), runsTable('runs-table', e.runs),
          el('h3', { text: 'What they sent' }),
          e.sent.length ? table('sent-table', deliveryHeads, deliveryRows(e.sent))
            : el('p', { cls: 'muted', text: 'Nothing.' }))));
      say('');
    }).catch(failed);
  }

  /* ---- deliveries ------------------------------------------------------- */

  function deliveries() {
    var f = {
      status: el('select', { id: 'dl-status' }),
      target: el('input', { id: 'dl-target', placeholder: 'target' }),
      since: el('input', { id: 'dl-since', type: 'datetime-local' }),
      until: el('input', { id: 'dl-until', type: 'datetime-local' })
    };
    ['all', 'pending', 'dead', 'done'].forEach(function (s) { f.status.appendChild(el('option', { value: s, text: s })); });
    var rows = el('tbody');
    var more = el('div', { cls: 'more' });
    var next = null;
    var retryAll = el('button', { id: 'dl-retry-all', cls: 'secondary', text: 'Retry all matching', disabled: true });
    var dropAll = el('button', { id: 'dl-drop-all', cls: 'danger', text: 'Drop all matching', disabled: true });
    function filter() {
      return { status: f.status.value, target: f.target.value.trim(), since: epoch(f.since), until: epoch(f.until) };
    }
    function load(older) {
      var p = filter();
      if (older) p.before = next;
      var all = p.status === 'pending' || p.status === 'dead';
      retryAll.disabled = dropAll.disabled = !all;
      dropAll.textContent = 'Drop all matching';
      api('/api/deliveries' + query(p)).then(function (r) {
        if (!older) rows.textContent = '';
        deliveryRows(r.deliveries).forEach(function (tr) { rows.appendChild(tr); });
        next = r.next;
        more.textContent = '';
        if (next) more.appendChild(el('button', { id: 'dl-older', cls: 'secondary', text: 'Older', onclick: function () { load(true); } }));
        else if (!rows.children.length) more.appendChild(el('span', { cls: 'muted', id: 'dl-none', text: 'No delivery matches.' }));
        say(rows.children.length + ' shown');
      }).catch(failed);
    }
    function change(what) {
      var p = filter();
      var body = { all: true, status: p.status };
      if (p.target) body.target = p.target;
      if (p.since) body.since = Number(p.since);
      if (p.until) body.until = Number(p.until);
      return api('/api/deliveries/' + what, body).then(function (r) {
        say((what === 'retry' ? 'retried ' : 'dropped ') + r.changed);
        load(false);
      }).catch(failed);
    }
    retryAll.addEventListener('click', function () { change('retry'); });
    dropAll.addEventListener('click', function () {
      /* Dropping is for good: a second click says so. */
      if (dropAll.textContent !== 'Click again to drop them') {
        dropAll.textContent = 'Click again to drop them';
        return;
      }
      change('drop');
    });
    f.status.addEventListener('change', function () { load(false); });
    view.appendChild(el('section', { id: 'view-deliveries' }, el('h2', { text: 'Deliveries, newest first' }),
      el('div', { cls: 'filters' }, el('label', null, 'status', f.status), el('label', null, 'target', f.target),
        el('label', null, 'created from', f.since), el('label', null, 'until', f.until),
        el('button', { id: 'dl-search', text: 'Search', onclick: function () { load(false); } }), retryAll, dropAll),
      table('deliveries-table', deliveryHeads, rows), more));
    load(false);
  }

  function deliveryView(id) {
    var root = el('section', { id: 'delivery-view' });
    view.appendChild(root);
    function act(what) {
      api('/api/deliveries/' + what, { id: Number(id) }).then(function () {
        say(what === 'retry' ? 'queued again' : 'dropped');
        if (what === 'drop') location.hash = '#deliveries';
        else show();
      }).catch(failed);
    }
    function show() {
      api('/api/delivery?id=' + encodeURIComponent(id)).then(function (r) {
        var d = r.delivery;
        root.textContent = '';
        root.appendChild(el('h2', { text: 'Delivery #' + d.id + ' to ' + d.target }));
        root.appendChild(el('dl', { cls: 'kv' },
          el('dt', { text: 'state' }), el('dd', { id: 'dv-state', cls: 'state-' + d.state, text: d.state }),
          el('dt', { text: 'key' }), el('dd', { text: d.key }),
          el('dt', { text: 'rule / event' }), el('dd', null, d.rule + ' / ' + d.event + ' (body ',
            el('a', { href: '#event/' + d.key.split(':')[0], text: '#' + d.key.split(':')[0] }), ')'),
          el('dt', { text: 'created' }), el('dd', { text: time(d.created) }),
          el('dt', { text: d.state === 'pending' ? 'next attempt' : 'finished' }),
          el('dd', { text: time(d.state === 'pending' ? d.next_at : d.last_attempt) }),
          el('dt', { text: 'gives up' }), el('dd', { text: time(d.expires) }),
          el('dt', { text: 'last error' }), el('dd', { text: d.last_error || '' })));
        if (d.state !== 'done')
          root.appendChild(el('div', { cls: 'actions' },
            el('button', { id: 'dv-retry', text: 'Retry now', onclick: function () { act('retry'); } }),
            el('button', { id: 'dv-drop', cls: 'danger', text: 'Drop', onclick: function (e) {
              if (e.target.textContent !== 'Click again to drop it') { e.target.textContent = 'Click again to drop it'; return; }
              act('drop');
            } })));
        var req = r.request;
        var reqBox = el('div', null, el('h3', { text: 'The request as sent (secrets masked)' }));
        if (!req) reqBox.appendChild(el('p', { cls: 'muted', text: r.request_note || '' }));
        else if (req.kind === 'plan') reqBox.appendChild(el('pre', { id: 'dv-request', text: pretty(req.plan) }));
        else reqBox.appendChild(el('pre', { id: 'dv-request', text: req.method + ' ' + req.url + '\n' +
          req.headers.join('\n') + (req.signed ? '\n(signed: webhook-id, webhook-timestamp, webhook-signature)' : '') +
          '\n\n' + (req.body !== undefined ? pretty(req.body) : '') }));
        var attempts = r.attempts.map(function (a) {
          return el('tr', null, td(time(a.at)), td(a.status || '', 'num'), td(a.error || ''), td(a.answer || ''));
        });
        root.appendChild(el('div', { cls: 'row' }, reqBox, el('div', null, el('h3', { text: 'Attempts, newest first' }),
          attempts.length ? table('attempts-table', ['at', '#status', 'error', 'answer (start)'], attempts)
            : el('p', { cls: 'muted', id: 'dv-no-attempts', text: 'None yet.' }))));
      }).catch(failed);
    }
    show();
    refreshEvery(3, show);
  }

  /* ---- timers and digests ----------------------------------------------- */

  function timers() {
    var root = el('section', { id: 'view-timers' }, el('h2', { text: 'Timers and digests' }));
    view.appendChild(root);
    function act(what, t) {
      api('/api/timers/' + what, { kind: t.kind, rule: t.rule, key: t.key }).then(function () { root.textContent = ''; timers(); }).catch(failed);
    }
    api('/api/timers').then(function (r) {
      if (!r.timers.length) {
        root.appendChild(el('p', { cls: 'note', id: 'timers-empty', text: r.store ? 'Nothing is pending.' : (r.note || 'No timers yet.') }));
        return;
      }
      root.appendChild(table('timers-table', ['kind', 'rule', 'key', 'due', 'data', ''], r.timers.map(function (t) {
        return el('tr', null, td(t.kind), td(t.rule), td(t.key), td(time(t.due)),
          td(t.kind === 'digest' ? t.count + ' items' : JSON.stringify(t.data)),
          el('td', { cls: 'actions' }, el('button', { cls: 'secondary', text: 'Fire now', onclick: function () { act('fire', t); } }),
            el('button', { cls: 'danger', text: 'Cancel', onclick: function () { act('cancel', t); } })));
      })));
    }).catch(failed);
  }

  /* ---- playground ------------------------------------------------------- */

  /* A request as brume test shows it, its body decoded when it is JSON. */
  function showRequest(r) {
    var copy = {};
    for (var k in r || {}) copy[k] = r[k];
    if (typeof copy.body === 'string') {
      try { copy.body = JSON.parse(copy.body); } catch (e) { /* not JSON: as it is */ }
    }
    return JSON.stringify(copy, null, 2);
  }

  function playground(eventId) {
    var source = el('select', { id: 'pg-source' }, el('option', { value: 'event', text: 'a stored body' }),
      el('option', { value: 'payload', text: 'a pasted payload' }));
    var eventInput = el('input', { id: 'pg-event', placeholder: 'body id', value: eventId || '' });
    var payload = el('textarea', { id: 'pg-payload', placeholder: '{"topic": "alarms", "events": [{"type": "rogue_ap"}]}' });
    var ruleSel = el('select', { id: 'pg-rule' }, el('option', { value: '', text: 'the rules as they run' }));
    var ruleText = el('textarea', { id: 'pg-rule-text', hidden: true });
    var result = el('div', { id: 'pg-result' });
    source.value = eventId ? 'event' : 'payload';
    function showSource() {
      eventInput.hidden = source.value !== 'event';
      payload.hidden = source.value !== 'payload';
    }
    source.addEventListener('change', showSource);
    showSource();
    ruleSel.addEventListener('change', function () {
      if (!ruleSel.value) { ruleText.hidden = true; return; }
      api('/api/rule?file=' + encodeURIComponent(ruleSel.value)).then(function (r) {
        ruleText.value = r.text;
        ruleText.hidden = false;
      }).catch(failed);
    });
    api('/api/rules').then(function (r) {
      r.rules.forEach(function (rule) {
        var file = rule.file.split('/').pop();
        ruleSel.appendChild(el('option', { value: file, text: 'with an edited ' + file + ' (not saved)' }));
      });
    }).catch(failed);
    function run() {
      var body = {};
      if (source.value === 'event') body.event = Number(eventInput.value);
      else body.payload = payload.value;
      if (ruleSel.value) { body.file = ruleSel.value; body.text = ruleText.value; }
      result.textContent = '';
      say('running');
      api('/api/playground', body).then(function (r) {
        if (!r.ok) {
          var ul = el('ul', { cls: 'errors', id: 'pg-errors' });
          r.errors.forEach(function (e) { ul.appendChild(el('li', { text: e })); });
          result.appendChild(ul);
          say('did not run', true);
          return;
        }
        result.appendChild(el('p', { id: 'pg-summary', text: r.topic + ': ' + r.events + ' events, ' + r.calls +
          ' rule calls, ' + r.failed + ' failed, ' + r.messages.length + ' messages' }));
        result.appendChild(el('h3', { text: 'How the rules ran' }));
        result.appendChild(runsTable('pg-runs', r.runs));
        result.appendChild(el('h3', { text: 'Messages and the exact requests (secrets masked)' }));
        var list = el('div', { id: 'pg-messages' });
        r.messages.forEach(function (m) {
          list.appendChild(el('div', { cls: 'row pg-message' },
            el('div', null, el('h3', { text: m.rule + ' \u2192 ' + m.target + ' (' + m.event + ')' }),
              el('pre', { cls: 'pg-message-body', text: JSON.stringify(m.message, null, 2) })),
            el('div', null, el('h3', { text: 'request' }), el('pre', { cls: 'pg-request', text: showRequest(m.request) }))));
        });
        if (!r.messages.length) list.appendChild(el('p', { cls: 'muted', text: 'No message.' }));
        result.appendChild(list);
        say('ran at ' + time(Date.now() / 1000));
      }).catch(failed);
    }
    view.appendChild(el('section', { id: 'view-playground' }, el('h2', { text: 'Playground: the current rules, dry' }),
      el('p', { cls: 'muted', text: 'Runs a body through the rules as brume test does: a fresh state, nothing stored, nothing sent.' }),
      el('div', { cls: 'filters' }, el('label', null, 'run', source), eventInput, el('label', null, 'rules', ruleSel),
        el('button', { id: 'pg-run', text: 'Run', onclick: run })),
      payload, ruleText, result));
  }

  /* ---- routing ---------------------------------------------------------- */

  function route() {
    if (timer) { clearInterval(timer); timer = null; }
    view.textContent = '';
    say('');
    var h = location.hash.replace(/^#/, '') || 'overview';
    var parts = h.split('/');
    document.querySelectorAll('header nav a').forEach(function (a) {
      a.className = a.id === 'nav-' + parts[0] || (a.id === 'nav-events' && parts[0] === 'event') ||
        (a.id === 'nav-deliveries' && parts[0] === 'delivery') ? 'current' : '';
    });
    if (parts[0] === 'events') events();
    else if (parts[0] === 'event') eventView(parts[1]);
    else if (parts[0] === 'deliveries') deliveries();
    else if (parts[0] === 'delivery') deliveryView(parts[1]);
    else if (parts[0] === 'timers') timers();
    else if (parts[0] === 'playground') playground(parts[1]);
    else overview();
  }

  tokenBox.addEventListener('submit', function (e) {
    e.preventDefault(); /* nothing is posted: the token stays in this tab */
    sessionStorage.setItem('brume-token', document.getElementById('token').value);
    tokenBox.hidden = true;
    route();
  });
  window.addEventListener('hashchange', route);
  route();
})();
