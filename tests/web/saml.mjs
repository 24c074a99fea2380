// A SAML console login in Debian's Chromium, driven by Playwright: the login page
// offers the gateway's SAML identity providers, Keycloak's pages take the password,
// its auto-submitting page posts the answer to the gateway's ACS (cross-site, with
// `Origin: null`), and the console opens logged in with the assertion's groups. Run by
// crates/warden/tests/saml/main.rs with GW (the gateway's URL) set.
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';

const GW = process.env.GW;
assert.ok(GW, 'GW is not set');
const step = (m) => console.log(`ok - ${m}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
const problems = [];
try {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  page.on('pageerror', (e) => problems.push(`${page.url()}: ${e.message}`));
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text()) && page.url().startsWith(GW)) problems.push(m.text());
  });

  await page.goto(GW + '/');
  const button = page.locator('#saml-keycloak');
  await button.waitFor();
  assert.equal((await button.textContent()).trim(), 'Log in with keycloak (SAML)');
  step('the login page offers the SAML identity provider');

  await button.click();
  await page.locator('#username').waitFor();
  await page.fill('#username', 'alice');
  await page.fill('#password', 'alice-pw-1');
  await page.click('#kc-login');
  await page.waitForURL((u) => u.href.startsWith(GW) && u.hash.startsWith('#/connections'));
  const session = await page.evaluate(async () => (await fetch('/auth/session')).json());
  assert.equal(session.logged_in, true);
  assert.equal(session.identity.subject, 'alice');
  assert.deepEqual(session.identity.groups, ['dba', 'dev']);
  step('Keycloak logs alice in and the console opens with her groups');

  // A finish link without the browser's login cookie (another browser) is refused
  // with a reason the page shows.
  const other = await (await browser.newContext()).newPage();
  await other.goto(GW + '/auth/saml/finish?h=not-a-login');
  await other.waitForURL((u) => u.hash.startsWith('#/login'));
  await other.getByText('That login answer was already used').waitFor();
  const anonymous = await other.evaluate(async () => (await fetch('/auth/session')).json());
  assert.equal(anonymous.logged_in, false);
  step('an unknown login handle is refused and shown as such');

  assert.deepEqual(problems, []);
} finally {
  await browser.close();
}
