// Just-in-time access: ask for a grant, see its state, and (as a reviewer) approve,
// reject or revoke.
import { h, clear, notice, field, fmtTime, ago, statusBadge, table, visible } from '../dom.js';
import { api, session, qs, enc } from '../api.js';

function actions(r, reload, say) {
  const mine = r.subject === session.identity.subject;
  const act = (verb, label, cls) => h('button', { type: 'button', class: `small ${cls || ''}`, onclick: async () => {
    // Said in full before it is done: the row under the pointer is the one decided.
    const reason = visible(r.reason).shown.slice(0, 200);
    const what = `${label} ${r.subject}'s access to ${r.connection} for ${Math.round(r.duration_secs / 60)} min ("${reason}")?`;
    if (!confirm(what)) return;
    try { await api.post(`/api/access-requests/${enc(r.id)}/${verb}`, {}); say(notice(`${label}: ${r.subject} on ${r.connection}.`, 'ok')); } catch (e) { say(notice(e.message, 'error')); }
    await reload();
  } }, label);
  const out = [];
  if (r.status === 'pending' && !mine) out.push(act('approve', 'Approve'), act('reject', 'Reject', 'danger'));
  if (r.status === 'pending' || (r.status === 'approved' && r.ends_at && new Date(r.ends_at) > new Date())) {
    out.push(act('revoke', mine && r.status === 'pending' ? 'Withdraw' : 'Revoke', 'danger'));
  }
  return h('span', { class: 'actions' }, out);
}

export async function render(main) {
  const conns = (await api.get('/api/connections')).filter(c => c.access.request_required);
  const lists = h('div', {});
  const said = h('div', { class: 'toast', 'aria-live': 'polite' });
  const say = (n) => clear(said, n);
  async function reload() {
    const all = await api.get('/api/access-requests' + qs({ limit: 200 }));
    const mine = all.filter(r => r.subject === session.identity.subject);
    const others = all.filter(r => r.subject !== session.identity.subject);
    const rows = rs => rs.map(r => [r.connection, r.subject, visible(r.reason).shown, `${Math.round(r.duration_secs / 60)} min`,
      statusBadge(r.status), r.ends_at ? fmtTime(r.ends_at) : '—', ago(r.created_at), actions(r, reload, say)]);
    const headers = ['Connection', 'Person', 'Reason', 'For', 'Status', 'Ends', 'Asked', ''];
    clear(lists, h('h2', {}, 'Yours'), table(headers, rows(mine)),
      h('h2', {}, 'To decide and decided'), table(headers, rows(others)));
  }
  const conn = h('select', { required: true }, conns.map(c => h('option', { value: c.name }, c.name)));
  const duration = h('input', { value: '1h', required: true });
  const reason = h('input', { required: true });
  const status = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'card inline', onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      await api.post('/api/access-requests', { connection: conn.value, duration: duration.value, reason: reason.value });
      reason.value = '';
      clear(status, notice('Requested.'));
      await reload();
    } catch (e) { clear(status, notice(e.message, 'error')); }
  } }, h('h2', {}, 'Ask for access'), field('Connection', conn), field('For', duration, 'e.g. 30m, 1h, 2h30m'),
  field('Reason', reason), h('button', { type: 'submit' }, 'Request'), status);
  // No timer: rows would move under the pointer. Refresh is asked for.
  clear(main, h('h1', {}, 'Access requests'),
    conns.length ? form : notice('None of your connections needs a grant.'),
    h('p', {}, h('button', { type: 'button', class: 'secondary', onclick: () => reload().catch(e => say(notice(e.message, 'error'))) }, 'Refresh')),
    lists, said);
  await reload();
}
