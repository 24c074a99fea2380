// Admin: the list of connections (each opens its form) and API keys.
import { h, clear, notice, field, table, fmtTime, statusBadge, listValue } from '../dom.js';
import { api, enc } from '../api.js';

export async function renderConnections(main) {
  const conns = await api.get('/api/connections');
  clear(main, h('h1', {}, 'Connections'),
    h('p', {}, h('a', { class: 'button', href: '#/admin/connections/new' }, 'New connection')),
    table(['Name', 'Kind', 'Target', 'Groups', 'Policies', 'Grant', 'Agent', ''],
      conns.map(c => [c.name, c.kind, c.target, c.allowed_groups.join(', '),
        ['guardrails', 'masking', 'reviews'].map(k => c.policies[k].length ? `${k}: ${c.policies[k].join(', ')} ` : '').join(''),
        c.access.request_required ? 'required' : 'standing', c.agent || '—',
        h('a', { href: `#/admin/connections/${enc(c.name)}` }, `Edit ${c.name}`)])));
}

export async function renderKeys(main) {
  const list = h('div', {});
  const issued = h('div', { 'aria-live': 'polite' });
  async function reload() {
    const keys = await api.get('/api/api-keys');
    clear(list, table(['Id', 'Name', 'Subject', 'Groups', 'Created', 'Expires', 'Status', ''],
      keys.map(k => [k.id, k.name, k.subject, k.groups.join(', '), fmtTime(k.created_at), fmtTime(k.expires_at) || 'never',
        statusBadge(k.status),
        k.status === 'active' ? h('button', { type: 'button', class: 'small danger', onclick: async () => {
          if (!confirm(`Revoke ${k.name}? Its open sessions end at once.`)) return;
          await api.del(`/api/api-keys/${enc(k.id)}`);
          await reload();
        } }, 'Revoke') : ''])));
  }
  const name = h('input', { required: true });
  const groups = h('input', { placeholder: 'ci, dba' });
  const ttl = h('input', { type: 'number', min: 60, placeholder: 'default' });
  const form = h('form', { class: 'card inline', onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const body = { name: name.value, groups: listValue(groups.value) };
      if (ttl.value) body.ttl_secs = Number(ttl.value);
      const k = await api.post('/api/api-keys', body);
      // The key is shown this once, in a field the user copies from, then it is gone.
      const out = h('input', { readonly: true, value: k.token, size: 60, 'aria-label': 'New API key' });
      clear(issued, h('div', { class: 'notice ok' }, h('p', {}, `Key for ${k.name}: copy it now, it is not shown again.`), out,
        h('button', { type: 'button', class: 'small', onclick: () => clear(issued) }, 'Done')));
      out.select();
      name.value = '';
      await reload();
    } catch (e) { clear(issued, notice(e.message, 'error')); }
  } }, h('h2', {}, 'Issue a key'), field('Name', name), field('Groups', groups), field('Lifetime (s)', ttl),
  h('button', { type: 'submit' }, 'Issue'));
  clear(main, h('h1', {}, 'API keys'), form, issued, list);
  await reload();
  return () => clear(issued);
}
