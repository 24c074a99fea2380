// Building the page without innerHTML: every value from the gateway becomes text,
// so nothing it returns can run as script or markup.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function fmtTime(s) {
  if (!s) return '';
  const d = new Date(s);
  return Number.isNaN(d.getTime()) ? s : d.toLocaleString();
}

export function ago(s) {
  const secs = Math.max(0, Math.round((Date.now() - new Date(s).getTime()) / 1000));
  if (secs < 60) return `${secs}s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m ago`;
  if (secs < 86400) return `${Math.floor(secs / 3600)}h ago`;
  return `${Math.floor(secs / 86400)}d ago`;
}

// A table in a horizontally scrolling wrapper (narrow screens).
export function table(headers, rows, caption) {
  return h('div', { class: 'scroll' },
    h('table', {},
      caption ? h('caption', {}, caption) : null,
      h('thead', {}, h('tr', {}, headers.map(x => h('th', { scope: 'col' }, x)))),
      h('tbody', {}, rows.length ? rows.map(r => h('tr', {}, r.map(c => h('td', {}, c))))
        : h('tr', {}, h('td', { colspan: headers.length, class: 'muted' }, 'Nothing here.')))));
}

export function notice(text, kind = 'info') {
  return h('p', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
}

// A labelled form field; `input` is the control.
export function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, label), input,
    hint ? h('small', { class: 'muted' }, hint) : null);
}

export function decisionBadge(d) {
  if (!d) return h('span', { class: 'badge' }, 'none');
  const text = d.outcome === 'allow' ? 'allowed' : d.outcome === 'deny' ? `denied: ${d.rule}` : `review: ${d.rule}`;
  return h('span', { class: `badge ${d.outcome}`, title: d.reason || '' }, text);
}

export function statusBadge(s) {
  return h('span', { class: `badge st-${s}` }, s);
}

// A copyable command line.
export function commandLine(text) {
  const code = h('code', {}, text);
  const btn = h('button', { type: 'button', class: 'small', 'aria-label': `Copy: ${text}`, onclick: async () => {
    try { await navigator.clipboard.writeText(text); btn.textContent = 'Copied'; } catch { btn.textContent = 'Select and copy'; }
    setTimeout(() => { btn.textContent = 'Copy'; }, 1500);
  } }, 'Copy');
  return h('div', { class: 'cmd' }, code, btn);
}

// Comma/space separated list <-> array.
export function listValue(s) {
  return s.split(/[,\s]+/).map(x => x.trim()).filter(Boolean);
}

// Characters that change how text is displayed without being seen (bidirectional
// overrides, zero-width marks): a held command must read exactly as it will run.
// Format and control characters (bar tab and newline), line and paragraph
// separators, the invisible fillers and the variation selectors.
const HIDDEN = /(?![\t\n])[\p{Cf}\p{Cc}\p{Zl}\p{Zp}\u034F\u115F\u1160\u3164\uFFA0\uFE00-\uFE0F]/gu;

// The text with those characters shown as ⟦U+XXXX⟧, and whether there were any.
export function visible(text) {
  let flagged = false;
  const shown = String(text).replace(HIDDEN, (c) => {
    flagged = true;
    return `⟦U+${c.codePointAt(0).toString(16).toUpperCase().padStart(4, '0')}⟧`;
  });
  return { shown, flagged };
}

// A command or statement in a <pre>, with hidden characters shown and flagged.
export function commandText(text, cls) {
  const { shown, flagged } = visible(text);
  return [h('pre', { class: cls || 'command' }, shown),
    flagged ? notice('This text holds invisible or direction-changing characters, shown as ⟦U+…⟧.', 'warn') : null];
}
