// The audit log: filters, the newest events first with older pages on demand, links
// to sessions, and whether the hash chain verifies.
import { h, clear, notice, field, table, fmtTime, decisionBadge } from '../dom.js';
import { api, qs, enc } from '../api.js';

const FILTERS = ['kind', 'subject', 'connection', 'session_id', 'since', 'until'];

export async function render(main, _m, params) {
  const f = {};
  for (const k of FILTERS) {
    f[k] = h('input', { value: params.get(k) || '', type: k === 'since' || k === 'until' ? 'datetime-local' : 'text' });
  }
  if (!params.get('since') && !params.get('session_id')) {
    const d = new Date(Date.now() - 24 * 3600 * 1000);
    f.since.value = new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  }
  const verify = h('div', { 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Checking the chain…'));
  const results = h('div', {});
  const more = h('div', {});
  const form = h('form', { class: 'filters', onsubmit: (ev) => {
    ev.preventDefault();
    const q = {};
    for (const k of FILTERS) if (f[k].value) q[k] = f[k].value;
    location.hash = '#/audit' + qs(q);
  } }, field('Kind', f.kind, 'exact, or a prefix ending in a dot: auth.'), field('Person', f.subject),
  field('Connection', f.connection), field('Session', f.session_id), field('Since', f.since), field('Until', f.until),
  h('button', { type: 'submit' }, 'Filter'));
  const rows = [];
  async function page(before) {
    const iso = v => (v ? new Date(v).toISOString() : undefined);
    const p = await api.get('/api/audit' + qs({
      kind: f.kind.value, subject: f.subject.value, connection: f.connection.value,
      session_id: f.session_id.value, since: iso(f.since.value), until: iso(f.until.value),
      order: 'newest', before_seq: before, limit: 200,
    }));
    for (const e of p.events) {
      const ev = e.event;
      rows.push([String(e.seq), fmtTime(ev.time), ev.kind, ev.identity?.subject || '—', ev.connection || '—',
        ev.decision ? decisionBadge(ev.decision) : '',
        ev.session_id ? h('a', { href: `#/sessions/${enc(ev.session_id)}` }, 'session') : '',
        h('code', { class: 'detail' }, JSON.stringify(ev.payload))]);
    }
    clear(results, table(['Seq', 'Time', 'Kind', 'Person', 'Connection', 'Decision', '', 'Detail'], rows, `${rows.length} event(s), newest first`));
    clear(more, p.next_before_seq !== null && p.next_before_seq !== undefined
      ? h('button', { type: 'button', onclick: () => page(p.next_before_seq) }, 'Older events') : null);
  }
  clear(main, h('h1', {}, 'Audit log'), verify, form, results, more);
  api.get('/api/audit/verify').then(v => clear(verify, v.ok
    ? notice(`Chain verified: ${v.events_checked} events, head #${v.head_seq}.`, 'ok')
    : notice(`Chain broken at #${v.problem?.seq}: ${v.problem?.reason}`, 'error')))
    .catch(e => clear(verify, notice(`Could not verify: ${e.message}`, 'error')));
  await page(undefined);
}
