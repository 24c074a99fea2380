// Creating and editing a connection. Every setting a connection has is a field here,
// and an edit sends only what changed (a JSON merge patch): a setting the form does
// not show, or one the gateway adds later, is left as it is, never dropped.
import { h, clear, notice, field, listValue } from '../dom.js';
import { api, enc } from '../api.js';

const KINDS = ['postgres', 'mysql', 'ssh', 'kubernetes', 'http'];
// [path, label, type, kinds it applies to (all when absent)]
const FIELDS = [
  ['kind', 'Kind', 'select:' + KINDS.join(',')],
  ['target', 'Target', 'text'],
  ['username', 'Backend account', 'text', ['postgres', 'mysql', 'ssh']],
  ['description', 'Description', 'text'],
  ['allowed_groups', 'Allowed groups', 'list'],
  ['agent', 'Network agent', 'agent'],
  ['tls.mode', 'TLS to the target', 'select:verify,insecure,disable'],
  ['tls.server_name', 'TLS server name', 'text'],
  ['tls.ca_pem', 'CA certificate (PEM)', 'textarea'],
  ['policies.guardrails', 'Guardrail sets', 'multi:guardrails'],
  ['policies.reviews', 'Review sets (guardrail sets whose review rules hold commands)', 'multi:guardrails'],
  ['policies.masking', 'Masking sets', 'multi:masking'],
  ['policies.verbatim_statements', 'Record statements verbatim (no masking of statement text)', 'bool'],
  ['access.request_required', 'A grant is required (just-in-time access)', 'bool'],
  ['access.reviewers', 'Reviewer groups (empty: admin groups)', 'list'],
  ['access.approvals', 'Approvals needed', 'number'],
  ['access.max_duration_secs', 'Longest grant (seconds)', 'number'],
  ['access.review_timeout_secs', 'Review timeout (seconds)', 'number'],
  ['access.reuse_approved_reviews', 'An approved command may be reused', 'bool'],
  ['ssh.host_key', 'Pinned host key', 'textarea', ['ssh']],
  ['ssh.trust_on_first_use', 'Trust the host key on first use', 'bool', ['ssh']],
  ['ssh.port_forwarding', 'Allow port forwarding', 'bool', ['ssh']],
  ['kubernetes.impersonate', 'Impersonate the person (Kubernetes RBAC decides)', 'bool', ['kubernetes']],
  ['kubernetes.port_forwarding', 'Allow port-forward and proxies', 'bool', ['kubernetes']],
  ['kubernetes.reveal_secrets', 'Show Secret values unmasked', 'bool', ['kubernetes']],
  ['http.credential_header', 'Header carrying the held credential', 'text', ['http']],
];
// Optional values: an empty field means "none" (null in a patch).
const OPTIONAL = new Set(['username', 'description', 'agent', 'tls.server_name', 'tls.ca_pem', 'ssh.host_key', 'http.credential_header']);
// What the gateway uses when a number is left empty.
const DEFAULTS = { 'access.approvals': 1, 'access.max_duration_secs': 28800, 'access.review_timeout_secs': 600 };
const READ_ONLY = new Set(['name', 'secret_kind', 'created_at', 'updated_at', 'weakened']);

const get = (o, path) => path.split('.').reduce((v, k) => (v === undefined || v === null ? undefined : v[k]), o);
function set(o, path, value) {
  const keys = path.split('.');
  let cur = o;
  for (const k of keys.slice(0, -1)) cur = cur[k] = (cur[k] && typeof cur[k] === 'object') ? cur[k] : {};
  cur[keys.at(-1)] = value;
}
const same = (a, b) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);

// The merge patch that turns `from` into `to` (objects key by key, lists whole).
export function mergePatch(from, to) {
  const patch = {};
  for (const k of Object.keys(to)) {
    if (READ_ONLY.has(k)) continue;
    const a = from[k];
    const b = to[k];
    if (b && typeof b === 'object' && !Array.isArray(b) && a && typeof a === 'object' && !Array.isArray(a)) {
      const inner = mergePatch(a, b);
      if (Object.keys(inner).length) patch[k] = inner;
    } else if (!same(a, b)) {
      patch[k] = b === undefined ? null : b;
    }
  }
  return patch;
}

function control(path, type, value, sets, agents) {
  if (type.startsWith('select:')) {
    return h('select', {}, type.slice(7).split(',').map(o => h('option', { value: o, selected: o === value ? true : null }, o)));
  }
  if (type.startsWith('multi:')) {
    const names = sets[type.slice(6)];
    const chosen = new Set(value || []);
    const extra = [...chosen].filter(n => !names.includes(n));
    return h('select', { multiple: true, size: Math.min(6, Math.max(2, names.length + extra.length)) },
      [...names, ...extra].map(n => h('option', { value: n, selected: chosen.has(n) ? true : null }, n)));
  }
  switch (type) {
    case 'bool': return h('input', { type: 'checkbox', checked: !!value });
    case 'number': return h('input', { type: 'number', min: 0, value: value ?? '', placeholder: `default ${DEFAULTS[path]}` });
    case 'list': return h('input', { value: (value || []).join(', '), placeholder: 'comma separated' });
    case 'textarea': return h('textarea', { rows: 3 }, value ?? '');
    case 'agent': return h('select', {}, h('option', { value: '' }, 'none: the gateway dials directly'),
      [...new Set([...agents, ...(value ? [value] : [])])].map(a => h('option', { value: a, selected: a === value ? true : null }, a)));
    default: return h('input', { value: value ?? '' });
  }
}

function read(type, el, path) {
  if (type.startsWith('multi:')) return [...el.selectedOptions].map(o => o.value);
  switch (type) {
    case 'bool': return el.checked;
    case 'number': return el.value === '' ? undefined : Number(el.value);
    case 'list': return listValue(el.value);
    default: {
      const v = el.value;
      return OPTIONAL.has(path) && v.trim() === '' ? null : v;
    }
  }
}

export async function render(main, [name], params) {
  const editing = !!name;
  const [original, policies, agents] = await Promise.all([
    editing ? api.get(`/api/connections/${enc(name)}`) : Promise.resolve(null),
    api.get('/api/policies'),
    api.get('/api/agents').then(a => a.map(x => x.name)).catch(() => []),
  ]);
  const sets = { guardrails: policies.guardrails.map(s => s.name), masking: policies.masking.map(s => s.name) };
  const controls = new Map();
  const nameInput = h('input', { required: true, pattern: '[a-z0-9][a-z0-9_-]*', value: name || '', readonly: editing ? true : null });
  const secret = h('input', { type: 'password', autocomplete: 'new-password',
    placeholder: editing ? (original.secret_kind ? `a ${original.secret_kind} is held: leave empty to keep it` : 'none held') : '' });
  const secretKind = h('select', {}, ['', 'password', 'private_key', 'token'].map(o => h('option', { value: o }, o || 'infer from the value')));
  const groups = {};
  for (const [path, label, type, kinds] of FIELDS) {
    const el = control(path, type, original ? get(original, path) : undefined, sets, agents);
    controls.set(path, [type, el]);
    const group = path.includes('.') ? path.split('.')[0] : 'general';
    (groups[group] ||= []).push([field(label, el), kinds]);
  }
  const fieldsets = Object.entries(groups).map(([g, items]) => h('fieldset', { dataset: { group: g } },
    h('legend', {}, { general: 'Connection', tls: 'TLS', policies: 'Policies', access: 'Access and reviews', ssh: 'SSH', kubernetes: 'Kubernetes', http: 'HTTP' }[g]),
    items.map(([el, kinds]) => { if (kinds) el.dataset.kinds = kinds.join(' '); return el; })));
  const kindSelect = controls.get('kind')[1];
  const showForKind = () => {
    for (const el of main.querySelectorAll('[data-kinds]')) el.hidden = !el.dataset.kinds.split(' ').includes(kindSelect.value);
    for (const fs of main.querySelectorAll('fieldset[data-group]')) {
      fs.hidden = [...fs.querySelectorAll('.field')].every(f => f.hidden);
    }
  };
  kindSelect.addEventListener('change', showForKind);

  const preview = h('pre', { class: 'preview' });
  const status = h('div', { 'aria-live': 'polite' });
  function body() {
    const next = original ? structuredClone(original) : { name: nameInput.value };
    for (const [path, [type, el]] of controls) {
      const v = read(type, el, path);
      if (v === undefined) continue;
      if (!original && (v === null || (Array.isArray(v) && !v.length && path !== 'allowed_groups'))) continue;
      set(next, path, v);
    }
    if (secret.value) {
      next.secret = secret.value;
      if (secretKind.value) next.secret_kind = secretKind.value;
    }
    if (!original) return next;
    const patch = mergePatch(original, next);
    if (secret.value && secretKind.value) patch.secret_kind = secretKind.value;
    return patch;
  }
  const showPreview = () => {
    const b = body();
    preview.textContent = JSON.stringify({ ...b, ...(b.secret ? { secret: '(hidden)' } : {}) }, null, 2);
  };
  const form = h('form', { class: 'connection-form', onsubmit: async (ev) => {
    ev.preventDefault();
    const b = body();
    try {
      let saved;
      if (editing) {
        if (!Object.keys(b).length) { clear(status, notice('Nothing changed.')); return; }
        saved = await api.patch(`/api/connections/${enc(name)}`, b);
      } else {
        saved = await api.post('/api/connections', b);
      }
      secret.value = '';
      clear(status, notice(`Saved ${saved.name}.`, 'ok'),
        saved.weakened ? notice(`This change weakens protection (recorded): ${saved.weakened.join('; ')}`, 'warn') : null,
        h('p', {}, h('a', { href: '#/admin/connections' }, 'Back to the list')));
      if (!editing) location.hash = `#/admin/connections/${enc(saved.name)}?created=1`;
    } catch (e) { clear(status, notice(`${e.code}: ${e.message}`, 'error')); }
  }, oninput: showPreview, onchange: showPreview },
  h('fieldset', {}, h('legend', {}, 'Identity and credential'), field('Name', nameInput, editing ? 'names cannot change' : 'lowercase letters, digits, - and _'),
    field('Credential the gateway holds', secret, 'write-only: never shown again'), field('Credential kind', secretKind)),
  fieldsets,
  h('details', {}, h('summary', {}, editing ? 'The change that will be sent' : 'The request that will be sent'), preview),
  h('div', { class: 'actions' }, h('button', { type: 'submit' }, editing ? 'Save changes' : 'Create connection'),
    editing ? h('button', { type: 'button', class: 'danger', onclick: async () => {
      if (!confirm(`Delete ${name} and its held credential?`)) return;
      try { await api.del(`/api/connections/${enc(name)}`); location.hash = '#/admin/connections'; } catch (e) { clear(status, notice(e.message, 'error')); }
    } }, 'Delete') : null),
  status);
  if (editing && params?.get('created')) clear(status, notice(`Created ${name}.`, 'ok'));
  clear(main, h('h1', {}, editing ? `Edit ${name}` : 'New connection'), form);
  showForKind();
  showPreview();
}
