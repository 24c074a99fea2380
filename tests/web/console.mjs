// Warden's web console in Debian's Chromium, driven by Playwright (playwright-core with
// the system browser; nothing is downloaded). Run by crates/warden/tests/console.rs,
// which starts the gateway, the sessions to replay and the psql statement held for
// review, and passes them in the environment. Each step prints "ok - ..." and any
// failed check ends the run with a non-zero status.
import { chromium } from 'playwright-core';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import assert from 'node:assert/strict';

const env = (k) => { const v = process.env[k]; assert.ok(v, `${k} is not set`); return v; };
const GW = env('GW');
const ISSUER = env('ISSUER');
const SHOTS = env('SHOTS');
const NEVER_SHOWN = JSON.parse(env('NEVER_SHOWN'));
const REVIEW_ID = env('REVIEW_ID');
const HELD_SQL = env('HELD_SQL');
const step = (m) => console.log(`ok - ${m}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
const violations = [];
const pageErrors = [];
const seenHtml = [];

async function context(viewport = { width: 1280, height: 800 }) {
  const ctx = await browser.newContext({ viewport });
  ctx.on('page', watch);
  return ctx;
}
function watch(page) {
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) violations.push(`${page.url()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => pageErrors.push(`${page.url()}: ${e.message}`));
}
async function newPage(ctx) {
  const page = await ctx.newPage();
  return page;
}
async function shot(page, name, fullPage = false) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage });
  seenHtml.push(await page.content());
}
async function api(page, method, p, body) {
  // A call from the page itself, with the session's CSRF token, as the console makes it.
  return page.evaluate(async ([method, p, body]) => {
    const s = await (await fetch('/auth/session')).json();
    const r = await fetch(p, { method, headers: { 'X-Warden-CSRF': s.csrf, ...(body ? { 'Content-Type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined });
    return { status: r.status, body: r.status === 204 ? null : await r.json() };
  }, [method, p, body]);
}
async function admin(method, p, body) {
  const r = await fetch(GW + p, { method, headers: { Authorization: `Bearer ${env('ADMIN_KEY')}`, 'Content-Type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined });
  return { status: r.status, body: r.status === 204 ? null : await r.json() };
}

// --- headers ------------------------------------------------------------------
{
  const r = await fetch(GW + '/');
  const csp = r.headers.get('content-security-policy');
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /'unsafe-inline'|'unsafe-eval'/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.equal(r.headers.get('x-frame-options'), 'DENY');
  assert.equal(r.headers.get('x-content-type-options'), 'nosniff');
  step('the console is served with a CSP that allows no inline script and no framing');
}

// --- bob logs in through the OpenID provider -------------------------------------
const bobCtx = await context();
const bob = await newPage(bobCtx);
await fetch(`${ISSUER}/test/next-account?name=bob`);
await bob.goto(GW + '/');
await bob.waitForSelector('#sso');
await shot(bob, '01-login');
await bob.click('#sso');
await bob.waitForSelector('#who .subject');
assert.match(await bob.textContent('#who .subject'), /^bob/);
const cookies = await bobCtx.cookies(GW);
const sessionCookie = cookies.find((c) => c.name === 'warden_session');
assert.ok(sessionCookie, 'a session cookie');
assert.ok(sessionCookie.httpOnly, 'HttpOnly');
assert.equal(sessionCookie.sameSite, 'Lax');
assert.ok(!cookies.some((c) => /eyJ/.test(c.value)), 'no token in any cookie');
assert.equal(await bob.evaluate(() => document.cookie), '', 'scripts cannot read the session cookie');
const bobCsrf = (await bob.evaluate(async () => (await (await fetch('/auth/session')).json()).csrf));
step('bob logged in through the OpenID provider (authorization code + PKCE): HttpOnly SameSite cookie, no token in the browser');

// --- another site tries to act with bob's cookie ----------------------------------
{
  const attacker = http.createServer((req, res) => {
    res.setHeader('Content-Type', 'text/html');
    res.end(`<!doctype html><body>
      <iframe id="framed" src="${GW}/"></iframe>
      <form id="f" method="POST" action="${GW}/api/reviews/${REVIEW_ID}/approve" target="sink"></form>
      <form id="g" method="POST" action="${GW}/auth/logout" target="sink2"></form>
      <iframe name="sink"></iframe><iframe name="sink2"></iframe>
      <script>
        fetch(${JSON.stringify(GW)} + '/api/reviews/${REVIEW_ID}/approve', { method: 'POST', mode: 'no-cors', credentials: 'include' });
        fetch(${JSON.stringify(GW)} + '/api/access-requests', { method: 'POST', mode: 'no-cors', credentials: 'include',
          headers: { 'Content-Type': 'text/plain' }, body: '{"connection":"ledger","duration":"1h","reason":"csrf"}' });
        document.getElementById('f').submit();
        document.getElementById('g').submit();
      </script></body>`);
  });
  await new Promise((r) => attacker.listen(0, '127.0.0.1', r));
  const evil = await newPage(bobCtx);
  const framed = [];
  evil.on('console', (m) => framed.push(m.text()));
  await evil.goto(`http://127.0.0.1:${attacker.address().port}/`);
  await evil.waitForTimeout(2500);
  const frame = evil.frames().find((f) => f.name() === '' && f !== evil.mainFrame() && f.url().startsWith(GW));
  const framedContent = frame ? await frame.evaluate(() => document.body?.innerText || '').catch(() => '') : '';
  assert.ok(!framedContent.includes('Warden'), 'the console must not render inside another site\'s frame');
  // The browser said why: the console's frame-ancestors. That is the attacker page's
  // violation, expected; no console page may have one.
  const evilOrigin = `http://127.0.0.1:${attacker.address().port}/`;
  assert.ok(violations.some((v) => v.startsWith(evilOrigin) && v.includes("frame-ancestors 'none'")), violations.join('\n'));
  violations.splice(0, violations.length, ...violations.filter((v) => !v.startsWith(evilOrigin)));
  await evil.close();
  attacker.close();
  const r = await admin('GET', `/api/reviews/${REVIEW_ID}`);
  assert.equal(r.body.status, 'pending', 'a cross-site POST must not approve a review');
  assert.equal(r.body.approvals.length, 0);
  const still = await bob.evaluate(async () => (await fetch('/auth/session')).json());
  assert.ok(still.logged_in, 'a cross-site POST must not log bob out');
  const noHeader = await bob.evaluate(async (id) => (await fetch(`/api/reviews/${id}/approve`, { method: 'POST' })).status, REVIEW_ID);
  assert.equal(noHeader, 403, 'a same-origin request without the CSRF token is refused too');
  step('another site could not approve, request access, log out or frame the console with bob\'s cookie');
}

// --- bob approves the held statement while psql waits ---------------------------
await bob.goto(GW + '/#/reviews');
const card = bob.locator(`article.review[data-id="${REVIEW_ID}"]`);
await card.waitFor();
assert.equal((await card.locator('pre.command').textContent()).trim(), HELD_SQL);
assert.match(await card.textContent(), /carol/);
assert.match(await card.textContent(), /deletes/);
await card.locator('textarea').fill('checked: one row, INC-7');
// A new request arrives while bob reads: it is added at the end, his card does not
// move, and his comment stays. Its hidden direction override is shown, not obeyed.
const before = await card.boundingBox();
const sneaky = await fetch(`${GW}/api/reviews`, { method: 'POST',
  headers: { Authorization: `Bearer ${env('CAROL_KEY')}`, 'Content-Type': 'application/json' },
  body: JSON.stringify({ connection: 'ledger', command: 'SELECT 1; -- \u202E;sresu ELBAT PORD' }) });
assert.equal(sneaky.status, 201);
const sneakyId = (await sneaky.json()).id;
const later = bob.locator(`article.review[data-id="${sneakyId}"]`);
await later.waitFor();
assert.deepEqual(await card.boundingBox(), before, 'a card moved when another arrived');
const placed = await later.boundingBox();
assert.ok(placed.y > before.y || (placed.y === before.y && placed.x > before.x), 'new requests go after the ones already shown');
assert.equal(await card.locator('textarea').inputValue(), 'checked: one row, INC-7');
assert.match(await later.locator('pre.command').textContent(), /⟦U\+202E⟧/);
await shot(bob, '02-review-inbox');
await card.locator('button.approve').click();
await bob.locator('#review-outcome', { hasText: `Approved: ${HELD_SQL}` }).waitFor();
step('bob approved the held DELETE from the inbox, with a comment; a newer request neither moved it nor hid characters');

// The inbox updates without a reload: the decided card says so and loses its buttons.
await bob.locator(`article.review.decided[data-id="${REVIEW_ID}"]`).waitFor({ timeout: 10000 });
assert.equal(await card.locator('button').count(), 0);
assert.match(await card.textContent(), /approved/);
step('the inbox updated by itself');

// --- carol, with an API key, by keyboard alone ------------------------------------
const carolCtx = await context();
const carol = await newPage(carolCtx);
await carol.goto(GW + '/');
await carol.waitForSelector('input[name=key]');
for (let i = 0; i < 12; i++) {
  await carol.keyboard.press('Tab');
  if (await carol.evaluate(() => document.activeElement?.name === 'key')) break;
}
assert.ok(await carol.evaluate(() => document.activeElement?.name === 'key'), 'the key field is reachable with Tab');
await carol.keyboard.type(env('CAROL_KEY'));
await carol.keyboard.press('Enter');
await carol.waitForSelector('#who .subject');
assert.match(await carol.textContent('#who .subject'), /^carol/);
await carol.locator('section.conn[data-name="ledger"]').waitFor();
const ledger = await carol.textContent('section.conn[data-name="ledger"]');
assert.match(ledger, /warden connect ledger/);
assert.match(ledger, /psql "host=127\.0\.0\.1 port=\d+ dbname=ledger user=carol sslmode=disable"/);
assert.match(ledger, /<img src=x onerror=alert\(1\)>/, 'a description is shown as text');
assert.equal(await carol.locator('section.conn img').count(), 0, 'and never as markup');
await shot(carol, '03-connections');
step('carol logged in with an API key by keyboard; connections show exact commands; markup in values stays text');

// Self-approval: carol asks ahead for a review; she is not offered, nor allowed, to decide it.
{
  const asked = await api(carol, 'POST', '/api/reviews', { connection: 'ledger', command: 'DELETE FROM warden_console_t WHERE id = 2' });
  assert.equal(asked.status, 201, JSON.stringify(asked));
  await carol.goto(GW + '/#/reviews');
  const own = carol.locator(`article.review[data-id="${asked.body.id}"]`);
  await own.waitFor();
  assert.equal(await own.locator('button.approve').count(), 0);
  assert.match(await own.textContent(), /another reviewer must decide/);
  const self = await api(carol, 'POST', `/api/reviews/${asked.body.id}/approve`, {});
  assert.equal(self.status, 403);
  assert.equal(self.body.error.code, 'self_approval');
  step('carol cannot approve her own review (not offered; refused with self_approval)');
}

// Just-in-time access: carol asks from the connections page, bob grants it.
{
  await carol.goto(GW + '/#/connections');
  const vault = carol.locator('section.conn[data-name="vault"]');
  await vault.waitFor();
  assert.match(await vault.textContent(), /grant required/);
  await vault.getByLabel('For').fill('30m');
  await vault.getByLabel('Reason').fill('INC-9: read the ledger');
  await vault.locator('button:has-text("Request access")').click();
  await vault.locator('.badge', { hasText: 'request pending' }).waitFor();
  const asked = [];
  bob.on('dialog', (d) => { asked.push(d.message()); d.accept(); });
  await bob.goto(GW + '/#/access');
  const row = bob.locator('tr', { hasText: 'INC-9: read the ledger' });
  await row.waitFor();
  await row.locator('button:has-text("Approve")').click();
  await bob.locator('.toast', { hasText: 'Approve: carol on vault.' }).waitFor();
  assert.match(asked[0], /carol's access to vault for 30 min/);
  const granted = (await admin('GET', '/api/access-requests?connection=vault')).body;
  assert.equal(granted[0].status, 'approved');
  assert.equal(granted[0].approvals[0].subject, 'bob');
  await carol.reload();
  await carol.locator('section.conn[data-name="vault"] .badge', { hasText: 'granted until' }).waitFor();
  step('carol asked for access from the connections page; bob granted it after confirming who, what and how long');
}

// --- an admin replays the SSH terminal and the held psql session -----------------
const adminCtx = await context();
const adm = await newPage(adminCtx);
await adm.goto(GW + '/');
await adm.fill('input[name=key]', env('ADMIN_KEY'));
await adm.click('form button[type=submit]');
await adm.waitForSelector('#who .subject');
await adm.goto(`${GW}/#/sessions/${env('SSH_SESSION')}`);
const player = adm.locator('.ap-player');
await player.waitFor({ timeout: 15000 });
await adm.locator('.ap-playback-button').click();
await adm.waitForFunction(() => document.querySelector('.ap-term')?.textContent.includes('marker-from-42-terminal'), null, { timeout: 15000 });
// Slower, from the start: the player is rebuilt at the chosen speed.
await adm.getByLabel(/Playback speed of terminal/).selectOption('0.5');
await player.waitFor();
await adm.locator('.ap-playback-button').click();
await adm.waitForFunction(() => document.querySelector('.ap-term')?.textContent.includes('marker-from-42-terminal'), null, { timeout: 15000 });
await player.scrollIntoViewIfNeeded();
await player.screenshot({ path: path.join(SHOTS, '04-replay-terminal.png') });
seenHtml.push(await adm.content());
step('the SSH terminal replays in asciinema-player and shows what the command printed');

// The psql session: find it, wait until it ended, replay its timeline.
let pgSession = null;
for (let i = 0; i < 100 && !pgSession; i++) {
  const list = (await admin('GET', '/api/sessions?connection=ledger')).body;
  pgSession = list.find((s) => s.status !== 'active' && s.subject === 'carol');
  if (!pgSession) await new Promise((r) => setTimeout(r, 200));
}
assert.ok(pgSession, 'carol\'s psql session ended after the approval');
await adm.goto(`${GW}/#/sessions/${pgSession.id}`);
await adm.locator('ol.timeline li.statement').first().waitFor();
const timeline = await adm.textContent('ol.timeline');
assert.ok(timeline.includes(HELD_SQL), timeline);
assert.match(timeline, /review/);
assert.match(timeline, /DELETE 1/);
await shot(adm, '05-replay-psql', true);
step('the psql session\'s timeline shows the statement, its review and its result');

// A live shell, followed: the page says live, shows its terminal, and sees it end.
{
  await adm.goto(`${GW}/#/sessions?status=active`);
  await adm.locator(`a[href="#/sessions/${env('LIVE_SESSION')}"]`).waitFor();
  await adm.locator(`a[href="#/sessions/${env('LIVE_SESSION')}"]`).click();
  await adm.locator('.live').waitFor();
  await adm.locator('.ap-player').waitFor({ timeout: 15000 });
  fs.writeFileSync(env('LIVE_WATCHING'), 'watching');
  await adm.locator('dl.facts .badge', { hasText: 'closed' }).waitFor({ timeout: 30000 });
  assert.match(await adm.textContent('ol.timeline'), /session ended/);
  step('a live session is followed until it ends, without a reload');
}

// Sessions list with filters.
await adm.goto(`${GW}/#/sessions?kind=ssh`);
await adm.locator('table tbody tr').first().waitFor();
const rows = await adm.locator('table tbody tr').allTextContents();
assert.ok(rows.length >= 1 && rows.every((r) => /ssh/.test(r)), rows.join('\n'));
step('the sessions list filters by kind');

// Audit: chain verified, console logins recorded.
await adm.goto(`${GW}/#/audit?kind=auth.`);
await adm.locator('text=Chain verified').waitFor();
await adm.locator('table tbody tr').first().waitFor();
assert.match(await adm.textContent('table'), /auth\.login/);
await shot(adm, '06-audit');
step('the audit page shows the chain verified and the console logins');

// --- an admin creates a connection in the form: nothing is dropped -----------------
await adm.goto(`${GW}/#/admin/connections/new`);
await adm.waitForSelector('form.connection-form');
const byLabel = (text) => adm.getByLabel(text, { exact: true });
await byLabel('Name').fill('orders-db');
await byLabel('Credential the gateway holds').fill('form-secret-value-1');
await byLabel('Kind').selectOption('postgres');
await byLabel('Target').fill('10.9.8.7:5432/orders');
await byLabel('Backend account').fill('app');
await byLabel('Description').fill('Orders, read by support');
await byLabel('Allowed groups').fill('dba, sre');
await byLabel('TLS to the target').selectOption('insecure');
await byLabel('TLS server name').fill('db.internal');
await byLabel('Guardrail sets').selectOption(['no-drops']);
await byLabel('Review sets (guardrail sets whose review rules hold commands)').selectOption(['held']);
await byLabel('Masking sets').selectOption(['pii']);
await byLabel('Record statements verbatim (no masking of statement text)').check();
await byLabel('A grant is required (just-in-time access)').check();
await byLabel('Reviewer groups (empty: admin groups)').fill('sre');
await byLabel('Approvals needed').fill('2');
await byLabel('Longest grant (seconds)').fill('3600');
await byLabel('Review timeout (seconds)').fill('120');
await byLabel('An approved command may be reused').check();
await shot(adm, '07-connection-form', true);
await adm.click('button:has-text("Create connection")');
await adm.locator('text=Created orders-db.').waitFor();
const created = (await admin('GET', '/api/connections/orders-db')).body;
const want = {
  name: 'orders-db', kind: 'postgres', target: '10.9.8.7:5432/orders', username: 'app', secret_kind: 'password',
  description: 'Orders, read by support', allowed_groups: ['dba', 'sre'],
  tls: { mode: 'insecure', server_name: 'db.internal' },
  policies: { guardrails: ['no-drops'], masking: ['pii'], reviews: ['held'], verbatim_statements: true },
  access: { request_required: true, reviewers: ['sre'], approvals: 2, max_duration_secs: 3600, review_timeout_secs: 120, reuse_approved_reviews: true },
};
for (const [k, v] of Object.entries(want)) assert.deepEqual(created[k], v, `${k} after create`);
step('a connection created in the form has every setting it was given');

// Editing one field sends only that field: every other setting stays.
await adm.waitForURL(/#\/admin\/connections\/orders-db\?created=1$/);
await adm.getByLabel('Description', { exact: true }).waitFor();
await adm.getByLabel('Description', { exact: true }).fill('Orders (edited)');
const patchSeen = adm.waitForRequest((r) => r.method() === 'PATCH');
await adm.click('button:has-text("Save changes")');
const patch = JSON.parse((await patchSeen).postData());
assert.deepEqual(patch, { description: 'Orders (edited)' });
await adm.locator('text=Saved orders-db.').waitFor();
const edited = (await admin('GET', '/api/connections/orders-db')).body;
for (const [k, v] of Object.entries({ ...want, description: 'Orders (edited)' })) assert.deepEqual(edited[k], v, `${k} after edit`);
assert.ok(!(await adm.content()).includes('form-secret-value-1'), 'the held secret is never rendered');
step('editing the description sent only the description; nothing else changed; the secret is never shown');

// A weakening edit is named on the page.
await adm.reload();
await adm.getByLabel('Masking sets', { exact: true }).waitFor();
await adm.getByLabel('Masking sets', { exact: true }).selectOption([]);
await adm.click('button:has-text("Save changes")');
await adm.locator('.notice.warn').waitFor();
assert.match(await adm.textContent('.notice.warn'), /weakens/i);
step('removing a masking set is shown as a weakening');

// Policies: the dry-run evaluator.
await adm.goto(`${GW}/#/admin/policies`);
await adm.getByLabel('Connection', { exact: true }).selectOption('ledger');
await adm.getByLabel('Statement, command or request').fill('DROP TABLE warden_console_t');
await adm.getByLabel('Values to mask').fill('email=ann@example.com');
await adm.click('button:has-text("Evaluate")');
await adm.locator('text=Decision:').waitFor();
assert.match(await adm.textContent('form.card'), /denied: no-drops\/no-ddl/);
const cells = await adm.locator('form.card table tbody td').allTextContents();
assert.equal(cells[0], 'ann@example.com');
assert.notEqual(cells[1], 'ann@example.com', 'the value is shown masked');
assert.match(cells[2], /email/);
await shot(adm, '08-policies', true);
step('the dry-run evaluator shows the decision and masked values');

// Keys and webhooks pages render their lists.
await adm.goto(`${GW}/#/admin/keys`);
await adm.locator('table tbody tr').first().waitFor();
assert.match(await adm.textContent('table'), /carol/);
step('the API keys page lists keys (secrets never)');

// Webhooks: a subscription whose receiver is down files a dead letter; once the
// receiver is up, Redeliver sends it.
{
  const probe = http.createServer();
  await new Promise((r) => probe.listen(0, '127.0.0.1', r));
  const port = probe.address().port;
  await new Promise((r) => probe.close(r));
  await adm.goto(`${GW}/#/admin/webhooks`);
  await adm.getByLabel('URL').fill(`http://127.0.0.1:${port}/hook`);
  await adm.getByLabel('Event kinds').fill('auth.login');
  await adm.getByLabel('Description').fill('SOC intake');
  await adm.click('button:has-text("Subscribe")');
  await adm.locator('text=Signing secret, shown once').waitFor();
  // An event it wants: someone logs in.
  const other = await context();
  const op = await newPage(other);
  await op.goto(GW + '/');
  await op.fill('input[name=key]', env('CAROL_KEY'));
  await op.click('form button[type=submit]');
  await op.waitForSelector('#who .subject');
  await other.close();
  const hook = adm.locator('section.card', { hasText: `127.0.0.1:${port}/hook` });
  let letters = 0;
  for (let i = 0; i < 60 && !letters; i++) {
    await adm.reload();
    await hook.locator('button:has-text("Dead letters")').click();
    letters = await hook.locator('button:has-text("Redeliver")').count();
    if (!letters) await adm.waitForTimeout(500);
  }
  assert.ok(letters >= 1, 'a dead letter for the unreachable receiver');
  assert.match(await hook.textContent(), /auth\.login/);
  const received = [];
  const receiver = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => { received.push({ sig: req.headers['x-warden-signature'], body }); res.end('ok'); });
  });
  await new Promise((r) => receiver.listen(port, '127.0.0.1', r));
  await hook.locator('button:has-text("Redeliver")').first().click();
  await hook.locator('.notice', { hasText: 'Delivered #' }).waitFor();
  assert.ok(received.some((r) => r.body.includes('auth.login')), 'the receiver got the event');
  receiver.close();
  await shot(adm, '09-webhooks', true);
  step('a webhook\'s dead letter is listed and redelivered from the page once the receiver is up');
}

// --- a narrow screen: every page ------------------------------------------------
{
  const narrow = await context({ width: 390, height: 844 });
  const p = await newPage(narrow);
  await p.goto(GW + '/');
  await p.fill('input[name=key]', env('ADMIN_KEY'));
  await p.click('form button[type=submit]');
  await p.waitForSelector('#who .subject');
  const routes = ['#/connections', '#/sessions', `#/sessions/${env('SSH_SESSION')}`, '#/reviews', '#/access', '#/audit',
    '#/admin/connections', '#/admin/connections/new', '#/admin/connections/ledger', '#/admin/policies', '#/admin/keys', '#/admin/webhooks'];
  for (const route of routes) {
    await p.goto(GW + '/' + route);
    await p.waitForSelector('main h1');
    await p.waitForTimeout(400);
    const overflow = await p.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 1, `${route} scrolls sideways on a narrow screen by ${overflow}px`);
  }
  await p.goto(GW + '/#/connections');
  await p.waitForSelector('section.conn');
  await shot(p, '10-narrow-connections', true);
  await p.goto(GW + '/#/reviews');
  await p.waitForSelector('main h1');
  await shot(p, '11-narrow-reviews', true);
  await narrow.close();
}
step('every page fits a 390 px wide screen');

// --- logout ends the session ---------------------------------------------------------
await bob.goto(GW + '/#/connections');
await bob.waitForSelector('#logout');
await bob.click('#logout');
await bob.waitForSelector('input[name=key]');
const after = await bob.evaluate(async (csrf) => (await fetch('/api/me', { headers: { 'X-Warden-CSRF': csrf } })).status, bobCsrf);
assert.equal(after, 401, 'the old session is gone after logout');
step('logging out ends the session on the gateway');

// --- nothing secret was ever on a page; the CSP was never violated ------------------
for (const html of seenHtml) for (const s of NEVER_SHOWN) assert.ok(!html.includes(s), `a secret was rendered: ${s.slice(0, 8)}…`);
assert.deepEqual(violations, [], 'Content-Security-Policy violations');
assert.deepEqual(pageErrors, [], 'script errors');
step('no secret was rendered, no CSP violation, no script error');

fs.writeFileSync(env('SECRETS_OUT'), JSON.stringify({ values: [sessionCookie.value, bobCsrf] }));
await browser.close();
