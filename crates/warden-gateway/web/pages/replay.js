// One session: its database or request timeline (results as recorded, so masked),
// denials and reviews in line, and its terminals in asciinema-player. A live session
// is followed as it goes.
import { h, clear, notice, table, fmtTime, decisionBadge, statusBadge, commandText, visible } from '../dom.js';
import { api, enc } from '../api.js';

let playerScript = null;
function loadPlayer() {
  if (window.AsciinemaPlayer) return Promise.resolve();
  if (!playerScript) {
    playerScript = new Promise((resolve, reject) => {
      document.head.append(h('link', { rel: 'stylesheet', href: '/ui/vendor/asciinema-player.css' }));
      const s = h('script', { src: '/ui/vendor/asciinema-player.min.js' });
      s.addEventListener('load', resolve);
      s.addEventListener('error', () => reject(new Error('the player could not be loaded')));
      document.head.append(s);
    });
  }
  return playerScript;
}

function secs(t) {
  return `+${(t / 1e6).toFixed(3)}s`;
}

function entryView(e) {
  switch (e.kind) {
    case 'statement':
      return h('li', { class: `entry statement ${e.decision?.outcome || ''}` }, h('span', { class: 't' }, secs(e.t)),
        decisionBadge(e.decision), ' ', h('small', { class: 'muted' }, e.via), commandText(e.sql, 'sql'),
        e.decision?.reason ? h('p', { class: 'muted' }, e.decision.reason) : null);
    case 'result':
      return h('li', { class: 'entry result' }, h('span', { class: 't' }, secs(e.t)),
        // Rows returned by a result set, else the rows the statement changed.
        h('small', {}, [e.tag, e.columns.length ? `${e.rows_total} row(s)`
          : e.rows_affected !== undefined ? `${e.rows_affected} row(s) affected` : null,
          e.duration_us !== undefined ? `${(e.duration_us / 1000).toFixed(1)} ms` : null].filter(Boolean).join(' · ')),
        e.columns.length ? table(e.columns, e.rows.map(r => r.map(v => v === null ? h('i', { class: 'muted' }, 'NULL') : v))) : null,
        e.rows_total > e.rows.length ? h('small', { class: 'muted' }, `first ${e.rows.length} of ${e.rows_total} rows recorded`) : null);
    case 'error':
      return h('li', { class: 'entry error' }, h('span', { class: 't' }, secs(e.t)), h('strong', {}, `error ${e.code}: `), e.message);
    case 'copy':
      return h('li', { class: 'entry' }, h('span', { class: 't' }, secs(e.t)), `COPY ${e.direction}: ${e.rows} row(s), ${e.bytes} bytes`);
    case 'activity':
      return h('li', { class: `entry activity ${e.decision?.outcome || ''}` }, h('span', { class: 't' }, secs(e.t)),
        e.decision ? decisionBadge(e.decision) : null, ' ', h('strong', {}, e.what), ' ',
        e.what === 'review' && e.detail?.review ? h('a', { href: `#/reviews?id=${enc(e.detail.review)}` }, `review ${e.detail.review}`) : null,
        h('code', { class: 'detail' }, JSON.stringify(e.detail)));
    case 'response':
      return h('li', { class: 'entry' }, h('span', { class: 't' }, secs(e.t)), `answer ${e.status}, ${e.bytes} bytes`);
    case 'terminal':
      return h('li', { class: 'entry' }, h('span', { class: 't' }, secs(e.t)), `terminal ${e.channel}: `,
        e.command ? h('code', {}, visible(e.command).shown) : 'interactive shell', ' ', h('a', { href: `#terminal-${e.channel}` }, 'watch'));
    case 'exit':
      return h('li', { class: 'entry' }, h('span', { class: 't' }, secs(e.t)), `channel ${e.channel} exited`,
        e.status !== undefined ? ` with status ${e.status}` : '', e.signal ? ` on ${e.signal}` : '');
    case 'end':
      return h('li', { class: 'entry end' }, h('span', { class: 't' }, secs(e.t)), 'session ended', e.reason ? `: ${e.reason}` : '');
    default:
      return h('li', { class: 'entry' }, h('span', { class: 't' }, secs(e.t)), h('code', {}, JSON.stringify(e)));
  }
}

async function terminal(id, channel, command, live) {
  await loadPlayer();
  const box = h('div', { class: 'player', id: `terminal-${channel}` });
  const speed = h('select', { 'aria-label': `Playback speed of terminal ${channel}` },
    ['0.5', '1', '2', '4', '8'].map(v => h('option', { value: v, selected: v === '1' ? true : null }, `${v}×`)));
  const section = h('section', { class: 'card' },
    h('h2', {}, `Terminal ${channel}`, command ? ': ' : '', command ? h('code', {}, visible(command).shown) : ''),
    h('div', { class: 'actions' }, h('label', {}, 'Speed ', speed),
      h('small', { class: 'muted' }, 'Space plays and pauses; ← and → seek; the bar seeks too.')),
    box);
  let shown = '';
  let player = null;
  // (Re)creates the player on the cast, at `at` seconds, playing or not.
  function build(at, play) {
    if (player) player.dispose();
    clear(box);
    // The cast is fetched with the session's headers and handed over as data.
    player = window.AsciinemaPlayer.create({ data: shown }, box, {
      fit: 'width', idleTimeLimit: 2, controls: true, speed: Number(speed.value),
      startAt: at, autoPlay: play,
    });
  }
  async function refresh() {
    const cast = await api.text(`/api/sessions/${enc(id)}/terminals/${channel}`);
    if (cast === shown) return;
    const at = player ? await player.getCurrentTime() : 0;
    const following = !!player && live;
    shown = cast;
    build(following ? at : 0, following);
  }
  speed.addEventListener('change', async () => {
    const at = player ? await player.getCurrentTime() : 0;
    const end = player ? await player.getDuration() : undefined;
    // From where it was; from the start when it had played to its end.
    build(end !== undefined && at >= end - 0.05 ? 0 : at, false);
  });
  await refresh();
  return { section, refresh, dispose: () => player && player.dispose() };
}

export async function render(main, [id]) {
  const [s, rec] = await Promise.all([
    api.get(`/api/sessions/${enc(id)}`),
    api.get(`/api/sessions/${enc(id)}/recording`).catch(e => (e.status === 404 ? null : Promise.reject(e))),
  ]);
  const head = h('div', {});
  const drawHead = (sess) => clear(head, h('h1', {}, `Session on ${sess.connection}`),
    h('dl', { class: 'facts' },
      h('dt', {}, 'Person'), h('dd', {}, sess.subject, ' ', h('small', { class: 'muted' }, (sess.groups || []).join(', '))),
      h('dt', {}, 'Kind'), h('dd', {}, sess.protocol),
      h('dt', {}, 'Status'), h('dd', {}, statusBadge(sess.status), sess.status === 'active' ? h('span', { class: 'live' }, ' ● live') : null,
        sess.end_reason ? ` ${sess.end_reason}` : ''),
      h('dt', {}, 'Started'), h('dd', {}, fmtTime(sess.started_at)),
      h('dt', {}, 'Ended'), h('dd', {}, fmtTime(sess.ended_at) || '—'),
      h('dt', {}, 'Client'), h('dd', {}, sess.client_addr || '—'),
      h('dt', {}, 'Commands'), h('dd', {}, `${sess.commands} (${sess.denied} denied)`)));
  drawHead(s);
  if (!rec) {
    clear(main, head, notice('No recording is kept for this session (retention may have removed it).'));
    return;
  }
  const timeline = h('ol', { class: 'timeline' });
  const terminals = h('div', {});
  const players = new Map();
  let count = 0;
  async function add(entries) {
    for (const e of entries.slice(count)) {
      timeline.append(entryView(e));
      if (e.kind === 'terminal' && !players.has(e.channel)) {
        const t = await terminal(id, e.channel, e.command, s.status === 'active');
        players.set(e.channel, t);
        terminals.append(t.section);
      }
    }
    count = entries.length;
  }
  await add(rec.entries);
  clear(main, head, terminals, h('section', { class: 'card' }, h('h2', {}, 'Timeline'),
    h('p', { class: 'muted' }, 'Statements and results as recorded: values the connection masks are masked here too.'),
    timeline));
  if (s.status !== 'active') return () => players.forEach(p => p.dispose());
  // Following a live session.
  let ended = false;
  const timer = setInterval(async () => {
    if (ended) return;
    try {
      const [now, r] = await Promise.all([api.get(`/api/sessions/${enc(id)}`), api.get(`/api/sessions/${enc(id)}/recording`)]);
      await add(r.entries);
      for (const p of players.values()) await p.refresh();
      if (now.status !== 'active') { ended = true; drawHead(now); clearInterval(timer); }
    } catch { /* next tick */ }
  }, 2000);
  return () => { clearInterval(timer); players.forEach(p => p.dispose()); };
}
