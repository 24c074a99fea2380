// The console's shell: who is logged in, the navigation, and a router from the
// address's #fragment to a page. Pages are modules with `render(main, params)`,
// which may return a function that stops what they started (polling).
import { h, clear, notice, field } from './dom.js';
import { session, loadSession, logout, keyLogin } from './api.js';
import * as connections from './pages/connections.js';
import * as sessions from './pages/sessions.js';
import * as replay from './pages/replay.js';
import * as reviews from './pages/reviews.js';
import * as access from './pages/access.js';
import * as audit from './pages/audit.js';
import * as admin from './pages/admin.js';
import * as connectionForm from './pages/connection_form.js';
import * as policies from './pages/policies.js';
import * as webhooks from './pages/webhooks.js';

const main = document.getElementById('main');
let stop = null;

const ROUTES = [
  [/^\/connections$/, connections.render, 'Connections'],
  [/^\/sessions$/, sessions.render, 'Sessions'],
  [/^\/sessions\/([0-9a-f-]+)$/, replay.render, 'Replay'],
  [/^\/reviews$/, reviews.render, 'Reviews'],
  [/^\/access$/, access.render, 'Access'],
  [/^\/audit$/, audit.render, 'Audit', true],
  [/^\/admin\/connections$/, admin.renderConnections, 'Admin: connections', true],
  [/^\/admin\/connections\/new$/, connectionForm.render, 'New connection', true],
  [/^\/admin\/connections\/([a-z0-9_-]+)$/, connectionForm.render, 'Edit connection', true],
  [/^\/admin\/policies$/, policies.render, 'Admin: policies', true],
  [/^\/admin\/keys$/, admin.renderKeys, 'Admin: API keys', true],
  [/^\/admin\/webhooks$/, webhooks.render, 'Admin: webhooks', true],
];

const NAV = [
  ['#/connections', 'Connections'],
  ['#/sessions', 'Sessions'],
  ['#/reviews', 'Reviews'],
  ['#/access', 'Access'],
  ['#/audit', 'Audit', true],
  ['#/admin/connections', 'Admin', true],
];

function route() {
  if (stop) { try { stop(); } catch { /* page gone */ } stop = null; }
  const hash = location.hash.replace(/^#/, '') || '/connections';
  const [path, query] = hash.split('?');
  if (path === '/login') return renderLogin(new URLSearchParams(query || ''));
  if (!session.csrf) return renderLogin(new URLSearchParams());
  for (const [re, render, title, adminOnly] of ROUTES) {
    const m = path.match(re);
    if (!m) continue;
    document.title = `${title} · Warden`;
    renderNav(path);
    if (adminOnly && !session.isAdmin) {
      clear(main, h('h1', {}, title), notice('This page is for gateway admins.', 'error'));
      return;
    }
    clear(main, h('p', { class: 'muted' }, 'Loading…'));
    Promise.resolve(render(main, m.slice(1), new URLSearchParams(query || '')))
      .then(s => { stop = typeof s === 'function' ? s : null; })
      .catch(e => clear(main, h('h1', {}, title), notice(e.message, 'error')));
    main.focus({ preventScroll: true });
    return;
  }
  clear(main, h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/connections' }, 'Back to connections')));
}

function renderNav(path) {
  const nav = document.getElementById('nav');
  const current = (href) => (href === '#/admin/connections' ? path.startsWith('/admin')
    : ('#' + path).startsWith(href));
  clear(nav, NAV.filter(([, , a]) => !a || session.isAdmin).map(([href, label]) =>
    h('a', { href, 'aria-current': current(href) ? 'page' : null }, label)));
  if (session.isAdmin && path.startsWith('/admin')) {
    nav.append(h('span', { class: 'subnav' },
      h('a', { href: '#/admin/connections' }, 'Connections'),
      h('a', { href: '#/admin/policies' }, 'Policies'),
      h('a', { href: '#/admin/keys' }, 'API keys'),
      h('a', { href: '#/admin/webhooks' }, 'Webhooks & sinks')));
  }
  const who = document.getElementById('who');
  clear(who, h('span', { class: 'subject', title: (session.identity.groups || []).join(', ') },
    session.identity.subject, session.isAdmin ? ' (admin)' : ''),
  h('button', { type: 'button', class: 'small', id: 'logout', onclick: async () => {
    await logout();
    location.hash = '#/login';
    clear(document.getElementById('nav'));
    clear(who);
  } }, 'Log out'));
}

const LOGIN_ERRORS = {
  oidc_not_configured: 'This gateway has no single sign-on configured: use an API key.',
  login_state_mismatch: 'That login was not started in this browser, or took too long. Try again.',
  issuer_unavailable: 'The identity provider could not be reached.',
  session_ended: 'Your session has ended. Log in again.',
  login_refused: 'The identity provider refused the login.',
  bad_host: 'This address cannot be used for single sign-on: use the one the gateway is configured with.',
  saml_not_configured: 'This gateway has no SAML login configured.',
  unknown_idp: 'No such SAML identity provider is configured.',
  idp_unavailable: 'The SAML identity provider could not be reached.',
  too_many_logins: 'Too many logins are in progress. Try again in a few minutes.',
  unsolicited: 'The identity provider sent a login this gateway did not ask for.',
  replayed: 'That login answer was already used. Log in again.',
  expired: 'The identity provider\'s answer has expired. Log in again.',
  replay_cache_full: 'The gateway cannot take more logins right now. Try again later.',
  csrf_failed: 'That login was started from another site. Start it from this page.',
};
// Any other refusal of a SAML answer: the audit log has the reason.
for (const code of ['unsigned', 'bad_signature', 'cert_mismatch', 'wrapped', 'audience', 'recipient',
  'destination', 'in_response_to', 'issuer', 'status', 'decrypt', 'not_encrypted', 'algorithm',
  'malformed', 'no_subject']) {
  LOGIN_ERRORS[code] = `The identity provider's answer was refused (${code}).`;
}

function renderLogin(params) {
  document.title = 'Log in · Warden';
  clear(document.getElementById('nav'));
  clear(document.getElementById('who'));
  const error = params.get('error');
  const key = h('input', { type: 'password', autocomplete: 'off', required: true, name: 'key' });
  const status = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'card', onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      await keyLogin(key.value);
      key.value = '';
      await start();
    } catch (e) {
      clear(status, notice(e.message, 'error'));
    }
  } }, h('h2', {}, 'API key'), field('Warden API key', key), h('button', { type: 'submit' }, 'Log in with key'), status);
  clear(main,
    h('h1', {}, 'Log in to Warden'),
    // Only the gateway's own words: the address is anyone's to write.
    error ? notice(Object.hasOwn(LOGIN_ERRORS, error) ? LOGIN_ERRORS[error] : 'The login did not complete. Try again.', 'error') : null,
    session.login.oidc ? h('div', { class: 'card' }, h('h2', {}, 'Single sign-on'),
      h('a', { class: 'button', href: '/auth/login', id: 'sso' }, 'Log in with your identity provider')) : null,
    (session.login.saml || []).length ? h('div', { class: 'card' }, h('h2', {}, 'SAML single sign-on'),
      ...session.login.saml.map((idp) => h('a', { class: 'button', id: `saml-${idp}`,
        href: `/auth/saml/login?idp=${encodeURIComponent(idp)}` }, `Log in with ${idp} (SAML)`))) : null,
    form);
}

async function start() {
  const s = await loadSession();
  if (!s.logged_in) {
    if (!location.hash.startsWith('#/login')) location.hash = '#/login';
    else route();
    return;
  }
  if (!location.hash || location.hash.startsWith('#/login')) location.hash = '#/connections';
  else route();
}

window.addEventListener('hashchange', route);
window.addEventListener('warden-logged-out', () => {
  session.csrf = '';
  location.hash = '#/login?error=session_ended';
});
start().catch(e => clear(main, notice(`The gateway could not be reached: ${e.message}`, 'error')));
