// nixery-ts pages, live: the start page's builds (polling /api/builds every
// second), the package search that composes an image name (/api/packages),
// and the image page's Build button and progress (/api/builds/<id>/events).
// The server renders every page complete without this script; this only
// keeps it current. It sets text only (textContent), never markup: every
// value here comes from Nix or from a request.
(function () {
  'use strict';

  // ---- Formatting: the same as src/http/pages/format.ts --------------------

  function formatBytes(n) {
    if (!Number.isFinite(n) || n < 1000) return Math.max(0, Math.round(n || 0)) + ' B';
    var units = ['kB', 'MB', 'GB', 'TB'];
    var v = n / 1000;
    var i = 0;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return v.toFixed(1) + ' ' + units[i];
  }
  function formatSeconds(s) {
    var t = Math.max(0, Math.round(s || 0));
    return t < 120 ? t + ' s' : Math.floor(t / 60) + ' min ' + (t % 60) + ' s';
  }
  var PHASE_LABELS = {
    queued: 'waiting for a build slot', resolve: 'finding the packages', realise: 'building with Nix',
    closure: 'reading the closure', group: 'planning layers', pack: 'packing layers',
    manifest: 'writing the manifest', done: 'done', failed: 'failed',
  };
  function phaseLabel(p) { return Object.prototype.hasOwnProperty.call(PHASE_LABELS, p) ? PHASE_LABELS[p] : String(p); }
  function splitImage(image) {
    var ref = String(image).split(' ')[0];
    var colon = ref.lastIndexOf(':');
    if (colon <= 0 || colon === ref.length - 1) return undefined;
    return { name: ref.slice(0, colon), tag: ref.slice(colon + 1) };
  }
  function encName(name) { return name.split('/').map(encodeURIComponent).join('/'); }
  function imagePath(name, tag) {
    return '/image/' + encName(name) + (!tag || tag === 'latest' ? '' : '?tag=' + encodeURIComponent(tag));
  }
  function apiImagePath(name, tag, suffix) {
    return '/api/images/' + encName(name) + (suffix || '') + '?tag=' + encodeURIComponent(tag || 'latest');
  }
  function clockTime(iso) {
    var t = Date.parse(iso);
    return Number.isNaN(t) ? String(iso) : new Date(t).toISOString().slice(11, 19) + ' UTC';
  }
  function percent(f) { return Math.round(Math.min(1, Math.max(0, f || 0)) * 100) + '%'; }
  /** A package attribute as a name component (as attrToComponent in src/http/web.ts). */
  function attrToComponent(attr) {
    return attr.split('.').map(function (s) { return s.replace(/^_(?=[0-9])/, ''); }).join('.').toLowerCase();
  }

  // ---- DOM helpers ---------------------------------------------------------

  function h(tag, attrs, children) {
    var e = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) {
      if (attrs[k] === undefined || attrs[k] === false) return;
      if (k === 'hidden') e.hidden = !!attrs[k]; else e.setAttribute(k, String(attrs[k]));
    });
    (children || []).forEach(function (c) { e.append(typeof c === 'string' ? document.createTextNode(c) : c); });
    return e;
  }
  function setText(node, text) { if (node && node.textContent !== text) node.textContent = text; }
  function setAttr(node, name, value) { if (node && node.getAttribute(name) !== value) node.setAttribute(name, value); }
  function setHidden(node, hidden) { if (node && node.hidden !== hidden) node.hidden = hidden; }
  async function errorText(res) {
    try {
      var body = await res.json();
      var e = body && body.errors && body.errors[0];
      if (e && e.message) return e.message;
    } catch (_) { /* not JSON */ }
    return 'the server answered ' + res.status;
  }

  // ---- Builds: the markup of src/http/pages/builds.ts ----------------------

  function imageLink(image) {
    var parts = splitImage(image);
    var code = h('code', null, [image]);
    return parts ? h('a', { href: imagePath(parts.name, parts.tag) }, [code]) : code;
  }

  function derivationsText(p) {
    var d = p.derivations;
    if (!d) return '';
    return 'derivations ' + d.done + ' of ' + d.expected + ' built' + (d.building ? ', building ' + d.building : '');
  }
  function layersText(p) { return p.layers ? p.layers.done + ' of ' + p.layers.total + ' layers written' : ''; }

  /** How far into its build each <li> shows: a poll answered before an event that came first is not shown after it. */
  var shown = new WeakMap();

  /** A running build's <li>: made when `li` is undefined, else brought up to date (only what changed). */
  function progressItem(b, li) {
    var p = b.progress || { phase: 'queued', bytes: 0, log: [], fraction: 0 };
    var ended = b.state === 'succeeded' || b.state === 'failed';
    if (li) {
      var seen = shown.get(li);
      if (seen && (seen.ended || (!ended && seen.seconds > b.seconds))) return li;
    }
    if (!li) {
      li = h('li', { class: 'build', 'data-build-id': b.id }, [
        h('p', { class: 'what' }, [imageLink(b.image), h('span', { class: 'packages' }, []), h('span', { class: 'elapsed' }, [])]),
        h('div', { class: 'progress' }, [h('progress', { max: '1', value: '0' }, []), ' ', h('span', { class: 'phase' }, []), ' ', h('span', { class: 'percent' }, [])]),
        h('p', { class: 'counts' }, [h('span', { class: 'derivations' }, []), ' ', h('span', { class: 'layers' }, []), ' ', h('span', { class: 'bytes' }, [])]),
        h('p', { class: 'error', hidden: true }, []),
        h('pre', { class: 'log', hidden: true }, []),
      ]);
      // ` (packages), for ` around the elapsed time, as the server writes it.
      var what = li.querySelector('.what');
      what.replaceChild(document.createTextNode(' (' + (b.packages || []).join(', ') + '), for '), what.querySelector('.packages'));
    }
    setAttr(li, 'data-state', b.state);
    setText(li.querySelector('.elapsed'), formatSeconds(b.seconds));
    var bar = li.querySelector('progress');
    var fraction = String(Math.min(1, Math.max(0, p.fraction || 0)));
    setAttr(bar, 'value', fraction);
    setText(bar, percent(p.fraction));
    var phase = li.querySelector('.phase');
    setAttr(phase, 'data-phase', p.phase);
    setText(phase, phaseLabel(p.phase));
    setText(li.querySelector('.percent'), percent(p.fraction));
    var counts = [['.derivations', derivationsText(p)], ['.layers', layersText(p)], ['.bytes', p.bytes > 0 ? formatBytes(p.bytes) + ' written' : '']];
    counts.forEach(function (c) { var n = li.querySelector(c[0]); setText(n, c[1]); setHidden(n, c[1] === ''); });
    var err = li.querySelector('.error');
    setText(err, b.error || '');
    setHidden(err, !b.error);
    var log = li.querySelector('.log');
    var lines = (p.log || []).join('\n');
    setText(log, lines);
    setHidden(log, lines === '');
    shown.set(li, { seconds: b.seconds, ended: ended });
    return li;
  }

  /** A finished build's <li> (finished builds do not change: made once). */
  function outcomeItem(b, li) {
    if (li) return li;
    var facts = ['in ' + formatSeconds(b.seconds)];
    if (b.layers !== undefined) facts.push(b.layers + (b.layers === 1 ? ' layer' : ' layers'));
    if (b.bytes !== undefined) facts.push(formatBytes(b.bytes));
    var failed = b.state === 'failed';
    var p = b.progress || { log: [] };
    return h('li', { class: 'build', 'data-build-id': b.id, 'data-state': b.state }, [
      h('p', { class: 'what' }, [
        imageLink(b.image), ' ', h('span', { class: 'outcome' }, [b.state]), ' ', h('span', { class: 'facts' }, [facts.join(', ')]), ' ',
        h('time', { class: 'when', datetime: b.startedAt }, [clockTime(b.startedAt)]),
      ]),
    ].concat(failed && b.error ? [h('p', { class: 'error' }, [b.error])] : [])
      .concat(failed && p.log && p.log.length ? [h('pre', { class: 'log' }, [p.log.join('\n')])] : []));
  }

  /** Makes `ul` hold one <li> per build, in order, keeping the <li>s it already has (by build id). */
  function syncList(ul, builds, item) {
    var existing = new Map();
    Array.prototype.forEach.call(ul.children, function (li) { existing.set(li.getAttribute('data-build-id'), li); });
    var wanted = builds.map(function (b) { return item(b, existing.get(b.id)); });
    existing.forEach(function (li) { if (wanted.indexOf(li) < 0) li.remove(); });
    wanted.forEach(function (li, i) { if (ul.children[i] !== li) ul.insertBefore(li, ul.children[i] || null); });
    var none = ul.nextElementSibling;
    if (none && none.classList.contains('none')) setHidden(none, builds.length > 0);
  }

  // ---- Start page: builds, live --------------------------------------------

  /**
   * The first few running builds are followed over their event streams
   * (every change, a few a second: phases that pass quicker than the poll
   * show too); the list itself, and any other build, follows the poll. A
   * browser opens only ~6 connections to a host, so never more than this.
   */
  var MAX_STREAMS = 3;

  function startPageBuilds() {
    var running = document.querySelector('#building ul[data-list="running"]');
    var recent = document.querySelector('#recent ul[data-list="recent"]');
    // Without these the server showed "Log in to see builds" (or has no API): nothing to follow.
    if (!running) return;
    var hint = document.querySelector('#building .reload-hint');
    if (hint) hint.hidden = true;
    var timer;
    var streams = new Map(); // build id -> EventSource (closed ones stay until the build leaves the list)
    function follow(builds) {
      streams.forEach(function (es, id) {
        if (!builds.some(function (b) { return b.id === id; })) { es.close(); streams.delete(id); }
      });
      if (typeof EventSource !== 'function') return;
      builds.forEach(function (b) {
        var open = 0;
        streams.forEach(function (es) { if (es.readyState !== 2) open++; });
        if (open >= MAX_STREAMS || streams.has(b.id)) return;
        var es = new EventSource('/api/builds/' + encodeURIComponent(b.id) + '/events');
        streams.set(b.id, es);
        es.addEventListener('state', function (ev) {
          var v = JSON.parse(ev.data);
          var li = Array.prototype.find.call(running.children, function (x) { return x.getAttribute('data-build-id') === v.id; });
          if (li) progressItem(v, li);
          if (v.state === 'succeeded' || v.state === 'failed') es.close();
        });
        // Lost: the poll goes on updating it.
        es.addEventListener('error', function () { es.close(); });
      });
    }
    async function poll() {
      timer = undefined;
      var res;
      try {
        res = await fetch('/api/builds', { headers: { accept: 'application/json' }, cache: 'no-store' });
      } catch (_) { return later(3000); }
      if (res.status === 401 || res.status === 403) {
        [running, recent].forEach(function (ul) {
          if (!ul) return;
          var p = h('p', { class: 'none login' }, ['Log in to see builds. ', h('a', { href: '/login' }, ['Log in'])]);
          var none = ul.nextElementSibling;
          if (none && none.classList.contains('none')) none.remove();
          ul.replaceWith(p);
        });
        return;
      }
      if (!res.ok) return later(3000);
      var data = await res.json();
      syncList(running, data.running || [], progressItem);
      follow(data.running || []);
      if (recent) syncList(recent, data.recent || [], outcomeItem);
      later(1000);
    }
    function later(ms) {
      if (document.hidden) return; // visibilitychange starts it again
      timer = setTimeout(poll, ms);
    }
    document.addEventListener('visibilitychange', function () {
      if (!document.hidden && timer === undefined) poll();
    });
    // At once: the streams of builds already running open now.
    later(0);
  }

  // ---- Start page: compose an image name -------------------------------------

  function composer() {
    var section = document.getElementById('compose');
    if (!section) return;
    var host = section.getAttribute('data-host') || location.host;
    var form = section.querySelector('form');
    var input = section.querySelector('#q');
    var list = section.querySelector('#suggestions');
    var pickedList = section.querySelector('.picked');
    var result = section.querySelector('.result');
    var pull = result.querySelector('.pull code');
    var link = result.querySelector('.image-link');
    var copied = result.querySelector('.copied');
    var toggles = Array.prototype.slice.call(section.querySelectorAll('.toggles input[name="meta"]'));
    var help = section.querySelector('#q-help');
    var META = ['arm64', 'nonroot', 'shell'];
    var mustLogIn = document.querySelector('#building .login') !== null;
    var picked = []; // { attr, component }
    var options = []; // suggestions shown: { attr, version, description }
    var active = -1;
    var seq = 0;
    var debounce;

    input.setAttribute('role', 'combobox');
    input.setAttribute('aria-autocomplete', 'list');
    input.setAttribute('aria-controls', 'suggestions');
    input.setAttribute('aria-expanded', 'false');
    input.setAttribute('placeholder', 'Search packages, e.g. htop');
    setText(help, 'Type to search the package set; pick a package to add it to the image.');

    function name() {
      var metas = META.filter(function (m) { return toggles.some(function (t) { return t.value === m && t.checked; }); });
      return metas.concat(picked.map(function (p) { return p.component; })).join('/');
    }

    function render() {
      pickedList.replaceChildren.apply(pickedList, picked.map(function (p, i) {
        var remove = h('button', { type: 'button', 'aria-label': 'Remove ' + p.attr, title: 'Remove' }, ['×']);
        remove.addEventListener('click', function () { picked.splice(i, 1); render(); input.focus(); });
        return h('li', null, [h('code', null, [p.attr]), remove]);
      }));
      var n = name();
      setHidden(result, n === '');
      if (n === '') return;
      setText(pull, 'docker pull ' + host + '/' + n + '\ndocker run --rm -it ' + host + '/' + n);
      link.setAttribute('href', imagePath(n, 'latest'));
      setText(link, 'Image page of ' + n);
      setText(copied, '');
    }

    /** Adds a package by its attribute; `spelling` is the index's image-name spelling of it, when known. */
    function add(attr, spelling) {
      var component = spelling || attrToComponent(attr);
      if (component === '') return;
      if (META.indexOf(component) >= 0) {
        toggles.forEach(function (t) { if (t.value === component) t.checked = true; });
      } else if (!picked.some(function (p) { return p.component === component; })) {
        picked.push({ attr: attr, component: component });
      }
    }

    function close() {
      options = [];
      active = -1;
      list.replaceChildren();
      list.hidden = true;
      input.setAttribute('aria-expanded', 'false');
      input.removeAttribute('aria-activedescendant');
    }

    function showStatus(text, extra) {
      options = [];
      active = -1;
      list.replaceChildren(h('li', { class: 'status', role: 'presentation' }, [text].concat(extra || [])));
      list.hidden = false;
      input.setAttribute('aria-expanded', 'true');
    }

    function showOptions(results) {
      options = results;
      active = results.length ? 0 : -1;
      if (!results.length) return showStatus('No package matches.');
      list.replaceChildren.apply(list, results.map(function (r, i) {
        var li = h('li', { id: 'suggestion-' + i, role: 'option', 'aria-selected': i === active ? 'true' : 'false', 'data-attr': r.attr }, [
          h('code', { class: 'attr' }, [r.attr]),
          h('span', { class: 'version' }, [r.version || '']),
          h('span', { class: 'description' }, [r.description || '']),
        ]);
        // mousedown, not click: the input keeps its focus.
        li.addEventListener('mousedown', function (e) { e.preventDefault(); pick(i); });
        return li;
      }));
      list.hidden = false;
      input.setAttribute('aria-expanded', 'true');
      highlight(active);
    }

    function highlight(i) {
      active = i;
      Array.prototype.forEach.call(list.children, function (li, j) { li.setAttribute('aria-selected', j === i ? 'true' : 'false'); });
      if (i >= 0 && list.children[i]) {
        input.setAttribute('aria-activedescendant', 'suggestion-' + i);
        if (list.children[i].scrollIntoView) list.children[i].scrollIntoView({ block: 'nearest' });
      } else input.removeAttribute('aria-activedescendant');
    }

    function pick(i) {
      var r = options[i];
      if (!r) return;
      add(r.attr, r.name);
      input.value = '';
      close();
      render();
      input.focus();
    }

    /** The word being typed: the last one. */
    function query() {
      var words = input.value.trim().split(/[\s,/]+/);
      return words[words.length - 1] || '';
    }

    async function search() {
      var q = query();
      var mine = ++seq;
      if (q === '') return close();
      // The server said this viewer must log in to see builds; the packages are behind the same login.
      // Asking anyway would make the browser pop up its login dialog at every keystroke.
      if (mustLogIn) return showStatus('Log in to search packages. ', [h('a', { href: '/login' }, ['Log in'])]);
      var res;
      try {
        res = await fetch('/api/packages?q=' + encodeURIComponent(q) + '&limit=20', { headers: { accept: 'application/json' } });
      } catch (_) {
        if (mine === seq) showStatus('The package search is not reachable.');
        return;
      }
      if (mine !== seq) return; // a newer query is on its way
      if (res.status === 401 || res.status === 403) return showStatus('Log in to search packages. ', [h('a', { href: '/login' }, ['Log in'])]);
      if (!res.ok) return showStatus('The package search failed: ' + (await errorText(res)));
      var body = await res.json();
      if (mine !== seq) return;
      if (body.state === 'building') {
        showStatus('Indexing the package set…');
        debounce = setTimeout(search, 1000);
        return;
      }
      if (body.state === 'failed') return showStatus('The package index could not be built.');
      showOptions(body.results || []);
    }

    input.addEventListener('input', function () {
      clearTimeout(debounce);
      debounce = setTimeout(search, 150);
    });
    input.addEventListener('keydown', function (e) {
      var open = !list.hidden && options.length > 0;
      if (e.key === 'ArrowDown' && open) { e.preventDefault(); highlight((active + 1) % options.length); }
      else if (e.key === 'ArrowUp' && open) { e.preventDefault(); highlight((active - 1 + options.length) % options.length); }
      else if (e.key === 'Escape') close();
      else if (e.key === 'Enter' && open && active >= 0) { e.preventDefault(); pick(active); }
    });
    input.addEventListener('blur', function () { setTimeout(close, 150); });
    toggles.forEach(function (t) { t.addEventListener('change', render); });

    form.addEventListener('submit', function (e) {
      e.preventDefault();
      // Words typed but not picked count too.
      input.value.trim().split(/[\s,/]+/).forEach(function (w) { if (w) add(w); });
      input.value = '';
      close();
      render();
      var n = name();
      if (n !== '') location.href = imagePath(n, 'latest');
    });

    result.querySelector('.copy').addEventListener('click', function () {
      var text = pull.textContent;
      function done() { setText(copied, 'Copied.'); }
      function fallback() {
        var range = document.createRange();
        range.selectNodeContents(pull);
        var sel = getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        try { document.execCommand('copy'); done(); } catch (_) { setText(copied, 'Selected: press Ctrl+C to copy.'); }
      }
      if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(done, fallback);
      else fallback();
    });

    // What the form held before the script ran (back button, typed early).
    render();
  }

  // ---- Image page -----------------------------------------------------------

  function imagePage(main) {
    var name = main.getAttribute('data-name');
    var tag = main.getAttribute('data-tag') || 'latest';
    var form = main.querySelector('form.build-form');
    var builds = main.querySelector('.build-state ul.running');
    var failures = 0;

    function watch(id) {
      var es = new EventSource('/api/builds/' + encodeURIComponent(id) + '/events');
      var ended = false;
      es.addEventListener('state', function (ev) {
        var b = JSON.parse(ev.data);
        failures = 0;
        if (builds) syncList(builds, [b], progressItem);
        if (b.state === 'succeeded' || b.state === 'failed') {
          ended = true;
          es.close();
          if (b.state === 'succeeded') refresh();
          else if (form) {
            form.hidden = false;
            var button = form.querySelector('button');
            button.disabled = false;
            setText(button, 'Build again');
          } else refresh();
        }
      });
      es.addEventListener('error', function () {
        if (ended) return;
        es.close();
        // Lost the stream (server restart, proxy timeout): ask the server what the image is now.
        failures++;
        setTimeout(refresh, Math.min(10000, 1000 * Math.pow(2, failures - 1)));
      });
    }

    if (form) {
      form.addEventListener('submit', async function (e) {
        e.preventDefault();
        var button = form.querySelector('button');
        var status = form.querySelector('.form-status');
        button.disabled = true;
        setText(status, '');
        var res;
        try {
          res = await fetch(apiImagePath(name, tag, '/build'), { method: 'POST', headers: { accept: 'application/json' } });
        } catch (_) {
          return form.submit();
        }
        if (res.status === 202) {
          var started = await res.json();
          form.hidden = true;
          var last = main.querySelector('.last-failure');
          if (last) last.remove();
          setText(main.querySelector('.build-state h2'), 'Building');
          var offer = main.querySelector('.build-state .offer');
          if (offer) offer.hidden = true;
          watch(started.id);
        } else if (res.ok) {
          refresh();
        } else if (res.status === 401 || res.status === 403) {
          // A browser asks for a login on the 401 itself; this shows when there was none to give.
          button.disabled = false;
          status.replaceChildren('Log in to build this image: ', h('a', { href: '/login?next=' + encodeURIComponent(location.pathname + location.search) }, ['log in']), '.');
        } else {
          button.disabled = false;
          setText(status, await errorText(res));
        }
      });
    }
    var id = main.getAttribute('data-build-id');
    if (id) watch(id);
  }

  /** The image page again from the server, swapped in without a reload. */
  async function refresh() {
    var current = document.querySelector('main#image');
    try {
      var res = await fetch(location.pathname + location.search, { headers: { accept: 'text/html' }, cache: 'no-store' });
      var doc = new DOMParser().parseFromString(await res.text(), 'text/html');
      var next = doc.querySelector('main#image');
      if (!res.ok || !next || !current) return location.reload();
      var fresh = document.importNode(next, true);
      current.replaceWith(fresh);
      imagePage(fresh);
    } catch (_) {
      location.reload();
    }
  }

  function init() {
    startPageBuilds();
    composer();
    var main = document.querySelector('main#image');
    if (main) imagePage(main);
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
