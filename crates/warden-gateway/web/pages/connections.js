// What the caller may reach, with the exact commands that reach it, and the access
// request form where a connection needs a grant.
import { h, clear, notice, field, commandLine, fmtTime } from '../dom.js';
import { api, session, qs, enc } from '../api.js';

function quoteUser(s) {
  return /^[A-Za-z0-9._@-]+$/.test(s) ? s : 'me';
}

// The command lines for one connection, from the listeners this gateway runs.
export function commands(c, host = location.hostname) {
  const ep = session.endpoints.find(e => e.kind === c.kind);
  const user = quoteUser(session.identity.subject);
  const lines = [`warden connect ${c.name}`];
  if (!ep) return lines;
  const p = ep.port;
  switch (c.kind) {
    case 'postgres':
      lines.push(`PGPASSWORD="$WARDEN_TOKEN" psql "host=${host} port=${p} dbname=${c.name} user=${user} sslmode=${ep.tls ? 'verify-full' : 'disable'}"`);
      break;
    case 'mysql':
      lines.push(`MYSQL_PWD="$WARDEN_TOKEN" mysql -h ${host} -P ${p} -u ${user}${ep.tls ? ' --ssl --ssl-verify-server-cert' : ''} ${c.name}`);
      break;
    case 'ssh':
      lines.push(`ssh -p ${p} ${c.name}@${host}`);
      break;
    case 'kubernetes':
      lines.push(`kubectl --server ${ep.tls ? 'https' : 'http'}://${host}:${p}/${c.name} --token "$WARDEN_TOKEN" get pods`);
      break;
    case 'http':
      lines.push(`curl -H "Authorization: Bearer $WARDEN_TOKEN" ${ep.tls ? 'https' : 'http'}://${host}:${p}/${c.name}/`);
      break;
  }
  return lines;
}

function grantState(c, grants) {
  if (!c.access.request_required) return h('span', { class: 'badge allow' }, 'standing access');
  const g = grants.find(r => r.connection === c.name && r.status === 'approved' && r.ends_at && new Date(r.ends_at) > new Date());
  if (g) return h('span', { class: 'badge allow' }, `granted until ${fmtTime(g.ends_at)}`);
  const p = grants.find(r => r.connection === c.name && r.status === 'pending');
  if (p) return h('span', { class: 'badge review' }, 'request pending');
  return h('span', { class: 'badge deny' }, 'grant required');
}

function requestForm(c, onDone) {
  const duration = h('input', { value: '1h', required: true, size: 8 });
  const reason = h('input', { required: true, placeholder: 'ticket, incident, why' });
  const status = h('div', { 'aria-live': 'polite' });
  return h('form', { class: 'inline', onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      await api.post('/api/access-requests', { connection: c.name, duration: duration.value, reason: reason.value });
      clear(status, notice('Requested: reviewers have been asked.'));
      onDone();
    } catch (e) { clear(status, notice(e.message, 'error')); }
  } }, field('For', duration, `at most ${Math.round(c.access.max_duration_secs / 3600)}h`), field('Reason', reason),
  h('button', { type: 'submit' }, 'Request access'), status);
}

export async function render(main) {
  const [conns, grants] = await Promise.all([
    api.get('/api/connections'),
    api.get('/api/access-requests' + qs({ mine: true })),
  ]);
  const list = h('div', { class: 'cards' });
  const draw = (grantsNow) => clear(list, conns.map(c => h('section', { class: 'card conn', dataset: { name: c.name } },
    h('h2', {}, c.name, ' ', h('span', { class: 'badge' }, c.kind), ' ', grantState(c, grantsNow)),
    c.description ? h('p', {}, c.description) : null,
    h('p', { class: 'muted' }, c.agent ? `through agent ${c.agent}` : 'direct', ' · ', c.target),
    commands(c).map(commandLine),
    c.access.request_required ? requestForm(c, async () => draw(await api.get('/api/access-requests' + qs({ mine: true })))) : null,
    h('p', {}, h('a', { href: `#/sessions?connection=${enc(c.name)}` }, 'Sessions on this connection')))));
  draw(grants);
  clear(main, h('h1', {}, 'Connections'),
    h('p', { class: 'muted' }, 'Use your Warden token (', h('code', {}, 'warden login'), ', or an API key) as ',
      h('code', {}, 'WARDEN_TOKEN'), '; ', h('code', {}, 'warden connect'), ' needs no password at all.'),
    conns.length ? list : notice('No connection is open to your groups.'));
}
