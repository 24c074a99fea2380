// Webhooks and SIEM sinks: subscriptions with their delivery state, dead letters, and
// sending a dead letter again.
import { h, clear, notice, field, table, fmtTime, listValue } from '../dom.js';
import { api, enc } from '../api.js';

function delivery(d) {
  if (!d) return 'no delivery yet';
  return `through #${d.seq}` + (d.attempts ? ` · ${d.attempts} failed attempt(s), next ${fmtTime(d.next_attempt_at)}` : '')
    + (d.last_error ? ` · last error: ${d.last_error}` : '');
}

function letters(list, redeliver) {
  return table(['Seq', 'Kind', 'Attempts', 'Last error', 'Failed', ''], list.map(l => [String(l.seq), l.kind, String(l.attempts),
    l.last_error, fmtTime(l.failed_at), redeliver ? h('button', { type: 'button', class: 'small', onclick: () => redeliver(l) }, 'Redeliver') : '']));
}

export async function render(main) {
  const hooks = h('div', {});
  const sinks = h('div', {});
  const created = h('div', { 'aria-live': 'polite' });
  async function reload() {
    const [ws, ss] = await Promise.all([api.get('/api/webhooks'), api.get('/api/event-sinks')]);
    clear(hooks, ws.length ? ws.map(w => {
      const dl = h('div', {});
      const status = h('div', { 'aria-live': 'polite' });
      const showLetters = async () => {
        const list = await api.get(`/api/webhooks/${enc(w.id)}/dead-letters`);
        clear(dl, letters(list, async (l) => {
          try {
            await api.post(`/api/webhooks/${enc(w.id)}/dead-letters/${enc(l.id)}/redeliver`);
            clear(status, notice(`Delivered #${l.seq}.`, 'ok'));
          } catch (e) { clear(status, notice(e.message, 'error')); }
          await showLetters();
        }));
      };
      return h('section', { class: 'card' }, h('h3', {}, w.url),
        h('p', {}, w.description || '', h('small', { class: 'muted' }, ` kinds: ${w.kinds.join(', ') || 'all'} · decisions: ${w.decisions.join(', ') || 'any'}`)),
        h('p', {}, delivery(w.delivery)),
        h('div', { class: 'actions' }, h('button', { type: 'button', class: 'small', onclick: showLetters }, 'Dead letters'),
          h('button', { type: 'button', class: 'small danger', onclick: async () => {
            if (!confirm(`Unsubscribe ${w.url}?`)) return;
            await api.del(`/api/webhooks/${enc(w.id)}`);
            await reload();
          } }, 'Delete')), status, dl);
    }) : notice('No webhooks.'));
    clear(sinks, ss.length ? ss.map(s => h('section', { class: 'card' }, h('h3', {}, `${s.name} (${s.kind}, ${s.format})`),
      h('p', {}, delivery(s.delivery)), s.dead_letters.length ? letters(s.dead_letters) : h('p', { class: 'muted' }, 'No dead letters.')))
      : h('p', { class: 'muted' }, 'No SIEM sinks are configured (events.sinks in the configuration file).'));
  }
  const url = h('input', { type: 'url', required: true, placeholder: 'https://hooks.example.com/warden' });
  const kinds = h('input', { placeholder: 'review.request, access.*  (empty: all)' });
  const decisions = h('input', { placeholder: 'deny, review  (empty: any)' });
  const description = h('input', {});
  const form = h('form', { class: 'card inline', onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const w = await api.post('/api/webhooks', { url: url.value, kinds: listValue(kinds.value), decisions: listValue(decisions.value),
        description: description.value || undefined });
      clear(created, w.secret ? h('div', { class: 'notice ok' }, h('p', {}, 'Signing secret, shown once: configure the receiver with it.'),
        h('input', { readonly: true, value: w.secret, size: 60, 'aria-label': 'Signing secret' })) : notice('Subscribed.', 'ok'));
      url.value = '';
      await reload();
    } catch (e) { clear(created, notice(e.message, 'error')); }
  } }, h('h2', {}, 'Subscribe'), field('URL', url), field('Event kinds', kinds), field('Decisions', decisions),
  field('Description', description), h('button', { type: 'submit' }, 'Subscribe'));
  clear(main, h('h1', {}, 'Webhooks and SIEM sinks'), form, created, h('h2', {}, 'Webhooks'), hooks, h('h2', {}, 'SIEM sinks'), sinks);
  await reload();
  return () => clear(created);
}
