// The reviews inbox: held commands waiting for a decision, kept current without a
// reload; approve or reject with a comment. The gateway refuses a requester's own
// decision; the page does not offer it.
import { h, clear, notice, ago, fmtTime, statusBadge, table } from '../dom.js';
import { api, session, qs, enc } from '../api.js';

function card(r, onDecided, flash) {
  const mine = r.subject === session.identity.subject;
  const comment = h('textarea', { rows: 2, 'aria-label': `Comment on review ${r.id}`, placeholder: 'Comment (optional)' });
  const status = h('div', { 'aria-live': 'polite' });
  const decide = (verb) => async () => {
    try {
      await api.post(`/api/reviews/${enc(r.id)}/${verb}`, comment.value.trim() ? { comment: comment.value } : {});
      // The card leaves the list once decided: the outcome is said above the list.
      clear(flash, notice(`${verb === 'approve' ? 'Approved' : 'Rejected'}: ${r.command.slice(0, 200)}`, 'ok'));
      onDecided();
    } catch (e) { clear(status, notice(e.message, 'error')); }
  };
  return h('article', { class: 'card review', dataset: { id: r.id } },
    h('h2', {}, r.connection, ' ', h('small', { class: 'muted' }, `held by rule ${r.rule}`)),
    h('pre', { class: 'command' }, r.command),
    h('p', {}, 'Asked by ', h('strong', {}, r.subject), ` ${ago(r.created_at)} · `,
      `${r.approvals.length} of ${r.required} approval(s) · expires ${fmtTime(r.expires_at)}`,
      // Sessions are their owner's and admins' to see.
      r.session_id && session.isAdmin ? [' · ', h('a', { href: `#/sessions/${enc(r.session_id)}` }, 'session')] : null),
    r.approvals.length ? h('ul', {}, r.approvals.map(a => h('li', {}, `${a.subject} approved ${ago(a.at)}`, a.comment ? `: ${a.comment}` : ''))) : null,
    mine ? notice('You asked for this: another reviewer must decide.', 'info')
      : h('div', { class: 'decide' }, comment,
        h('button', { type: 'button', class: 'approve', onclick: decide('approve') }, 'Approve'),
        h('button', { type: 'button', class: 'reject danger', onclick: decide('reject') }, 'Reject')),
    status);
}

export async function render(main, _m, params) {
  const pending = h('div', { class: 'cards', 'aria-live': 'polite' });
  const flash = h('div', { 'aria-live': 'polite', id: 'review-outcome' });
  const recent = h('div', {});
  const focus = params.get('id');
  let seen = '';
  async function load() {
    const [open, all] = await Promise.all([
      api.get('/api/reviews' + qs({ status: 'pending' })),
      api.get('/api/reviews' + qs({ limit: 50 })),
    ]);
    const live = open.filter(r => new Date(r.expires_at) > new Date());
    const key = live.map(r => r.id + r.approvals.length).join();
    // Redraw only when something changed, so a comment being typed survives.
    if (key !== seen) {
      seen = key;
      clear(pending, live.length ? live.map(r => card(r, load, flash)) : notice('Nothing is waiting for a review.'));
    }
    const decided = all.filter(r => r.status !== 'pending' || (focus && r.id === focus));
    clear(recent, table(['Asked', 'Connection', 'Command', 'By', 'Status', 'Decided by'],
      decided.map(r => [fmtTime(r.created_at), r.connection, h('code', {}, r.command.slice(0, 200)), r.subject,
        statusBadge(r.status), r.decided_by || r.approvals.map(a => a.subject).join(', ')])));
  }
  clear(main, h('h1', {}, 'Reviews'),
    h('p', { class: 'muted' }, 'Commands held for review. This list updates by itself.'),
    flash, pending, h('h2', {}, 'Recent'), recent);
  await load();
  const timer = setInterval(() => load().catch(() => {}), 2000);
  return () => clearInterval(timer);
}
