// Calls to the gateway's /api with the console session: the cookie travels by itself,
// the session's CSRF token in a header other sites cannot set.

export const session = { csrf: '', identity: null, isAdmin: false, endpoints: [], login: {} };

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function loadSession() {
  const r = await fetch('/auth/session', { credentials: 'same-origin', cache: 'no-store' });
  const s = await r.json();
  session.login = s.login || {};
  if (!s.logged_in) return s;
  session.csrf = s.csrf;
  session.identity = s.identity;
  session.isAdmin = s.is_admin;
  session.endpoints = s.endpoints || [];
  return s;
}

async function call(method, path, body, accept) {
  const headers = { 'X-Warden-CSRF': session.csrf };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (r.status === 401) {
    window.dispatchEvent(new CustomEvent('warden-logged-out'));
  }
  if (!r.ok) {
    let code = 'http_' + r.status;
    let message = r.statusText;
    try {
      const e = await r.json();
      code = e.error.code;
      message = e.error.message;
    } catch { /* not JSON */ }
    throw new ApiError(r.status, code, message);
  }
  if (r.status === 204) return null;
  return accept === 'text' ? r.text() : r.json();
}

export const api = {
  get: (p) => call('GET', p),
  text: (p) => call('GET', p, undefined, 'text'),
  post: (p, b) => call('POST', p, b === undefined ? {} : b),
  put: (p, b) => call('PUT', p, b),
  patch: (p, b) => call('PATCH', p, b),
  del: (p) => call('DELETE', p),
};

export async function logout() {
  await fetch('/auth/logout', { method: 'POST', credentials: 'same-origin', headers: { 'X-Warden-CSRF': session.csrf } });
  session.csrf = '';
}

export async function keyLogin(key) {
  const r = await fetch('/auth/key', {
    method: 'POST', credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ key }),
  });
  if (!r.ok) {
    let message = 'login failed';
    try { message = (await r.json()).error.message; } catch { /* keep */ }
    throw new Error(message);
  }
}

// Query string from an object, leaving out empty values.
export function qs(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}

export const enc = encodeURIComponent;
