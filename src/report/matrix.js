// The outputs matrix of report.html (see matrix.rs): filters the embedded cases and renders the
// matching ones a page at a time. Every text goes in as a text node, never as markup.
(() => {
  const PAGE = 100;
  const data = JSON.parse(document.getElementById('matrix-data').textContent);
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  };

  // An answer's state, then a target's over its repeats, then the case's flags.
  const stateOf = (a) => (a.error ? 'error' : a.pass === true ? 'pass' : a.pass === false ? 'fail' : 'none');
  const cellState = (answers) => {
    if (!answers.length) return null;
    const s = [...new Set(answers.map(stateOf))];
    if (s.length === 1) return s[0];
    return s.every((x) => x === 'fail' || x === 'error') ? 'fail' : 'mixed';
  };
  for (const c of data.cases) {
    c.states = c.answers.map(cellState);
    const judged = c.states.filter((s) => s && s !== 'none');
    c.anyFailed = judged.some((s) => s !== 'pass');
    c.allPassed = judged.length > 0 && judged.every((s) => s === 'pass');
    c.disagree = new Set(judged.map((s) => (s === 'error' ? 'fail' : s))).size > 1;
  }
  const haystack = (c) => {
    if (c.hay === undefined) {
      const parts = [c.suite, c.id, c.tags.join(' '), c.reference || ''];
      for (const [, m] of c.prompt) parts.push(m);
      for (const as of c.answers)
        for (const a of as) {
          parts.push(a.output || '', a.error || '', a.reason || '');
          for (const v of a.verdicts) parts.push(v.scorer, v.extracted || '', v.reason || '');
        }
      c.hay = parts.join('\n').toLowerCase();
    }
    return c.hay;
  };

  // Controls, filled from the data.
  const fill = (select, values) => {
    for (const v of values) select.append(new Option(v, v));
  };
  fill($('f-suite'), [...new Set(data.cases.map((c) => c.suite))].sort());
  fill($('f-tag'), [...new Set(data.cases.flatMap((c) => c.tags))].sort());
  const head = document.querySelector('#matrix-table thead');
  const hr = el('tr');
  for (const h of ['case', 'prompt', 'reference', ...data.targets]) hr.append(el('th', null, h));
  head.append(hr);

  const filters = () => ({
    suite: $('f-suite').value,
    tag: $('f-tag').value,
    status: $('f-status').value,
    disagree: $('f-disagree').checked,
    q: $('f-q').value.trim().toLowerCase(),
  });
  const matches = (c, f) =>
    (!f.suite || c.suite === f.suite) &&
    (!f.tag || c.tags.includes(f.tag)) &&
    (f.status !== 'fail' || c.anyFailed) &&
    (f.status !== 'pass' || c.allPassed) &&
    (!f.disagree || c.disagree) &&
    (!f.q || haystack(c).includes(f.q));

  const fmt = (x, d) => (typeof x === 'number' ? x.toFixed(d) : '–');
  const label = { pass: 'pass', fail: 'fail', error: 'error', mixed: 'mixed', none: 'no verdict' };
  const answerBlock = (a, many) => {
    const d = el('div', 'answer');
    const meta = el('div', 'meta');
    meta.append(el('span', 'badge ' + stateOf(a), label[stateOf(a)]));
    if (many) meta.append(el('span', null, 'repeat ' + a.repeat));
    meta.append(el('span', null, 'score ' + fmt(a.score, 2)));
    meta.append(el('span', null, fmt(a.latency_s, 2) + ' s'));
    d.append(meta);
    if (a.error) d.append(el('pre', 'error', a.error));
    if (a.output !== null && a.output !== undefined) d.append(el('pre', 'output', a.output));
    const why = el('ul', 'reasons');
    for (const v of a.verdicts) {
      let t = v.scorer + ' ' + fmt(v.score, 2);
      if (v.extracted) t += ' · read “' + v.extracted + '”';
      if (v.reason) t += ' · ' + v.reason;
      why.append(el('li', v.score >= 1 ? 'ok' : 'bad', t));
    }
    if (a.reason) why.append(el('li', null, a.reason));
    if (why.childElementCount) d.append(why);
    return d;
  };
  const caseRow = (c) => {
    const tr = el('tr');
    if (c.disagree) tr.className = 'disagree';
    const id = el('td', 'case');
    id.append(el('div', 'suite', c.suite), el('div', 'id', c.id));
    for (const t of c.tags) id.append(el('span', 'chip', t));
    const prompt = el('td', 'prompt');
    prompt.append(el('pre', 'ask', c.ask));
    if (c.prompt.length > 1 || (c.prompt[0] && c.prompt[0][1] !== c.ask)) {
      const det = el('details');
      det.append(el('summary', null, 'full prompt (' + c.prompt.length + ' messages)'));
      for (const [role, m] of c.prompt) det.append(el('div', 'role', role), el('pre', null, m));
      prompt.append(det);
    }
    const ref = el('td', 'reference');
    ref.append(el('pre', null, c.reference === null || c.reference === undefined ? '–' : c.reference));
    tr.append(id, prompt, ref);
    c.answers.forEach((as, i) => {
      const td = el('td', 'target ' + (c.states[i] || 'missing'));
      if (!as.length) td.textContent = 'no answer';
      for (const a of as) td.append(answerBlock(a, as.length > 1));
      tr.append(td);
    });
    return tr;
  };

  let shown = [];
  let limit = PAGE;
  const body = document.querySelector('#matrix-table tbody');
  const render = () => {
    const rows = shown.slice(0, limit).map(caseRow);
    body.replaceChildren(...rows);
    const more = shown.length - rows.length;
    $('matrix-more').hidden = more <= 0;
    $('matrix-more').textContent = 'show ' + Math.min(PAGE, more) + ' more (' + more + ' not shown)';
    $('matrix-count').textContent =
      'showing ' + shown.length + ' of ' + data.cases.length + ' cases' +
      (more > 0 ? ' (first ' + rows.length + ' listed)' : '');
    const ds = document.body.dataset;
    ds.matrixTotal = data.cases.length;
    ds.matrixShown = shown.length;
    ds.matrixRendered = rows.length;
  };
  const apply = (toAddress) => {
    const f = filters();
    shown = data.cases.filter((c) => matches(c, f));
    limit = PAGE;
    render();
    if (toAddress) {
      const p = new URLSearchParams();
      for (const k of ['suite', 'tag', 'status', 'q']) if (f[k]) p.set(k, f[k]);
      if (f.disagree) p.set('disagree', '1');
      history.replaceState(null, '', p.toString() ? '#' + p : location.pathname);
    }
  };

  // Filters from the address (`#status=fail&disagree=1`, or the same as a query string).
  const p = new URLSearchParams(location.hash.slice(1) || location.search.slice(1));
  const set = (id, v) => {
    const s = $(id);
    if (v !== null && [...s.options].some((o) => o.value === v)) s.value = v;
  };
  set('f-suite', p.get('suite'));
  set('f-tag', p.get('tag'));
  set('f-status', p.get('status'));
  $('f-disagree').checked = p.get('disagree') === '1';
  $('f-q').value = p.get('q') || '';

  for (const id of ['f-suite', 'f-tag', 'f-status', 'f-disagree'])
    $(id).addEventListener('change', () => apply(true));
  let timer;
  $('f-q').addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => apply(true), 150);
  });
  $('matrix-more').addEventListener('click', () => {
    limit += PAGE;
    render();
  });
  apply(false);
})();
