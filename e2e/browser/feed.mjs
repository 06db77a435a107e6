// The live feed in a real browser: open /feed in headless Debian Chromium
// with a key in the fragment; the page subscribes to GET /stream with
// EventSource. Two accounts then submit a crossing pair on a symbol of
// this run's own, and the page must show the trade of exactly those two
// orders, with its log position as the event id. Saves a screenshot.
//
// Usage: node feed.mjs BASE_URL SCREENSHOT.png API_KEY OTHER_API_KEY
import { launch } from './launch.mjs';

const [base, screenshot, key, other] = process.argv.slice(2);
if (!base || !screenshot || !key || !other) {
  throw new Error('usage: node feed.mjs BASE_URL SCREENSHOT.png API_KEY OTHER_API_KEY');
}
// A pair no other run has traded: the page shows this run's trade only.
const letters = (n) => Array.from({ length: 4 }, (_, i) => String.fromCharCode(65 + ((n >> (5 * i)) % 26))).join('');
const stamp = Date.now();
const symbol = `F${letters(stamp)}-G${letters(stamp >> 3)}`;
const [src, dst] = symbol.split('-');

async function submit(apiKey, side) {
  // The second key was just made: every instance reads the key file again
  // within `auth.reload_ms`, so retry a 401 for a few seconds.
  for (let i = 0; i < 100; i++) {
    const resp = await fetch(`${base}/orders`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
      body: JSON.stringify({ src_currency: src, dst_currency: dst, side, price: '2.50', quantity: '4', channel: 11 }),
    });
    if (resp.status === 202) return (await resp.json()).id;
    if (resp.status !== 401) throw new Error(`POST /orders answered ${resp.status}: ${await resp.text()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('the second key was never accepted');
}

const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(`${base}/feed/#key=${encodeURIComponent(key)}&symbols=${symbol}`, { waitUntil: 'load' });
  await page.locator('#state', { hasText: 'connected' }).waitFor({ timeout: 15_000 });
  const sell = await submit(other, 'sell');
  const buy = await submit(key, 'buy');
  const trade = page.locator('tr.trade').first();
  await trade.waitFor({ timeout: 15_000 });
  const data = JSON.parse(await trade.locator('td.data').innerText());
  const id = (await trade.locator('td.id').innerText()).trim();
  if (data.buy_order_id !== buy || data.sell_order_id !== sell || data.symbol !== symbol || data.quantity !== '4') {
    throw new Error(`the page shows another trade: ${JSON.stringify(data)} (buy ${buy}, sell ${sell})`);
  }
  if (!/^\d+:\d+/.test(id)) throw new Error(`the trade's event id is not a log position: ${id}`);
  // My own order's update reached the page too (the other account's did not).
  await page.locator('tr.order td.data', { hasText: buy }).first().waitFor({ timeout: 15_000 });
  if ((await page.locator('tr.order td.data', { hasText: sell }).count()) !== 0) {
    throw new Error("another account's order is on my feed");
  }
  await page.screenshot({ path: screenshot, fullPage: false });
  console.log(`feed page: EventSource showed trade ${data.id} (${symbol}, id ${id}) of buy ${buy} and sell ${sell}; screenshot ${screenshot}`);
} finally {
  await browser.close();
}
