// Sessions, newest first, with filters; each opens its replay.
import { h, clear, notice, field, table, fmtTime, statusBadge } from '../dom.js';
import { api, session, qs, enc } from '../api.js';

const KINDS = ['', 'postgres', 'mysql', 'ssh', 'kubernetes', 'http'];
const STATUSES = ['', 'active', 'closed', 'terminated', 'interrupted'];

function select(options, value) {
  return h('select', {}, options.map(o => h('option', { value: o, selected: o === value ? true : null }, o || 'any')));
}

export async function render(main, _m, params) {
  const f = {
    subject: h('input', { value: params.get('subject') || '', placeholder: 'alice' }),
    connection: h('input', { value: params.get('connection') || '' }),
    kind: select(KINDS, params.get('kind') || ''),
    status: select(STATUSES, params.get('status') || ''),
    since: h('input', { type: 'datetime-local', value: params.get('since') || '' }),
    until: h('input', { type: 'datetime-local', value: params.get('until') || '' }),
  };
  const results = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'filters', onsubmit: (ev) => {
    ev.preventDefault();
    const q = {};
    for (const [k, el] of Object.entries(f)) if (el.value) q[k] = el.value;
    location.hash = '#/sessions' + qs(q);
  } },
  session.isAdmin ? field('Person', f.subject) : null, field('Connection', f.connection), field('Kind', f.kind),
  field('Status', f.status), field('Since', f.since), field('Until', f.until),
  h('button', { type: 'submit' }, 'Filter'),
  h('a', { class: 'button secondary', href: '#/sessions?status=active' }, 'Live now'));

  async function load() {
    const since = f.since.value ? new Date(f.since.value).toISOString() : undefined;
    const rows = await api.get('/api/sessions' + qs({
      subject: session.isAdmin ? f.subject.value : undefined,
      connection: f.connection.value, status: f.status.value, since, limit: 500,
    }));
    const until = f.until.value ? new Date(f.until.value) : null;
    const shown = rows.filter(s => (!f.kind.value || s.protocol === f.kind.value)
      && (!until || new Date(s.started_at) < until));
    clear(results, table(['Started', 'Person', 'Connection', 'Kind', 'Status', 'Commands', 'Denied', ''],
      shown.map(s => [fmtTime(s.started_at), s.subject, s.connection, s.protocol,
        h('span', {}, statusBadge(s.status), s.end_reason ? h('small', { class: 'muted' }, ' ', s.end_reason) : null),
        String(s.commands), String(s.denied),
        h('a', { href: `#/sessions/${enc(s.id)}` }, s.status === 'active' ? 'Follow live' : 'Replay')]),
    `${shown.length} session(s)`));
  }
  clear(main, h('h1', {}, 'Sessions'), form, results);
  try { await load(); } catch (e) { clear(results, notice(e.message, 'error')); }
  // A list of live sessions keeps itself current.
  if (f.status.value === 'active') {
    const timer = setInterval(() => load().catch(() => {}), 3000);
    return () => clearInterval(timer);
  }
}
