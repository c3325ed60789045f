// floq console: every behaviour of the pages floq-api serves (api/src/console).
// Vanilla ES2020, no build step, no inline script anywhere (the CSP forbids it).
// It calls the same JSON API as any client, with the session cookie
// (credentials: 'same-origin'); every decision is the server's: controls a
// role cannot use are hidden, and a refusal shows the API's error.message.
'use strict';

(() => {
  const page = document.body.dataset.page;
  const pageId = document.body.dataset.id;
  const $ = (sel, root = document) => root.querySelector(sel);
  let me = null;

  // ---- DOM helpers: elements are built, never parsed from strings ----------
  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    setAttrs(e, attrs);
    append(e, children);
    return e;
  }
  const SVG_NS = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, ...children) {
    const e = document.createElementNS(SVG_NS, tag);
    setAttrs(e, attrs);
    append(e, children);
    return e;
  }
  function setAttrs(e, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.setAttribute('class', v);
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else if (v === true) e.setAttribute(k, '');
      else e.setAttribute(k, String(v));
    }
  }
  function append(e, children) {
    for (const c of children.flat(3)) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }
  let uid = 0;
  const nextId = (p) => `${p}-${++uid}`;

  /** A labelled control: <p><label for>…</label><control></p>. */
  function field(label, control, hint) {
    if (!control.id) control.id = nextId('f');
    return h('p', { class: 'field' }, h('label', { for: control.id }, label), control,
      hint ? h('small', { class: 'muted' }, hint) : null);
  }
  function button(text, onclick, cls) {
    return h('button', { type: 'button', class: cls, onclick: guard(onclick) }, text);
  }
  function section(title, ...children) {
    return h('section', { class: 'card' }, h('h2', {}, title), ...children);
  }
  function table(headers, rows, caption) {
    return h('div', { class: 'table-wrap' }, h('table', {},
      caption ? h('caption', { class: 'sr-only' }, caption) : null,
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', {}, rows.length ? rows.map((r) => h('tr', {}, r.map((c) => h('td', {}, c))))
        : h('tr', {}, h('td', { colspan: headers.length, class: 'muted' }, 'Nothing here yet.')))));
  }
  const pre = (v) => h('pre', { class: 'json' }, v === undefined ? '' : JSON.stringify(v, null, 2));
  const badge = (status) => h('span', { class: `badge s-${status}` }, status);
  const link = (href, text) => h('a', { href }, text);
  const time = (iso) => (iso ? h('time', { datetime: iso }, new Date(iso).toLocaleString()) : '—');
  function duration(from, to) {
    if (!from) return '—';
    const ms = (to ? new Date(to) : new Date()) - new Date(from);
    if (ms < 1000) return `${ms} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
  }
  const short = (id) => String(id).slice(0, 8);

  // ---- the API ---------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, body) {
      const err = (body && body.error) || {};
      super(err.message || `the request failed (HTTP ${status})`);
      this.status = status;
      this.code = err.code;
      this.details = err.details;
    }
  }
  async function api(method, path, body) {
    const opts = { method, credentials: 'same-origin', headers: { accept: 'application/json' } };
    if (body !== undefined) {
      opts.headers['content-type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(path, opts);
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = text; }
    }
    if (!res.ok) {
      if (res.status === 401 && page !== 'login') {
        location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
      }
      throw new ApiError(res.status, data);
    }
    return data;
  }
  const q = (params) => {
    const u = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') u.set(k, v);
    const t = u.toString();
    return t ? `?${t}` : '';
  };

  // ---- messages ------------------------------------------------------------
  function detailText(d) {
    if (typeof d !== 'object' || d === null) return String(d);
    return [d.node ? `node ${d.node}` : null, d.field, d.message].filter(Boolean).join(': ');
  }
  function showError(e) {
    const box = $('#alert');
    box.textContent = '';
    box.append(h('p', {}, e && e.message ? e.message : String(e)));
    if (e && Array.isArray(e.details) && e.details.length) {
      box.append(h('ul', {}, e.details.map((d) => h('li', {}, detailText(d)))));
    }
    box.scrollIntoView({ block: 'nearest' });
  }
  function clearMessages() {
    $('#alert').textContent = '';
    $('#notice').textContent = '';
  }
  function notice(...content) {
    const box = $('#notice');
    box.textContent = '';
    append(box, [h('p', {}, ...content)]);
  }
  /** Wraps an event handler: clears old messages, shows a failure, disables the button meanwhile. */
  function guard(fn) {
    return async (ev) => {
      const btn = ev && ev.currentTarget instanceof HTMLButtonElement ? ev.currentTarget : null;
      clearMessages();
      if (btn) btn.disabled = true;
      try {
        await fn(ev);
      } catch (e) {
        showError(e);
      } finally {
        if (btn && btn.isConnected) btn.disabled = false;
      }
    };
  }

  // ---- who is signed in ------------------------------------------------------
  const CAN = {
    edit: ['admin', 'flow_editor'],
    execute: ['admin', 'flow_editor', 'flow_executor'],
    integrations: ['admin', 'integration_manager'],
    admin: ['admin'],
  };
  const can = (what) => !!me && me.roles.some((r) => CAN[what].includes(r));

  function renderAccount() {
    const box = $('#account');
    if (!box || !me) return;
    box.textContent = '';
    if (me.companies.length > 1) {
      const select = h('select', { id: 'company' }, me.companies.map((c) =>
        h('option', { value: c.id, selected: !!me.company && c.id === me.company.id }, c.name)));
      select.addEventListener('change', guard(async () => {
        await api('POST', '/api/v1/auth/switch-company', { company_id: select.value });
        location.reload();
      }));
      box.append(h('label', { for: 'company' }, 'Company'), select);
    } else if (me.company) {
      box.append(h('span', { class: 'company' }, me.company.name));
    }
    box.append(h('span', { class: 'who' }, me.user.email),
      button('Sign out', async () => {
        await api('POST', '/api/v1/auth/logout');
        location.assign('/login');
      }, 'secondary'));
  }

  // ---- sign in ---------------------------------------------------------------
  function nextPath() {
    const next = new URLSearchParams(location.search).get('next');
    return next && next.startsWith('/') && !next.startsWith('//') ? next : '/flows';
  }
  function loginPage() {
    const form = $('#login-form');
    const email = $('#login-email');
    const password = $('#login-password');
    form.addEventListener('submit', guard(async (ev) => {
      ev.preventDefault();
      await api('POST', '/api/v1/auth/login', { email: email.value.trim(), password: password.value });
      password.value = '';
      location.assign(nextPath());
    }));
    $('#login-sso').addEventListener('click', guard(async () => {
      if (!email.value.trim()) throw new Error('Enter your email first: it names your company’s single sign-on.');
      const found = await api('POST', '/api/v1/auth/sso/discover', { email: email.value.trim() });
      location.assign(`${found.start_url}?return_to=${encodeURIComponent(nextPath())}`);
    }));
  }

  // ---- node catalog, forms and the graph ---------------------------------------
  let nodeTypesCache = null;
  async function nodeTypes() {
    if (!nodeTypesCache) nodeTypesCache = (await api('GET', '/api/v1/node-types')).items;
    return nodeTypesCache;
  }
  /** The concrete schema of a param (templated ones are `if {{…}} then true else SCHEMA`). */
  function concrete(schema) {
    if (schema && typeof schema === 'object' && schema.else && typeof schema.else === 'object') return schema.else;
    return schema || {};
  }
  function paramKind(name, schema) {
    const c = concrete(schema);
    if (Array.isArray(c.enum)) return 'enum';
    let t = c.type;
    if (Array.isArray(t)) t = t.length === 1 ? t[0] : 'any';
    if (t === 'integer' || t === 'number') return 'number';
    if (t === 'boolean') return 'boolean';
    if (t === 'string') return name === 'code' || (c.maxLength || 0) > 1000 ? 'text' : 'string';
    if (t === 'object' || t === 'array') return 'json';
    return 'any';
  }
  function paramInput(type, name, schema, required) {
    const kind = paramKind(name, schema);
    const id = `param-${type}-${name}`;
    let control;
    if (kind === 'boolean') control = h('select', { id }, h('option', { value: '' }, '—'), h('option', { value: 'true' }, 'true'), h('option', { value: 'false' }, 'false'));
    else if (kind === 'enum') control = h('select', { id }, h('option', { value: '' }, '—'), concrete(schema).enum.map((v) => h('option', { value: JSON.stringify(v) }, String(v))));
    else if (kind === 'json' || kind === 'text') control = h('textarea', { id, rows: kind === 'text' ? 6 : 3, spellcheck: 'false', placeholder: kind === 'json' ? (concrete(schema).type === 'array' ? '[ ]' : '{ }') : '' });
    else control = h('input', { id, type: kind === 'number' ? 'text' : 'text', inputmode: kind === 'number' ? 'numeric' : null, placeholder: kind === 'any' ? 'JSON or text' : '' });
    if (required) control.setAttribute('aria-required', 'true');
    control.dataset.kind = kind;
    control.dataset.param = name;
    const label = h('label', { for: id }, name, required ? h('span', { class: 'req', title: 'required' }, ' (required)') : null);
    return h('p', { class: 'field' }, label, control);
  }
  function paramValue(control) {
    const raw = control.value;
    if (raw === '') return undefined;
    const kind = control.dataset.kind;
    const templated = raw.includes('{{');
    switch (kind) {
      case 'number': return templated || Number.isNaN(Number(raw)) ? raw : Number(raw);
      case 'boolean':
      case 'enum': return JSON.parse(raw);
      case 'json':
        try { return JSON.parse(raw); } catch (_) {
          if (templated) return raw;
          throw new Error(`${control.dataset.param}: not valid JSON`);
        }
      case 'any':
        try { return JSON.parse(raw); } catch (_) { return raw; }
      default: return raw;
    }
  }

  /** Longest-path layers of a DAG (nodes in a cycle, which the API refuses, go last). */
  function layers(def) {
    const ids = def.nodes.map((n) => n.id);
    const layer = new Map(ids.map((id) => [id, 0]));
    const indeg = new Map(ids.map((id) => [id, 0]));
    const out = new Map(ids.map((id) => [id, []]));
    for (const e of def.edges) {
      if (!layer.has(e.from) || !layer.has(e.to)) continue;
      out.get(e.from).push(e.to);
      indeg.set(e.to, indeg.get(e.to) + 1);
    }
    const queue = ids.filter((id) => indeg.get(id) === 0);
    const seen = new Set();
    while (queue.length) {
      const id = queue.shift();
      seen.add(id);
      for (const to of out.get(id)) {
        layer.set(to, Math.max(layer.get(to), layer.get(id) + 1));
        indeg.set(to, indeg.get(to) - 1);
        if (indeg.get(to) === 0) queue.push(to);
      }
    }
    const max = Math.max(0, ...layer.values());
    for (const id of ids) if (!seen.has(id)) layer.set(id, max + 1);
    return layer;
  }
  function graphSvg(def, errors) {
    const nodes = Array.isArray(def.nodes) ? def.nodes.filter((n) => n && typeof n.id === 'string') : [];
    const edges = Array.isArray(def.edges) ? def.edges.filter((e) => e && e.from && e.to) : [];
    const W = 150, H = 48, GX = 70, GY = 26, PAD = 16;
    const layer = layers({ nodes, edges });
    const columns = [];
    for (const n of nodes) (columns[layer.get(n.id)] = columns[layer.get(n.id)] || []).push(n);
    const pos = new Map();
    columns.forEach((col, x) => (col || []).forEach((n, y) => pos.set(n.id, { x: PAD + x * (W + GX), y: PAD + y * (H + GY) })));
    const width = PAD * 2 + Math.max(1, columns.length) * (W + GX) - GX;
    const height = PAD * 2 + Math.max(1, ...columns.map((c) => (c ? c.length : 0))) * (H + GY) - GY;
    const svg = s('svg', { class: 'graph', viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-labelledby': 'graph-title' },
      s('title', { id: 'graph-title' }, `Flow graph: ${nodes.length} nodes, ${edges.length} edges`),
      s('defs', {}, s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
        s('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'arrowhead' }))));
    for (const e of edges) {
      const a = pos.get(e.from), b = pos.get(e.to);
      if (!a || !b) continue;
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
      svg.append(s('path', { class: 'edge', d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`, 'marker-end': 'url(#arrow)' }));
      if (e.port !== undefined && e.port !== null) {
        svg.append(s('text', { class: 'port', x: mx, y: (y1 + y2) / 2 - 4, 'text-anchor': 'middle' }, String(e.port)));
      }
    }
    for (const n of nodes) {
      const p = pos.get(n.id);
      const bad = errors && errors.has(n.id);
      svg.append(s('g', { class: bad ? 'node error' : 'node', 'data-node': n.id, transform: `translate(${p.x} ${p.y})` },
        s('title', {}, bad ? `${n.id}: ${errors.get(n.id).join('; ')}` : `${n.id} (${n.type})`),
        s('rect', { width: W, height: H, rx: 6 }),
        s('text', { x: W / 2, y: 20, 'text-anchor': 'middle', class: 'node-id' }, n.id.length > 18 ? `${n.id.slice(0, 17)}…` : n.id),
        s('text', { x: W / 2, y: 37, 'text-anchor': 'middle', class: 'node-type' }, String(n.type))));
    }
    return svg;
  }

  /** The definition editor: JSON textarea, "Add node" forms from the node catalog, the graph, validation errors. */
  function definitionEditor(definition, types, editable) {
    const textarea = h('textarea', { id: 'definition', rows: 14, spellcheck: 'false', readonly: !editable, class: 'mono' });
    textarea.value = JSON.stringify(definition, null, 2);
    const graphBox = h('div', { class: 'graph-box', id: 'graph' });
    const errorsBox = h('div', { id: 'definition-errors', class: 'errors' });
    const parseState = h('p', { class: 'muted', id: 'definition-state', 'aria-live': 'polite' });
    let errors = new Map();

    function current() {
      const def = JSON.parse(textarea.value);
      if (!def || typeof def !== 'object') throw new Error('the definition must be a JSON object');
      def.nodes = Array.isArray(def.nodes) ? def.nodes : [];
      def.edges = Array.isArray(def.edges) ? def.edges : [];
      return def;
    }
    function redraw() {
      let def;
      try {
        def = current();
        parseState.textContent = '';
      } catch (e) {
        parseState.textContent = `Not valid JSON yet: ${e.message}`;
        return;
      }
      graphBox.textContent = '';
      graphBox.append(graphSvg(def, errors));
      if (editable) refreshParents(def);
    }
    let timer = 0;
    textarea.addEventListener('input', () => { clearTimeout(timer); timer = setTimeout(redraw, 250); });

    function setErrors(details) {
      errors = new Map();
      errorsBox.textContent = '';
      const list = Array.isArray(details) ? details : [];
      for (const d of list) if (d && d.node) errors.set(d.node, [...(errors.get(d.node) || []), d.field ? `${d.field}: ${d.message}` : d.message]);
      if (list.length) {
        errorsBox.append(h('h3', {}, 'Validation errors'), h('ul', {}, list.map((d) =>
          h('li', { 'data-node': d && d.node ? d.node : null }, detailText(d)))));
      }
      redraw();
    }

    // "Add node": one form, its fields generated from the chosen type's params_schema.
    const parent = h('select', { id: 'add-parent' });
    const port = h('input', { id: 'add-port', type: 'text', list: 'add-port-list', placeholder: 'none' });
    const portList = h('datalist', { id: 'add-port-list' });
    function refreshParents(def) {
      const was = parent.value;
      parent.textContent = '';
      append(parent, [h('option', { value: '' }, '(none: a start node)'), def.nodes.map((n) => h('option', { value: n.id }, n.id))]);
      parent.value = def.nodes.some((n) => n.id === was) ? was : (def.nodes.length ? def.nodes[def.nodes.length - 1].id : '');
      refreshPorts(def);
    }
    function refreshPorts(def) {
      portList.textContent = '';
      const node = (def || safeDef()).nodes.find((n) => n.id === parent.value);
      const spec = node && types.find((t) => t.type === node.type);
      const ports = !spec ? [] : spec.ports === 'boolean' ? ['true', 'false']
        : spec.ports === 'cases' ? [...((node.params && node.params.cases) || []).map(String), 'default'] : [];
      append(portList, ports.map((p) => h('option', { value: p })));
      port.placeholder = ports.length ? ports.join(' / ') : 'none';
    }
    const safeDef = () => { try { return current(); } catch (_) { return { nodes: [], edges: [] }; } };
    parent.addEventListener('change', () => refreshPorts());

    let addForm = null;
    if (editable) {
      const typeSelect = h('select', { id: 'add-type' }, types.map((t) => h('option', { value: t.type }, t.type)));
      const summary = h('p', { class: 'muted', id: 'add-summary' });
      const nodeId = h('input', { id: 'add-id', type: 'text', autocomplete: 'off', required: true });
      const params = h('div', { class: 'params', id: 'add-params' });
      const renderParams = () => {
        const spec = types.find((t) => t.type === typeSelect.value);
        params.textContent = '';
        summary.textContent = spec ? spec.summary || '' : '';
        const schema = (spec && spec.params_schema) || {};
        const required = new Set(schema.required || []);
        for (const [name, sub] of Object.entries(schema.properties || {})) params.append(paramInput(spec.type, name, sub, required.has(name)));
        const used = new Set(safeDef().nodes.map((n) => n.id));
        let i = 1;
        while (used.has(`${typeSelect.value}_${i}`)) i++;
        nodeId.value = `${typeSelect.value}_${i}`;
      };
      typeSelect.addEventListener('change', renderParams);
      addForm = h('form', { class: 'add-node', id: 'add-node-form', 'aria-labelledby': 'add-node-title' },
        h('h3', { id: 'add-node-title' }, 'Add node'),
        h('div', { class: 'grid2' }, field('Node type', typeSelect), field('Node id', nodeId)),
        summary, params,
        h('div', { class: 'grid2' }, field('Connect from', parent), field('Port', port, 'only for if / switch parents')), portList,
        h('p', { class: 'actions' }, h('button', { type: 'submit', id: 'add-node' }, 'Add node')));
      addForm.addEventListener('submit', guard(async (ev) => {
        ev.preventDefault();
        const def = current();
        const id = nodeId.value.trim();
        if (!id) throw new Error('the node needs an id');
        if (def.nodes.some((n) => n.id === id)) throw new Error(`a node named ${id} already exists`);
        const values = {};
        for (const c of params.querySelectorAll('[data-param]')) {
          const v = paramValue(c);
          if (v !== undefined) values[c.dataset.param] = v;
        }
        def.nodes.push({ id, type: typeSelect.value, params: values });
        if (parent.value) def.edges.push(port.value.trim() ? { from: parent.value, to: id, port: port.value.trim() } : { from: parent.value, to: id });
        textarea.value = JSON.stringify(def, null, 2);
        port.value = '';
        redraw();
        parent.value = id;
        refreshPorts(def);
        renderParams();
        notice(`Added node ${id}.`);
      }));
      renderParams();
    }

    const root = h('div', { class: 'editor' },
      h('div', { class: 'editor-main' },
        h('h3', {}, 'Graph'), graphBox, errorsBox,
        field('Definition (JSON)', textarea), parseState),
      addForm);
    redraw();
    return { root, current, setErrors };
  }

  // ---- flows -----------------------------------------------------------------
  async function groupsList() {
    try { return (await api('GET', '/api/v1/flow-groups?limit=200')).items; } catch (_) { return []; }
  }
  function groupSelect(id, groups, value, anyLabel) {
    return h('select', { id }, h('option', { value: anyLabel ? '' : 'null' }, anyLabel || '(no group)'),
      anyLabel ? h('option', { value: 'null' }, '(no group)') : null,
      groups.map((g) => h('option', { value: g.id, selected: g.id === value }, g.name)));
  }

  async function flowsPage(app) {
    const [flows, groups] = await Promise.all([api('GET', '/api/v1/flows?limit=200'), groupsList()]);
    let items = flows.items;
    let cursor = flows.next_cursor;
    const groupName = (id) => (groups.find((g) => g.id === id) || {}).name || '—';
    const search = h('input', { id: 'flow-search', type: 'search', placeholder: 'name contains…', autocomplete: 'off' });
    const groupFilter = groupSelect('flow-group-filter', groups, null, 'All groups');
    const listBox = h('div', { id: 'flow-list' });
    const more = h('p', {});
    function renderList() {
      const term = search.value.trim().toLowerCase();
      const g = groupFilter.value;
      const shown = items.filter((f) => (!term || f.name.toLowerCase().includes(term))
        && (g === '' || (g === 'null' ? !f.group_id : f.group_id === g)));
      listBox.textContent = '';
      listBox.append(table(['Name', 'Group', 'Version', 'Updated'], shown.map((f) => [
        link(`/flows/${f.id}`, f.name), groupName(f.group_id),
        f.latest_version ? `v${f.latest_version}` : 'draft', time(f.updated_at)]), 'Flows'));
      more.textContent = '';
      if (cursor) more.append(button('Load more', async () => {
        const next = await api('GET', `/api/v1/flows${q({ limit: 200, cursor })}`);
        items = items.concat(next.items);
        cursor = next.next_cursor;
        renderList();
      }, 'secondary'));
    }
    search.addEventListener('input', renderList);
    groupFilter.addEventListener('change', renderList);
    app.append(section('All flows', h('div', { class: 'filters' }, field('Search flows', search), field('Group', groupFilter)), listBox, more));
    renderList();

    const groupRows = groups.map((g) => [g.name, String(items.filter((f) => f.group_id === g.id).length)]);
    const groupsSection = section('Flow groups', table(['Group', 'Flows on this page'], groupRows, 'Flow groups'));
    if (can('edit')) {
      const name = h('input', { id: 'group-name', type: 'text' });
      const form = h('form', { class: 'inline' }, field('New group name', name), h('button', { type: 'submit' }, 'Create group'));
      form.addEventListener('submit', guard(async (ev) => {
        ev.preventDefault();
        await api('POST', '/api/v1/flow-groups', { name: name.value.trim() });
        location.reload();
      }));
      groupsSection.append(form);
    }
    app.append(groupsSection);

    if (can('edit')) {
      const types = await nodeTypes();
      const name = h('input', { id: 'new-flow-name', type: 'text', required: true, autocomplete: 'off' });
      const group = groupSelect('new-flow-group', groups, null);
      const editor = definitionEditor({ nodes: [], edges: [] }, types, true);
      const create = button('Create flow', async () => {
        const body = { name: name.value.trim(), definition: editor.current() };
        if (group.value !== 'null') body.group_id = group.value;
        try {
          const flow = await api('POST', '/api/v1/flows', body);
          location.assign(`/flows/${flow.id}`);
        } catch (e) {
          if (e.status === 422) editor.setErrors(e.details);
          throw e;
        }
      });
      create.id = 'create-flow';
      app.append(section('New flow', h('div', { class: 'grid2' }, field('Flow name', name), field('Flow group', group)),
        editor.root, h('p', { class: 'actions' }, create)));
    }
  }

  async function flowPage(app, id) {
    const [flow, types, groups] = await Promise.all([api('GET', `/api/v1/flows/${id}`), nodeTypes(), groupsList()]);
    const title = $('#title');
    title.textContent = flow.name;
    document.title = `${flow.name} · floq`;
    const version = h('span', { id: 'flow-version' }, flow.latest_version ? `deployed v${flow.latest_version}` : 'not deployed');
    app.append(h('p', { class: 'meta' }, version, ' · updated ', time(flow.updated_at), ' · ', link(`/runs?flow_id=${id}`, 'Runs of this flow')));

    const editable = can('edit');
    const versions = versionsSection(id);
    const editor = definitionEditor(flow.definition, types, editable);
    const name = h('input', { id: 'flow-name', type: 'text', value: flow.name, readonly: !editable });
    const group = groupSelect('flow-group', groups, flow.group_id);
    if (!editable) group.disabled = true;
    const editSection = section('Definition', h('div', { class: 'grid2' }, field('Flow name', name), field('Flow group', group)), editor.root);
    if (editable) {
      const save = async () => {
        const body = { name: name.value.trim(), definition: editor.current(), group_id: group.value === 'null' ? null : group.value };
        try {
          const saved = await api('PUT', `/api/v1/flows/${id}`, body);
          editor.setErrors([]);
          title.textContent = saved.name;
        } catch (e) {
          if (e.status === 422) editor.setErrors(e.details);
          throw e;
        }
      };
      const saveBtn = button('Save', async () => { await save(); notice('Saved the draft.'); });
      saveBtn.id = 'save-flow';
      const deployBtn = button('Deploy', async () => {
        await save();
        const d = await api('POST', `/api/v1/flows/${id}/deploy`);
        version.textContent = `deployed v${d.version}`;
        notice(`Deployed version ${d.version}.`);
        await versions.reload();
      });
      deployBtn.id = 'deploy-flow';
      editSection.append(h('p', { class: 'actions' }, saveBtn, deployBtn));
    }
    app.append(editSection);
    app.append(versions.root);
    await versions.reload().catch(showError);

    if (can('execute')) {
      const input = h('textarea', { id: 'run-input', rows: 4, spellcheck: 'false', class: 'mono' });
      input.value = '{}';
      const runBtn = button('Run', async () => {
        let parsed;
        try { parsed = JSON.parse(input.value || '{}'); } catch (e) { throw new Error(`Run input: not valid JSON (${e.message})`); }
        const r = await api('POST', `/api/v1/flows/${id}/runs`, { input: parsed });
        notice('Started run ', h('a', { href: `/runs/${r.run_id}`, id: 'started-run' }, r.run_id), '.');
      });
      runBtn.id = 'run-flow';
      app.append(section('Run', field('Run input (JSON)', input), h('p', { class: 'actions' }, runBtn)));
    }
    if (editable) {
      app.append(webhookSection(id));
    }
    app.append(await schedulesSection(id, editable));
  }

  // ---- versions and their diff ------------------------------------------------
  function versionsSection(flowId) {
    const listBox = h('div', { id: 'versions' });
    const from = h('select', { id: 'diff-from' });
    const to = h('select', { id: 'diff-to' });
    const diffBox = h('div', { id: 'version-diff', 'aria-live': 'polite' });
    const compare = button('Compare', async () => {
      const d = await api('GET', `/api/v1/flows/${flowId}/versions/diff${q({ from: from.value, to: to.value })}`);
      renderDiff(diffBox, d);
    }, 'secondary');
    compare.id = 'diff-compare';
    const controls = h('div', { class: 'filters' }, field('From', from), field('To', to), h('p', { class: 'actions' }, compare));
    const root = section('Versions', listBox, controls, diffBox);
    async function reload() {
      const page = await api('GET', `/api/v1/flows/${flowId}/versions?limit=200`);
      listBox.textContent = '';
      listBox.append(table(['Version', 'Deployed', 'By'], page.items.map((v) => [
        `v${v.version}`, time(v.deployed_at), v.deployed_by ? h('span', { class: 'mono' }, short(v.deployed_by)) : '—']), 'Versions'));
      const options = (selected) => [h('option', { value: 'draft', selected: selected === 'draft' }, 'draft'),
        page.items.map((v) => h('option', { value: String(v.version), selected: selected === String(v.version) }, `v${v.version}`))];
      const items = page.items;
      const newest = items.length ? String(items[0].version) : 'draft';
      const older = items.length > 1 ? String(items[1].version) : newest;
      from.textContent = '';
      to.textContent = '';
      append(from, options(older));
      append(to, options(items.length > 1 ? newest : 'draft'));
      compare.disabled = !items.length;
    }
    return { root, reload };
  }

  function renderDiff(box, d) {
    box.textContent = '';
    const value = (v) => (v === null || v === undefined ? '—' : h('code', {}, JSON.stringify(v)));
    const label = (side) => (side === 'draft' ? 'the draft' : `v${side}`);
    box.append(h('h3', {}, `From ${label(d.from)} to ${label(d.to)}`));
    const empty = !d.nodes.added.length && !d.nodes.removed.length && !d.nodes.changed.length
      && !d.edges.added.length && !d.edges.removed.length && !d.fields.length;
    if (empty) { box.append(h('p', { class: 'muted', id: 'diff-none' }, 'No difference.')); return; }
    const edge = (e) => `${e.from} → ${e.to}${e.port ? ` (${e.port})` : ''}`;
    const rows = [];
    for (const n of d.nodes.added) rows.push([h('span', { class: 'diff-add' }, 'added'), `node ${n.id}`, '—', value(n)]);
    for (const n of d.nodes.removed) rows.push([h('span', { class: 'diff-del' }, 'removed'), `node ${n.id}`, value(n), '—']);
    for (const n of d.nodes.changed) {
      for (const f of n.fields) rows.push([h('span', { class: 'diff-chg' }, 'changed'), `node ${n.id}: ${f.field}`, value(f.before), value(f.after)]);
    }
    for (const e of d.edges.added) rows.push([h('span', { class: 'diff-add' }, 'added'), `edge ${edge(e)}`, '—', '']);
    for (const e of d.edges.removed) rows.push([h('span', { class: 'diff-del' }, 'removed'), `edge ${edge(e)}`, '', '—']);
    for (const f of d.fields) rows.push([h('span', { class: 'diff-chg' }, 'changed'), f.field, value(f.before), value(f.after)]);
    box.append(table(['Change', 'What', 'Before', 'After'], rows, 'Differences'));
  }

  function revealBox(label, value, id) {
    const input = h('input', { id, type: 'text', readonly: true, value, class: 'mono' });
    return h('div', { class: 'reveal' }, field(label, input), h('p', { class: 'actions' },
      button('Copy', async () => { await copy(input); notice(`${label} copied.`); }, 'secondary')),
    h('p', { class: 'warn' }, 'Shown this once: copy it now.'));
  }
  async function copy(input) {
    try {
      await navigator.clipboard.writeText(input.value);
    } catch (_) {
      input.select();
      document.execCommand('copy');
    }
  }

  function webhookSection(flowId) {
    const box = h('div', { id: 'webhook' });
    const show = (answer) => {
      box.textContent = '';
      const hook = answer.webhook || answer;
      if (answer.enabled === false) { box.append(h('p', {}, 'No webhook: enable one to start runs by URL.')); return; }
      if (hook.token) box.append(revealBox('Webhook URL', `${location.origin}${hook.path}`, 'webhook-url'));
      if (hook.signing_secret) box.append(revealBox('Signing secret', hook.signing_secret, 'webhook-secret'));
      const settings = Object.fromEntries(Object.entries(hook).filter(([k]) => k !== 'token' && k !== 'path' && k !== 'signing_secret'));
      box.append(h('p', {}, 'Webhook enabled.'), pre(settings));
    };
    return section('Webhook', box, h('p', { class: 'actions' },
      button('Show webhook', async () => show(await api('GET', `/api/v1/flows/${flowId}/webhook`)), 'secondary'),
      button('Enable webhook', async () => show(await api('PUT', `/api/v1/flows/${flowId}/webhook`, {}))),
      button('Rotate token', async () => show(await api('POST', `/api/v1/flows/${flowId}/webhook/rotate`)), 'secondary'),
      button('Disable webhook', async () => {
        await api('DELETE', `/api/v1/flows/${flowId}/webhook`);
        show({ enabled: false });
      }, 'danger')));
  }

  async function schedulesSection(flowId, editable) {
    const box = h('div', { id: 'schedules' });
    const load = async () => {
      const list = await api('GET', `/api/v1/flows/${flowId}/schedules?limit=200`);
      box.textContent = '';
      box.append(table(['Cron', 'Time zone', 'State', 'Next fires (UTC)', ''], list.items.map((sch) => {
        const fires = (sch.next_fires || []);
        const next = fires.length ? h('ul', { class: 'fires' }, fires.map((t) => h('li', {}, h('time', { datetime: t }, t.replace('T', ' ').replace(/\.\d+/, ''))))) : '—';
        const acts = h('span', { class: 'row-actions' });
        if (editable) {
          const toggle = button(sch.paused ? 'Resume' : 'Pause', async () => {
            await api('PATCH', `/api/v1/flows/${flowId}/schedules/${sch.id}`, { paused: !sch.paused });
            await load();
            notice(sch.paused ? 'Schedule resumed.' : 'Schedule paused.');
          }, 'small secondary');
          toggle.classList.add('schedule-toggle');
          acts.append(toggle, button('Remove', async () => {
            await api('DELETE', `/api/v1/flows/${flowId}/schedules/${sch.id}`);
            await load();
          }, 'danger small'));
        }
        return [h('code', {}, sch.cron), sch.timezone, h('span', { class: 'schedule-state' }, sch.paused ? 'paused' : 'active'), next, acts];
      }), 'Schedules'));
    };
    const sec = section('Schedules', box);
    try { await load(); } catch (e) { box.append(h('p', { class: 'error' }, e.message)); }
    if (editable) {
      const cron = h('input', { id: 'schedule-cron', type: 'text', placeholder: '0 * * * *' });
      const tz = h('input', { id: 'schedule-tz', type: 'text', value: 'UTC' });
      const form = h('form', { class: 'inline' }, field('Cron', cron), field('Time zone', tz), h('button', { type: 'submit' }, 'Add schedule'));
      form.addEventListener('submit', guard(async (ev) => {
        ev.preventDefault();
        await api('POST', `/api/v1/flows/${flowId}/schedules`, { cron: cron.value.trim(), timezone: tz.value.trim() || 'UTC' });
        cron.value = '';
        await load();
        notice('Schedule added.');
      }));
      sec.append(form);
    }
    return sec;
  }

  // ---- runs ------------------------------------------------------------------
  const LIVE = ['queued', 'running'];
  const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];

  const TRIGGERS = ['api', 'webhook', 'cron', 'mcp'];

  /** A datetime-local value (the browser's zone) as RFC 3339 UTC; '' stays ''. */
  const isoOf = (local) => (local ? new Date(local).toISOString() : '');
  /** RFC 3339 as a datetime-local value in the browser's zone. */
  function localOf(iso) {
    if (!iso) return '';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return '';
    const pad = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  async function runsPage(app) {
    const params = new URLSearchParams(location.search);
    const flows = (await api('GET', '/api/v1/flows?limit=200')).items;
    const flowName = new Map(flows.map((f) => [f.id, f.name]));
    const flowSel = h('select', { id: 'runs-flow' }, h('option', { value: '' }, 'All flows'),
      flows.map((f) => h('option', { value: f.id, selected: f.id === params.get('flow_id') }, f.name)));
    const statusSel = h('select', { id: 'runs-status' }, h('option', { value: '' }, 'Any status'),
      STATUSES.map((st) => h('option', { value: st, selected: st === params.get('status') }, st)));
    const triggerSel = h('select', { id: 'runs-trigger' }, h('option', { value: '' }, 'Any trigger'),
      TRIGGERS.map((t) => h('option', { value: t, selected: t === params.get('trigger') }, t)));
    const fromIn = h('input', { id: 'runs-from', type: 'datetime-local', value: localOf(params.get('from')) });
    const toIn = h('input', { id: 'runs-to', type: 'datetime-local', value: localOf(params.get('to')) });
    const listBox = h('div', { id: 'run-list', 'aria-live': 'polite' });
    const liveNote = h('p', { class: 'muted', id: 'runs-live' });
    const shown = new Map();
    let events = null;
    let reloadTimer = 0;
    const filter = () => ({ flow_id: flowSel.value, status: statusSel.value, trigger: triggerSel.value,
      from: isoOf(fromIn.value), to: isoOf(toIn.value) });
    async function load() {
      const f = filter();
      history.replaceState(null, '', `/runs${q(f)}`);
      const runs = await api('GET', `/api/v1/runs${q({ ...f, limit: 100 })}`);
      listBox.textContent = '';
      shown.clear();
      listBox.append(table(['Run', 'Flow', 'Status', 'Queued', 'Duration', 'Trigger'], runs.items.map((r) => {
        const status = h('span', { class: 'run-status', 'data-run': r.id }, badge(r.status));
        shown.set(r.id, status);
        return [h('a', { href: `/runs/${r.id}`, class: 'mono' }, short(r.id)), flowName.get(r.flow_id) || short(r.flow_id),
          status, time(r.queued_at), duration(r.started_at, r.finished_at), r.trigger];
      }), 'Runs'));
    }
    const reloadSoon = () => {
      if (reloadTimer) return;
      reloadTimer = setTimeout(() => { reloadTimer = 0; load().catch(showError); }, 1000);
    };
    // Live: the API's event stream says which runs changed; a row's status changes at once, and the list is read
    // again (at most once a second) for new runs and durations. EventSource reconnects by itself with Last-Event-ID.
    function listen() {
      if (events) events.close();
      events = new EventSource(`/api/v1/runs/events${q({ flow_id: flowSel.value })}`);
      events.addEventListener('open', () => { liveNote.textContent = 'Live: updates as runs change.'; });
      events.addEventListener('error', () => { liveNote.textContent = 'Live updates interrupted; reconnecting…'; });
      events.addEventListener('run', (ev) => {
        let change;
        try { change = JSON.parse(ev.data); } catch (_) { return; }
        const cell = shown.get(change.run_id);
        if (cell) {
          cell.textContent = '';
          cell.append(badge(change.status));
        }
        reloadSoon();
      });
      events.addEventListener('overflow', reloadSoon);
    }
    const change = guard(async () => { await load(); listen(); });
    for (const c of [flowSel, statusSel, triggerSel, fromIn, toIn]) c.addEventListener('change', change);
    window.addEventListener('pagehide', () => { if (events) events.close(); });
    app.append(section('Filter', h('div', { class: 'filters' }, field('Flow', flowSel), field('Status', statusSel),
      field('Trigger', triggerSel), field('Created from', fromIn), field('Created before', toIn))),
    section('Runs', liveNote, listBox));
    await load();
    listen();
  }

  function timelineSvg(run, steps) {
    const starts = steps.filter((st) => st.started_at).map((st) => new Date(st.started_at).getTime());
    const t0 = Math.min(new Date(run.started_at || run.queued_at).getTime(), ...starts);
    const ends = steps.map((st) => new Date(st.finished_at || st.started_at || Date.now()).getTime());
    const span = Math.max(1, ...ends.map((e) => e - t0));
    const W = 600, ROW = 22, LABEL = 130;
    const svg = s('svg', { class: 'timeline', viewBox: `0 0 ${W} ${steps.length * ROW + 24}`, role: 'img', 'aria-labelledby': 'timeline-title' },
      s('title', { id: 'timeline-title' }, `Timeline of ${steps.length} steps over ${duration(new Date(t0).toISOString(), new Date(t0 + span).toISOString())}`));
    steps.forEach((st, i) => {
      const from = st.started_at ? new Date(st.started_at).getTime() - t0 : 0;
      const to = (st.finished_at ? new Date(st.finished_at).getTime() : Date.now()) - t0;
      const x = LABEL + (Math.max(0, from) / span) * (W - LABEL - 10);
      const w = Math.max(2, ((to - Math.max(0, from)) / span) * (W - LABEL - 10));
      svg.append(s('text', { x: 0, y: i * ROW + 15, class: 'tl-label' }, st.node_id),
        s('rect', { x, y: i * ROW + 4, width: st.started_at ? w : 2, height: ROW - 8, rx: 3, class: `tl-bar s-${st.status}` },
          s('title', {}, `${st.node_id}: ${st.status}, ${duration(st.started_at, st.finished_at)}`)));
    });
    svg.append(s('text', { x: W - 4, y: steps.length * ROW + 18, 'text-anchor': 'end', class: 'tl-label' },
      duration(new Date(t0).toISOString(), new Date(t0 + span).toISOString())));
    return svg;
  }

  async function runPage(app, id) {
    const statusEl = $('#run-status');
    const body = h('div', { id: 'run' });
    app.append(body);
    let flowName = null;
    let timer = 0;
    async function load() {
      clearTimeout(timer);
      const run = await api('GET', `/api/v1/runs/${id}`);
      if (flowName === null) {
        try { flowName = (await api('GET', `/api/v1/flows/${run.flow_id}`)).name; } catch (_) { flowName = short(run.flow_id); }
      }
      statusEl.textContent = run.status;
      statusEl.className = `badge s-${run.status}`;
      document.title = `Run ${short(id)} (${run.status}) · floq`;
      body.textContent = '';
      const actions = h('p', { class: 'actions' });
      if (can('execute') && LIVE.includes(run.status)) {
        const b = button('Cancel', async () => { await api('POST', `/api/v1/runs/${id}/cancel`); notice('Cancel requested.'); await load(); }, 'danger');
        b.id = 'cancel-run';
        actions.append(b);
      }
      if (can('execute') && !LIVE.includes(run.status)) {
        const b = button('Retry', async () => {
          const r = await api('POST', `/api/v1/runs/${id}/retry`, {});
          notice('Started ', h('a', { href: `/runs/${r.run_id}`, id: 'retried-run' }, `run ${r.run_id}`), '.');
        });
        b.id = 'retry-run';
        actions.append(b);
      }
      const dl = h('dl', { class: 'facts' },
        h('dt', {}, 'Flow'), h('dd', {}, link(`/flows/${run.flow_id}`, flowName), ` v${run.version}`),
        h('dt', {}, 'Trigger'), h('dd', {}, run.trigger),
        h('dt', {}, 'Attempt'), h('dd', {}, String(run.attempt)),
        h('dt', {}, 'Queued'), h('dd', {}, time(run.queued_at)),
        h('dt', {}, 'Started'), h('dd', {}, time(run.started_at)),
        h('dt', {}, 'Finished'), h('dd', {}, time(run.finished_at)),
        h('dt', {}, 'Duration'), h('dd', {}, duration(run.started_at, run.finished_at)),
        run.retry_of ? [h('dt', {}, 'Retry of'), h('dd', {}, link(`/runs/${run.retry_of}`, short(run.retry_of)))] : null);
      body.append(section('Summary', dl, actions));
      if (run.error) {
        body.append(h('section', { class: 'card error-card', id: 'run-error' }, h('h2', {}, 'Error'),
          h('p', {}, h('strong', {}, run.error.code || 'error'), run.error.node ? [' at node ', h('code', {}, run.error.node)] : null),
          h('p', {}, run.error.message || ''), pre(run.error)));
      }
      const steps = run.steps || [];
      const timeline = section('Timeline');
      if (steps.length) timeline.append(timelineSvg(run, steps));
      timeline.append(table(['Node', 'Status', 'Started', 'Duration', 'Attempts'], steps.map((st) => [
        h('a', { href: `#step-${st.node_id}` }, st.node_id), badge(st.status), time(st.started_at),
        duration(st.started_at, st.finished_at), st.attempts !== undefined ? String(st.attempts) : st.attempt !== undefined ? String(st.attempt) : '—']), 'Steps'));
      body.append(timeline);
      const stepsSec = section('Steps');
      for (const st of steps) {
        const details = h('details', { id: `step-${st.node_id}`, class: 'step', open: !!st.error || steps.length <= 4 },
          h('summary', {}, h('code', {}, st.node_id), ' ', badge(st.status)));
        for (const key of ['input', 'output', 'error']) {
          if (st[key] !== undefined && st[key] !== null) details.append(h('h3', {}, key[0].toUpperCase() + key.slice(1)), pre(st[key]));
        }
        stepsSec.append(details);
      }
      if (steps.length) body.append(stepsSec);
      body.append(section('Input', pre(run.input)), section('Output', pre(run.output)));
      if (LIVE.includes(run.status)) timer = setTimeout(() => load().catch(showError), 2000);
    }
    await load();
  }

  // ---- credentials -----------------------------------------------------------
  async function credentialsPage(app) {
    const listBox = h('div', { id: 'credential-list' });
    const manage = can('integrations');
    async function load() {
      const list = await api('GET', '/api/v1/credentials?limit=200');
      listBox.textContent = '';
      listBox.append(table(['Name', 'Type', 'Fields', 'Hint', 'OAuth', ''], list.items.map((c) => {
        const acts = h('span', { class: 'row-actions' });
        if (manage && c.type === 'oauth2') {
          acts.append(button(c.oauth && c.oauth.connected ? 'Reconnect' : 'Connect', async () => {
            const r = await api('POST', `/api/v1/credentials/${c.id}/oauth/authorize`, { return_to: '/credentials' });
            location.assign(r.authorize_url);
          }, 'small'));
        }
        if (manage) {
          acts.append(button('Delete', async () => {
            if (!confirm(`Delete credential ${c.name}?`)) return;
            await api('DELETE', `/api/v1/credentials/${c.id}`);
            await load();
          }, 'danger small'));
        }
        const oauth = c.oauth ? (c.oauth.needs_reconnect ? 'needs reconnect' : c.oauth.connected ? 'connected' : 'not connected') : '—';
        return [c.name, c.type, (c.fields || []).join(', '), c.hint || '—', oauth, acts];
      }), 'Credentials'));
    }
    app.append(section('Integrations', listBox));
    await load();
    if (!manage) return;
    let providers = [];
    try { providers = (await api('GET', '/api/v1/oauth/providers')).items || []; } catch (_) { providers = []; }
    // The form of each type comes from the schema the API validates it with; `writeOnly` fields are secrets.
    const types = (await api('GET', '/api/v1/credential-types')).items;
    const schemaOf = new Map(types.map((t) => [t.type, t.schema]));
    const type = h('select', { id: 'credential-type' }, types.map((t) => h('option', { value: t.type }, t.type)));
    const name = h('input', { id: 'credential-name', type: 'text', required: true, autocomplete: 'off' });
    const fields = h('div', { id: 'credential-fields' });
    const renderFields = () => {
      fields.textContent = '';
      const schema = schemaOf.get(type.value) || { properties: {} };
      const required = schema.required || [];
      for (const [f, prop] of Object.entries(schema.properties || {})) {
        let control;
        if (f === 'provider' && providers.length) {
          control = h('select', {}, providers.map((p) => h('option', { value: p.id }, p.name || p.id)));
        } else {
          const secret = prop.writeOnly === true;
          control = h('input', { type: secret ? 'password' : 'text', autocomplete: secret ? 'new-password' : 'off',
            required: required.includes(f), pattern: prop.pattern || null });
        }
        control.id = `credential-field-${f}`;
        control.dataset.field = f;
        if (prop.type === 'array') control.dataset.list = 'true';
        const label = prop.type === 'array' ? `${f} (space-separated)` : f;
        fields.append(field(label, control, required.includes(f) ? null : 'optional'));
      }
    };
    type.addEventListener('change', renderFields);
    renderFields();
    const form = h('form', { id: 'credential-form', autocomplete: 'off' },
      h('div', { class: 'grid2' }, field('Type', type), field('Name', name)), fields,
      h('p', { class: 'muted' }, 'Secret values are write-only: they are encrypted and never shown again.'),
      h('p', { class: 'actions' }, h('button', { type: 'submit', id: 'create-credential' }, 'Create credential')));
    form.addEventListener('submit', guard(async (ev) => {
      ev.preventDefault();
      const data = {};
      for (const c of fields.querySelectorAll('[data-field]')) {
        const v = c.value.trim();
        if (!v) continue;
        data[c.dataset.field] = c.dataset.list ? v.split(/[\s,]+/).filter(Boolean) : c.value;
      }
      try {
        await api('POST', '/api/v1/credentials', { name: name.value.trim(), type: type.value, data });
        name.value = '';
        notice('Credential created.');
        await load();
      } finally {
        for (const c of fields.querySelectorAll('input')) c.value = '';
      }
    }));
    app.append(section('New credential', form));
  }

  // ---- audit -----------------------------------------------------------------
  async function auditPage(app) {
    const action = h('input', { id: 'audit-action', type: 'text', placeholder: 'flow.* or auth.login' });
    const rtype = h('input', { id: 'audit-resource', type: 'text', placeholder: 'flow, run, credential…' });
    const from = h('input', { id: 'audit-from', type: 'datetime-local' });
    const to = h('input', { id: 'audit-to', type: 'datetime-local' });
    const iso = (input) => (input.value ? new Date(input.value).toISOString() : '');
    const exportLink = h('a', { id: 'audit-export', href: '/api/v1/audit/export', download: 'audit.ndjson' }, 'Export NDJSON');
    const listBox = h('div', { id: 'audit-list' });
    const more = h('p', {});
    const verifyBox = h('div', { id: 'audit-verify', 'aria-live': 'polite' });
    let items = [];
    const filter = () => ({ action: action.value.trim(), resource_type: rtype.value.trim(), from: iso(from), to: iso(to) });
    function render(cursor) {
      listBox.textContent = '';
      listBox.append(table(['Time', 'Actor', 'Action', 'Resource', 'Outcome'], items.map((e) => [
        time(e.at), (e.actor && (e.actor.label || e.actor.id || e.actor.type)) || '—', h('code', {}, e.action),
        e.resource && e.resource.type ? `${e.resource.type} ${e.resource.id || ''}` : '—', badge(e.outcome)]), 'Audit entries'));
      more.textContent = '';
      if (cursor) more.append(button('Load more', () => load(cursor), 'secondary'));
    }
    async function load(cursor) {
      const f = filter();
      exportLink.href = `/api/v1/audit/export${q({ from: f.from, to: f.to })}`;
      const page = await api('GET', `/api/v1/audit${q({ ...f, limit: 100, cursor })}`);
      items = cursor ? items.concat(page.items) : page.items;
      render(page.next_cursor);
    }
    const form = h('form', { class: 'filters', id: 'audit-filters' }, field('Action', action), field('Resource type', rtype),
      field('From', from), field('To', to), h('p', { class: 'actions' }, h('button', { type: 'submit' }, 'Apply filters')));
    form.addEventListener('submit', guard(async (ev) => { ev.preventDefault(); await load(); }));
    const verify = button('Verify chain', async () => {
      verifyBox.textContent = 'Verifying…';
      let from_seq;
      let checked = 0, pending = 0;
      for (let i = 0; i < 100; i++) {
        const v = await api('GET', `/api/v1/audit/verify${q({ from_seq })}`);
        checked += v.checked;
        pending = v.pending;
        if (!v.ok) {
          verifyBox.textContent = '';
          verifyBox.append(h('p', { class: 'error' }, `Broken chain at seq ${v.first_broken && v.first_broken.seq}: ${v.first_broken && v.first_broken.reason}`));
          return;
        }
        if (v.next_seq === null || v.next_seq === undefined) break;
        from_seq = v.next_seq;
      }
      verifyBox.textContent = '';
      verifyBox.append(h('p', { class: 'ok' }, `Chain intact: ${checked} entries checked, ${pending} not sealed yet.`));
    });
    verify.id = 'verify-chain';
    app.append(section('Filter', form), section('Integrity', h('p', { class: 'actions' }, verify, exportLink), verifyBox),
      section('Entries', listBox, more));
    await load();
  }

  // ---- admin -----------------------------------------------------------------
  const ROLES = ['admin', 'flow_editor', 'flow_executor', 'integration_manager', 'viewer', 'analytics_viewer', 'audit_viewer'];

  /** A section that loads on its own: a refusal shows the API's message there. */
  async function loaded(sec, fn) {
    const box = h('div', {});
    sec.append(box);
    try { await fn(box); } catch (e) { box.textContent = ''; box.append(h('p', { class: 'error' }, e.message)); }
    return sec;
  }

  async function adminPage(app) {
    const admin = can('admin');
    const users = section('Users');
    const usersLoad = async (box) => {
      const list = await api('GET', '/api/v1/users?limit=200');
      box.textContent = '';
      box.append(table(['Email', 'Name', 'Roles', 'Joined'], list.items.map((u) => [u.email, u.name || '—', (u.roles || []).join(', '), time(u.joined_at || u.created_at)]), 'Users'));
    };
    await loaded(users, usersLoad);
    if (admin) {
      const email = h('input', { id: 'user-email', type: 'email', autocomplete: 'off' });
      const name = h('input', { id: 'user-name', type: 'text', autocomplete: 'off' });
      const pw = h('input', { id: 'user-password', type: 'password', autocomplete: 'new-password' });
      const role = h('select', { id: 'user-role' }, ROLES.map((r) => h('option', { value: r, selected: r === 'viewer' }, r)));
      const form = h('form', { class: 'inline' }, field('Email', email), field('Name', name),
        field('Password', pw, 'optional: without one, an invitation is mailed'), field('Role', role), h('button', { type: 'submit' }, 'Add user'));
      form.addEventListener('submit', guard(async (ev) => {
        ev.preventDefault();
        const body = { email: email.value.trim(), name: name.value.trim(), roles: [role.value] };
        if (pw.value) body.password = pw.value;
        try {
          const r = await api('POST', '/api/v1/users', body);
          notice(r.status === 'invited' ? r.message : `Added ${body.email}.`);
          email.value = name.value = '';
          users.textContent = '';
          users.append(h('h2', {}, 'Users'));
          await loaded(users, usersLoad);
          users.append(form);
        } finally {
          pw.value = '';
        }
      }));
      users.append(form);
    }
    app.append(users);

    app.append(await loaded(section('Invitations'), async (box) => {
      const list = await api('GET', '/api/v1/invitations?limit=200');
      box.append(table(['Email', 'Roles', 'Expires', ''], list.items.map((i) => [i.email, (i.roles || []).join(', '), time(i.expires_at),
        admin ? button('Withdraw', async () => { await api('DELETE', `/api/v1/invitations/${i.id}`); location.reload(); }, 'danger small') : '']), 'Invitations'));
    }));

    const keys = section('API keys');
    const keysBox = h('div', {});
    const keysLoad = async () => {
      const list = await api('GET', '/api/v1/api-keys?limit=200');
      keysBox.textContent = '';
      keysBox.append(table(['Name', 'Scopes', 'Expires', ''], list.items.map((k) => [k.name, (k.scopes || []).join(', '), time(k.expires_at),
        button('Revoke', async () => { await api('DELETE', `/api/v1/api-keys/${k.id}`); await keysLoad(); }, 'danger small')]), 'API keys'));
    };
    keys.append(keysBox);
    try { await keysLoad(); } catch (e) { keysBox.append(h('p', { class: 'error' }, e.message)); }
    const keyName = h('input', { id: 'key-name', type: 'text', autocomplete: 'off' });
    const scope = h('select', { id: 'key-scope' }, h('option', { value: 'api' }, 'api (REST API)'), h('option', { value: 'mcp' }, 'mcp (/mcp)'));
    const ttl = h('input', { id: 'key-ttl', type: 'text', inputmode: 'numeric', placeholder: 'default' });
    const reveal = h('div', { id: 'key-reveal' });
    const keyForm = h('form', { class: 'inline' }, field('Key name', keyName), field('Scope', scope), field('Lifetime (days)', ttl),
      h('button', { type: 'submit', id: 'create-key' }, 'Create key'));
    keyForm.addEventListener('submit', guard(async (ev) => {
      ev.preventDefault();
      const body = { name: keyName.value.trim(), scopes: [scope.value] };
      if (ttl.value.trim()) body.ttl_seconds = Math.round(Number(ttl.value) * 86400);
      const k = await api('POST', '/api/v1/api-keys', body);
      reveal.textContent = '';
      reveal.append(revealBox('New API key', k.token, 'new-key-token'));
      keyName.value = '';
      await keysLoad();
    }));
    keys.append(keyForm, reveal);
    app.append(keys);

    app.append(await loaded(section('Retention'), async (box) => {
      const r = await api('GET', '/api/v1/settings/retention');
      const inputs = {};
      const fields = [['audit_max_age_days', 'Keep audit entries (days)'], ['audit_max_entries', 'Keep at most (audit entries)'], ['runs_max_age_days', 'Keep runs (days)']];
      const form = h('form', { class: 'inline', id: 'retention-form' }, fields.map(([k, label]) => {
        inputs[k] = h('input', { id: `retention-${k}`, type: 'text', inputmode: 'numeric', value: r[k] === null || r[k] === undefined ? '' : r[k], readonly: !admin });
        return field(label, inputs[k]);
      }), admin ? h('button', { type: 'submit' }, 'Save retention') : null);
      form.addEventListener('submit', guard(async (ev) => {
        ev.preventDefault();
        const body = {};
        for (const [k] of fields) body[k] = inputs[k].value.trim() === '' ? null : Number(inputs[k].value);
        await api('PUT', '/api/v1/settings/retention', body);
        notice('Retention saved.');
      }));
      box.append(form);
    }));
  }

  // ---- start -----------------------------------------------------------------
  const PAGES = { flows: flowsPage, flow: flowPage, runs: runsPage, run: runPage, credentials: credentialsPage, audit: auditPage, admin: adminPage };

  async function start() {
    if (page === 'login') { loginPage(); return; }
    const app = $('#app');
    try {
      me = await api('GET', '/api/v1/auth/me');
      renderAccount();
      document.body.dataset.roles = me.roles.join(' ');
      app.textContent = '';
      await PAGES[page](app, pageId);
      document.body.dataset.ready = 'true';
    } catch (e) {
      if (e.status === 401) return;
      app.textContent = '';
      showError(e);
      document.body.dataset.ready = 'true';
    }
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
