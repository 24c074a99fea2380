// The reviews inbox: held commands waiting for a decision, kept current without a
// reload; approve or reject with a comment. The gateway refuses a requester's own
// decision; the page does not offer it.
//
// Cards never move under the pointer: each is updated in place by id, new ones are
// added at the end (oldest first), and a card decided elsewhere stays where it is,
// its buttons gone, until the page is opened again.
import { h, clear, notice, ago, fmtTime, statusBadge, table, commandText, visible } from '../dom.js';
import { api, session, qs, enc } from '../api.js';

function card(r, flash, reload) {
  const mine = r.subject === session.identity.subject;
  const comment = h('textarea', { rows: 2, 'aria-label': `Comment on review ${r.id}`, placeholder: 'Comment (optional)' });
  const state = h('span', { class: 'state' });
  const progress = h('span', {});
  const buttons = [];
  const decide = (verb) => async () => {
    buttons.forEach(b => { b.disabled = true; });
    try {
      await api.post(`/api/reviews/${enc(r.id)}/${verb}`, comment.value.trim() ? { comment: comment.value } : {});
      flash(notice(`${verb === 'approve' ? 'Approved' : 'Rejected'}: ${visible(r.command).shown}`, 'ok'));
    } catch (e) {
      flash(notice(`${r.connection}: ${e.message}`, 'error'));
    }
    await reload();
  };
  if (!mine) {
    buttons.push(h('button', { type: 'button', class: 'approve', onclick: decide('approve') }, 'Approve'),
      h('button', { type: 'button', class: 'reject danger', onclick: decide('reject') }, 'Reject'));
  }
  const el = h('article', { class: 'card review', dataset: { id: r.id } },
    h('h2', {}, r.connection, ' ', h('small', { class: 'muted' }, `held by rule ${r.rule}`), ' ', state),
    commandText(r.command),
    h('p', {}, 'Asked by ', h('strong', {}, r.subject), ` ${ago(r.created_at)} · `, progress,
      ` · expires ${fmtTime(r.expires_at)} · review ${r.id}`,
      // Sessions are their owner's and admins' to see.
      r.session_id && session.isAdmin ? [' · ', h('a', { href: `#/sessions/${enc(r.session_id)}` }, 'session')] : null),
    mine ? notice('You asked for this: another reviewer must decide.', 'info')
      : h('div', { class: 'decide' }, comment, buttons));
  const update = (now) => {
    progress.textContent = `${now.approvals.length} of ${now.required} approval(s)`
      + (now.approvals.length ? ` (${now.approvals.map(a => a.subject).join(', ')})` : '');
  };
  const settle = (status) => {
    clear(state, statusBadge(status));
    buttons.forEach(b => b.remove());
    comment.disabled = true;
    el.classList.add('decided');
  };
  update(r);
  return { el, update, settle };
}

export async function render(main, _m, params) {
  const pending = h('div', { class: 'cards' });
  const empty = h('div', {});
  const toast = h('div', { class: 'toast', 'aria-live': 'polite', id: 'review-outcome' });
  const problem = h('div', { 'aria-live': 'assertive' });
  const recent = h('div', {});
  const cards = new Map();
  const focus = params.get('id');
  const flash = (n) => clear(toast, n);
  // One load at a time: an older answer must never undo what a newer one showed.
  let loading = null;
  const load = () => (loading ||= loadOnce().finally(() => { loading = null; }));
  async function loadOnce() {
    const [open, all] = await Promise.all([
      api.get('/api/reviews' + qs({ status: 'pending', limit: 1000 })),
      api.get('/api/reviews' + qs({ limit: 50 })),
    ]);
    clear(problem);
    // The gateway says what is pending (it expires reviews itself); oldest first.
    const live = open.filter(r => r.status === 'pending')
      .sort((a, b) => a.created_at.localeCompare(b.created_at));
    const liveIds = new Set(live.map(r => r.id));
    for (const r of live) {
      if (cards.has(r.id)) cards.get(r.id).update(r);
      else {
        const c = card(r, flash, load);
        cards.set(r.id, c);
        pending.append(c.el);
      }
    }
    // A card no longer listed is settled only by its review's own word.
    for (const [id, c] of cards) {
      if (liveIds.has(id) || c.el.classList.contains('decided')) continue;
      const now = await api.get(`/api/reviews/${enc(id)}`).catch(() => null);
      if (now && now.status !== 'pending') c.settle(now.status);
    }
    clear(empty, cards.size ? null : notice('Nothing is waiting for a review.'));
    const decided = all.filter(r => r.status !== 'pending' || (focus && r.id === focus));
    clear(recent, table(['Asked', 'Connection', 'Command', 'By', 'Status', 'Decided by'],
      decided.map(r => [fmtTime(r.created_at), r.connection, h('code', {}, visible(r.command).shown), r.subject,
        statusBadge(r.status), r.decided_by || r.approvals.map(a => a.subject).join(', ')])));
  }
  clear(main, h('h1', {}, 'Reviews'),
    h('p', { class: 'muted' }, 'Commands held for review. This list updates by itself; new requests are added at the end.'),
    problem, empty, pending, h('h2', {}, 'Recent'), recent, toast);
  await load();
  const timer = setInterval(() => load().catch((e) => clear(problem,
    notice(`The list could not be refreshed (${e.message}): what is shown may be out of date.`, 'error'))), 2000);
  return () => clearInterval(timer);
}
