// Policy sets (guardrails with their review rules, masking) and the dry-run evaluator:
// what a statement, command or request would meet, and how values would be masked.
import { h, clear, notice, field, table, decisionBadge } from '../dom.js';
import { api, enc } from '../api.js';

function editor(kind, set, reload) {
  const text = h('textarea', { rows: 14, class: 'code', 'aria-label': `${kind} set ${set?.name || 'new'}` },
    JSON.stringify(set ? Object.fromEntries(Object.entries(set).filter(([k]) => k !== 'source')) : (kind === 'guardrails'
      ? { name: 'new-set', rules: [{ name: 'no-drop', sql_statements: ['drop_table'] }] }
      : { name: 'new-masking', detectors: ['email'], style: 'full' }), null, 2));
  const status = h('div', { 'aria-live': 'polite' });
  const readOnly = set?.source === 'config';
  return h('div', { class: 'card' },
    h('h3', {}, set ? set.name : `New ${kind} set`, readOnly ? h('small', { class: 'muted' }, ' (from the configuration file: read-only here)') : ''),
    text, status,
    readOnly ? null : h('div', { class: 'actions' },
      h('button', { type: 'button', onclick: async () => {
        try {
          const body = JSON.parse(text.value);
          const r = await api.put(`/api/policies/${kind}/${enc(body.name)}`, body);
          clear(status, notice('Saved.', 'ok'), r.weakened ? notice(`Weakens protection (recorded): ${r.weakened.join('; ')}`, 'warn') : null);
          await reload();
        } catch (e) { clear(status, notice(e.message, 'error')); }
      } }, 'Save'),
      set ? h('button', { type: 'button', class: 'danger', onclick: async () => {
        if (!confirm(`Delete ${set.name}?`)) return;
        try { await api.del(`/api/policies/${kind}/${enc(set.name)}`); await reload(); } catch (e) { clear(status, notice(e.message, 'error')); }
      } }, 'Delete') : null));
}

function evaluator(connections) {
  const conn = h('select', {}, h('option', { value: '' }, '(choose)'), connections.map(c => h('option', { value: c.name }, `${c.name} (${c.kind})`)));
  const what = h('select', {}, ['sql', 'shell', 'http'].map(k => h('option', { value: k }, k)));
  const input = h('textarea', { rows: 3, class: 'code', placeholder: 'DELETE FROM orders  ·  rm -rf /var  ·  DELETE /api/users/1' });
  const values = h('textarea', { rows: 3, class: 'code', placeholder: 'one value per line, optionally column=value\nemail=alice@example.com' });
  const out = h('div', { 'aria-live': 'polite' });
  return h('form', { class: 'card', onsubmit: async (ev) => {
    ev.preventDefault();
    const body = { connection: conn.value || undefined };
    if (input.value.trim()) {
      if (what.value === 'http') {
        const [method, ...path] = input.value.trim().split(/\s+/);
        body.http = { method, path: path.join(' ') || '/' };
      } else body[what.value] = input.value;
    }
    body.values = values.value.split('\n').filter(l => l.trim()).map(l => {
      const m = l.match(/^([A-Za-z0-9_.]+)=(.*)$/);
      return m ? { column: m[1], value: m[2] } : { value: l };
    });
    try {
      const r = await api.post('/api/policies/evaluate', body);
      clear(out, r.decision ? h('p', {}, 'Decision: ', decisionBadge(r.decision), r.decision.reason ? ` ${r.decision.reason}` : '') : null,
        r.masked.length ? table(['Value', 'Masked as', 'Found'], r.masked.map((m, i) => [body.values[i].value, m.value === null ? 'NULL' : m.value, m.found.join(', ')])) : null);
    } catch (e) { clear(out, notice(e.message, 'error')); }
  } }, h('h2', {}, 'Dry run'), field('Connection', conn, 'its guardrail, review and masking sets'), field('Kind of input', what),
  field('Statement, command or request', input), field('Values to mask', values), h('button', { type: 'submit' }, 'Evaluate'), out);
}

export async function render(main) {
  const body = h('div', {});
  async function reload() {
    const [p, conns] = await Promise.all([api.get('/api/policies'), api.get('/api/connections')]);
    clear(body, evaluator(conns),
      h('h2', {}, 'Guardrail and review sets'), p.guardrails.map(s => editor('guardrails', s, reload)), editor('guardrails', null, reload),
      h('h2', {}, 'Masking sets'), p.masking.map(s => editor('masking', s, reload)), editor('masking', null, reload));
  }
  clear(main, h('h1', {}, 'Policies'), body);
  await reload();
}
