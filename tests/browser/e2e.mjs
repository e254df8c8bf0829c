// End-to-end test of the web client: a real `traum serve` (tiny model) and
// headless Chromium driven by playwright-core. Started by tests/browser.rs,
// which passes everything through the environment:
//   TRAUM_BIN, TRAUM_MODEL, TRAUM_CLIENT_DIR, TRAUM_DATA_DIR, CHROMIUM,
//   SCREENSHOT_DIR, AUDIO_FILES (paths separated by newlines; at least 3),
//   SOURCE_DIR (a folder holding kick.wav in drums/ and pad.wav, audio not uploaded).
// Exits non-zero, with the failing step, a screenshot and the server log.

import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const BIN = env('TRAUM_BIN');
const MODEL = env('TRAUM_MODEL');
const CLIENT = env('TRAUM_CLIENT_DIR');
const DATA = env('TRAUM_DATA_DIR');
const CHROMIUM = env('CHROMIUM');
const SHOTS = env('SCREENSHOT_DIR');
const FILES = env('AUDIO_FILES').split('\n').filter(Boolean);
const FOLDER = env('SOURCE_DIR');
const STEP_TIMEOUT = 60_000;

mkdirSync(SHOTS, { recursive: true });

let server = null;
let serverLog = '';

function startServer(bind) {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, [
      'serve', '--bind', bind, '--data-dir', DATA, '--model', MODEL,
      '--client-dir', CLIENT, '--shutdown-grace-s', '2',
    ], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: 'info,sqlx=warn,sea_orm=warn' } });
    child.stderr.on('data', (d) => { serverLog += d.toString(); });
    const lines = createInterface({ input: child.stdout });
    const timer = setTimeout(() => reject(new Error('server did not start in 120 s')), 120_000);
    lines.once('line', (line) => {
      clearTimeout(timer);
      const m = line.match(/^traum listening on (\S+)/);
      if (!m) return reject(new Error(`unexpected first line: ${line}`));
      lines.on('line', () => {});
      resolve({ child, url: m[1] });
    });
    child.once('exit', (code) => reject(new Error(`server exited (${code})`)));
  });
}

function stopServer(s) {
  return new Promise((resolve) => {
    if (s.child.exitCode !== null) return resolve();
    s.child.once('exit', () => resolve());
    s.child.kill('SIGTERM');
  });
}

const shots = [];
async function shot(page, name, fullPage = true) {
  // Let CSS transitions (bars, theme colours) settle first.
  await page.waitForTimeout(400);
  const path = join(SHOTS, `${name}.png`);
  await page.screenshot({ path, fullPage });
  shots.push(path);
}

async function step(page, name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    console.log(`FAIL ${name}: ${e.message}`);
    try { await shot(page, `failure-${name.replace(/\W+/g, '-')}`); } catch {}
    throw e;
  }
}

const graphql = async (url, query, variables = {}) => {
  const r = await fetch(`${url}/graphql`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ query, variables }),
  });
  return (await r.json()).data;
};

async function main() {
  server = await startServer('127.0.0.1:0');
  const base = server.url;
  const bind = base.replace(/^http:\/\//, '');
  console.log(`server at ${base}`);

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required'],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, colorScheme: 'dark' });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  const consoleErrors = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  // Every GraphQL operation the page sends, to prove nothing polls.
  const operations = [];
  page.on('request', (r) => {
    if (r.url().endsWith('/graphql') && r.method() === 'POST') {
      const body = r.postData() || '';
      const m = body.match(/"operationName":"(\w+)"/) || body.match(/(query|mutation) (\w+)/);
      operations.push({ at: Date.now(), op: m ? (m[2] || m[1]) : 'multipart' });
    }
  });

  try {
    await step(page, 'library loads and goes live', async () => {
      await page.goto(base);
      await page.waitForSelector('h1:text("Library")');
      await page.waitForSelector('[data-conn="Live"]');
      await page.waitForSelector('text=No files yet');
    });

    const [first, second, third] = FILES;
    await step(page, 'upload two files and watch both reach done', async () => {
      // Record every state each row shows, as the DOM changes.
      await page.evaluate(() => {
        window.__seen = {};
        const note = () => document.querySelectorAll('li.file').forEach((li) => {
          const id = li.dataset.fileId;
          (window.__seen[id] ||= new Set()).add(li.dataset.status);
        });
        new MutationObserver(note).observe(document.body, { subtree: true, childList: true, attributes: true });
      });
      const uploadAt = Date.now();
      await page.setInputFiles('#upload-input', [first, second]);
      await page.waitForFunction(() => document.querySelectorAll('li.file').length === 2);
      // Mid-flight, as it happens (no settling wait): whatever stage it is in.
      await page.screenshot({ path: join(SHOTS, 'library-processing.png') });
      shots.push(join(SHOTS, 'library-processing.png'));
      await page.waitForFunction(() => {
        const rows = [...document.querySelectorAll('li.file')];
        return rows.length === 2 && rows.every((li) => li.dataset.status === 'INDEXED'
          && li.querySelector('[role=progressbar]').getAttribute('aria-valuenow') === '100');
      });
      const seen = await page.evaluate(() => Object.fromEntries(
        Object.entries(window.__seen).map(([k, v]) => [k, [...v]])));
      console.log(`     states seen: ${JSON.stringify(seen)}`);
      for (const states of Object.values(seen)) {
        if (!states.some((s) => s !== 'INDEXED')) throw new Error(`no progress shown before done: ${states}`);
      }
      const listed = operations.filter((o) => o.at >= uploadAt && o.op === 'Files');
      if (listed.length) throw new Error(`the page re-listed files ${listed.length} times (polling?)`);
      const count = await page.textContent('[data-testid=library-count]');
      if (!count.startsWith('2 files')) throw new Error(`count says ${count}`);
      await shot(page, 'library');
    });

    await step(page, 'search by text shows ranked results', async () => {
      await page.click('nav >> text=Search');
      await page.fill('#search-text', 'a steady sine tone');
      await page.waitForSelector('ol.results li.result');
      await page.waitForFunction(() => document.querySelectorAll('ol.results li.result').length === 2);
      const scores = await page.$$eval('ol.results .score-value', (els) => els.map((e) => parseFloat(e.textContent)));
      for (let i = 1; i < scores.length; i++) {
        if (scores[i] > scores[i - 1]) throw new Error(`not ranked: ${scores}`);
      }
      const summary = await page.textContent('[data-testid=result-summary]');
      if (!/2 results in/.test(summary)) throw new Error(`summary: ${summary}`);
      await shot(page, 'search');
    });

    await step(page, 'play a result from its matching window', async () => {
      await page.click('ol.results li.result >> nth=0 >> button:has-text("Play")');
      await page.waitForSelector('ol.results audio.player');
      await page.waitForFunction(() => document.querySelector('ol.results audio.player').readyState >= 1, null, { timeout: 20_000 });
    });

    await step(page, 'open a result and see the player load', async () => {
      await page.click('ol.results li.result >> nth=0 >> .result-name');
      await page.waitForSelector('#player');
      await page.waitForFunction(() => {
        const a = document.querySelector('#player');
        return a && a.readyState >= 1 && a.duration > 0;
      }, null, { timeout: 20_000 });
      const duration = await page.$eval('#player', (a) => a.duration);
      console.log(`     player duration ${duration.toFixed(2)} s`);
      await page.waitForSelector('h2:text("More like this")');
      await shot(page, 'file');
    });

    await step(page, 'more like this lists the other file', async () => {
      await page.click('nav >> text=Library');
      await page.click('li.file >> nth=0 >> button:has-text("More like this")');
      await page.waitForSelector('h2.results-heading:text-matches("More like")');
      await page.waitForFunction(() => document.querySelectorAll('ol.results li.result').length === 1);
    });

    await step(page, 'analytics shows the library and the searches', async () => {
      await page.click('nav >> text=Analytics');
      await page.waitForSelector('figcaption:text("Files by format")');
      await page.waitForSelector('table.table tbody tr');
      const stat = await page.textContent('.stats .stat >> nth=0');
      if (!stat.includes('2')) throw new Error(`files stat: ${stat}`);
      await shot(page, 'analytics');
    });

    await step(page, 'system shows the model and the queue', async () => {
      await page.click('nav >> text=System');
      await page.waitForSelector('dt:text("Checkpoint")');
      const model = await page.textContent('dd code');
      if (!model.includes('tiny')) throw new Error(`model: ${model}`);
      await shot(page, 'system');
    });

    await step(page, 'delete one file and see it leave the list', async () => {
      await page.click('nav >> text=Library');
      await page.waitForFunction(() => document.querySelectorAll('li.file').length === 2);
      const row = page.locator('li.file').nth(1);
      const id = await row.getAttribute('data-file-id');
      await row.locator('button:has-text("Delete")').click();
      await row.locator('button:has-text("Confirm delete")').click();
      await page.waitForFunction((gone) => !document.querySelector(`li.file[data-file-id="${gone}"]`), id);
      await page.waitForFunction(() => document.querySelectorAll('li.file').length === 1);
      const data = await graphql(base, '{ files(first: 10) { totalCount } }');
      if (data.files.totalCount !== 1) throw new Error(`server still has ${data.files.totalCount} files`);
    });

    await step(page, 'server restart: offline banner, then live again', async () => {
      await stopServer(server);
      await page.waitForSelector('[data-offline=true]', { timeout: 20_000 });
      await shot(page, 'offline', false);
      server = await startServer(bind);
      await page.waitForSelector('[data-conn="Live"]', { timeout: 30_000 });
      await page.waitForSelector('[data-offline=true]', { state: 'detached' });
      // The new connection carries events: a third file goes through live.
      await page.setInputFiles('#upload-input', [third]);
      await page.waitForFunction(() => document.querySelectorAll('li.file').length === 2);
      await page.waitForFunction(() => [...document.querySelectorAll('li.file')].every((li) => li.dataset.status === 'INDEXED'));
    });

    await step(page, 'a refused upload says why and loses nothing', async () => {
      await page.setInputFiles('#upload-input', [{ name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('not audio at all') }]);
      await page.waitForSelector('li.notice-refused');
      const text = await page.textContent('li.notice-refused');
      if (!/notes\.txt was not added/.test(text)) throw new Error(`notice: ${text}`);
      const rows = await page.locator('li.file').count();
      if (rows !== 2) throw new Error(`${rows} rows after a refused upload`);
      await shot(page, 'library-refused');
    });

    await step(page, 'light theme and phone width', async () => {
      await page.click('button[aria-label="Switch between dark and light theme"]');
      const theme = await page.evaluate(() => document.documentElement.dataset.theme);
      if (theme !== 'light') throw new Error(`theme is ${theme}`);
      await shot(page, 'library-light');
      await page.setViewportSize({ width: 390, height: 844 });
      await page.click('nav >> text=Search');
      await page.fill('#search-text', 'noise');
      await page.waitForSelector('ol.results li.result');
      await shot(page, 'search-phone-light');
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      if (overflow > 2) throw new Error(`page is ${overflow}px wider than a phone`);
    });

    await step(page, 'keyboard: skip link first, then the navigation', async () => {
      await page.goto(`${base}/analytics`);
      await page.waitForSelector('h1:text("Analytics")');
      await page.keyboard.press('Tab');
      const first = await page.evaluate(() => document.activeElement.textContent);
      if (!/Skip to content/.test(first)) throw new Error(`first tab stop: ${first}`);
      await page.keyboard.press('Tab');
      const second = await page.evaluate(() => document.activeElement.textContent);
      if (second !== 'Library') throw new Error(`second tab stop: ${second}`);
      await page.keyboard.press('Enter');
      await page.waitForSelector('h1:text("Library")');
    });

    await step(page, 'a folder: add it by path, see its scan, list its files, remove it', async () => {
      await page.setViewportSize({ width: 1280, height: 860 });
      await page.click('nav >> text=Sources');
      await page.waitForSelector('h1:text("Sources")');
      await page.fill('#folder-path', FOLDER);
      await page.click('button:has-text("Add folder")');
      const row = page.locator('li.source', { has: page.locator('.source-path', { hasText: FOLDER }) });
      await row.waitFor();
      await page.waitForFunction((folder) => {
        const li = [...document.querySelectorAll('li.source')]
          .find((l) => l.querySelector('.source-path')?.textContent === folder);
        return li && li.dataset.state === 'Up to date'
          && li.querySelector('.scan-counts')?.textContent === 'found 2 · new 2'
          && li.querySelector('.source-main .muted span')?.textContent === '2 files';
      }, FOLDER);
      await shot(page, 'sources');
      // Its files, and only its files, in the library list.
      await row.locator('button:has-text("Show files")').click();
      await page.waitForSelector('h1:text("Library")');
      await page.waitForFunction(() => {
        const rows = [...document.querySelectorAll('li.file')];
        return rows.length === 2 && rows.every((li) => li.dataset.status === 'INDEXED');
      });
      const names = await page.$$eval('li.file .file-name', (els) => els.map((e) => e.textContent).sort());
      if (names.join() !== 'kick.wav,pad.wav') throw new Error(`the folder lists ${names}`);
      await page.fill('#folder-filter', `${FOLDER}/drums`);
      await page.click('form.folder-filter button');
      await page.waitForFunction(() => document.querySelectorAll('li.file').length === 1);
      const only = await page.textContent('li.file .file-name');
      if (only !== 'kick.wav') throw new Error(`drums/ lists ${only}`);
      await shot(page, 'library-folder');
      await page.click('button:has-text("Whole library")');
      await page.waitForFunction(() => document.querySelectorAll('li.file').length === 4);
      // Removed with its files: the library is as before.
      await page.click('nav >> text=Sources');
      await row.locator('button:text-is("Remove")').click();
      await row.locator('button:text-is("Remove with its files")').click();
      await row.waitFor({ state: 'detached' });
      const data = await graphql(base, '{ files(first: 10) { totalCount } }');
      if (data.files.totalCount !== 2) throw new Error(`${data.files.totalCount} files after removing the folder`);
    });

    await step(page, 'GraphiQL loads from this server and runs a query', async () => {
      const foreign = [];
      const onRequest = (r) => { if (!r.url().startsWith(base) && !r.url().startsWith('data:')) foreign.push(r.url()); };
      page.on('request', onRequest);
      await page.setViewportSize({ width: 1280, height: 860 });
      await page.goto(`${base}/graphql`);
      await page.waitForSelector('.graphiql-container');
      // The schema arrived (graphql-js's introspection query passed the depth limit).
      await page.click('button[aria-label="Show Documentation Explorer"]');
      await page.waitForSelector('.graphiql-doc-explorer >> text=Query');
      await page.click('.graphiql-execute-button');
      await page.waitForFunction(() => (document.querySelector('.result-window')?.textContent || '').includes('"search"'));
      await shot(page, 'graphiql');
      page.off('request', onRequest);
      if (foreign.length) throw new Error(`GraphiQL fetched from elsewhere: ${foreign.join(', ')}`);
    });

    await step(page, 'a server that wants a key: the page asks, then works with it', async () => {
      // The first key closes the (loopback) server to anonymous callers at once.
      const out = await new Promise((resolve, reject) => {
        const c = spawn(BIN, ['keys', 'create', '--name', 'browser', '--scope', 'write', '--data-dir', DATA],
          { stdio: ['ignore', 'pipe', 'pipe'] });
        let stdout = '';
        c.stdout.on('data', (d) => { stdout += d.toString(); });
        c.once('exit', (code) => (code === 0 ? resolve(stdout.trim()) : reject(new Error(`keys create exited ${code}`))));
      });
      if (!out.startsWith('traum_')) throw new Error(`no key printed: ${out}`);
      await page.goto(base);
      await page.waitForSelector('[data-key-prompt=true]');
      await shot(page, 'key-prompt', false);
      await page.fill('#api-key', out);
      await page.click('[data-key-prompt=true] button[type=submit]');
      await page.waitForSelector('[data-key="browser"]');
      await page.waitForFunction(() => document.querySelectorAll('li.file').length === 2);
      await page.waitForSelector('[data-conn="Live"]');
      // Playback goes through a signed URL, not the key.
      const src = await page.evaluate(async () => {
        const r = await fetch('/graphql', {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${localStorage.getItem('traum.apiKey')}` },
          body: JSON.stringify({ query: '{ files(first: 1) { edges { node { url } } } }' }),
        });
        return (await r.json()).data.files.edges[0].node.url;
      });
      if (!/sig=/.test(src)) throw new Error(`file url is not signed: ${src}`);
      const played = await page.evaluate(async (u) => (await fetch(u, { headers: { range: 'bytes=0-15' } })).status, src);
      if (played !== 206) throw new Error(`signed URL answered ${played}`);
      await shot(page, 'library-with-key');
    });

    const unexpected = consoleErrors.filter((e) => !/ERR_CONNECTION_REFUSED|WebSocket|Failed to load resource/.test(e));
    if (unexpected.length) throw new Error(`console errors:\n${unexpected.join('\n')}`);
    console.log(`screenshots:\n${shots.join('\n')}`);
  } finally {
    await browser.close();
    await stopServer(server);
  }
}

main().then(
  () => process.exit(0),
  async (e) => {
    console.log(`\n${e.stack || e}\n--- server log (tail) ---\n${serverLog.split('\n').slice(-40).join('\n')}`);
    if (server) await stopServer(server);
    process.exit(1);
  },
);
