// Swagger UI in a real browser: open /docs in headless Debian Chromium,
// "Authorize" with the API key, expand POST /orders, "Try it out" with the
// example body, "Execute", and expect a 202 in the rendered response — and
// a 401 before authorizing. Saves a screenshot of the page.
//
// Usage: node swagger.mjs BASE_URL SCREENSHOT.png API_KEY
import { launch } from './launch.mjs';

const [base, screenshot, key] = process.argv.slice(2);
if (!base || !screenshot || !key) throw new Error('usage: node swagger.mjs BASE_URL SCREENSHOT.png API_KEY');

const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1500 } });
  await page.goto(`${base}/docs`, { waitUntil: 'load' });
  const op = page.locator('#operations-Orders-createOrder');
  await op.locator('.opblock-summary').click();
  await op.locator('button.try-out__btn').click();
  const body = await op.locator('textarea.body-param__text').inputValue();
  if (!body.includes('"src_currency"')) throw new Error(`the example body is missing: ${body}`);
  const execute = async () => {
    await op.locator('button.execute').click();
    const status = op.locator('.live-responses-table .response .response-col_status').first();
    await status.waitFor({ timeout: 15_000 });
    const code = (await status.innerText()).trim();
    await op.locator('button.btn-clear').click();
    return code;
  };
  // Not authorized yet: the operation is refused.
  const before = await execute();
  if (!before.startsWith('401')) throw new Error(`Try it out without a key answered ${before}, not 401`);
  // "Authorize": the bearer scheme's dialog takes the key.
  await page.locator('.auth-wrapper button.authorize').click();
  const dialog = page.locator('.dialog-ux .modal-ux');
  // The first scheme is the bearer one (the stream's `?key=` is the other).
  await dialog.locator('input[type=text], input[type=password]').first().fill(key);
  await dialog.locator('button.authorize').first().click();
  await dialog.locator('button.btn-done, button.close-modal').first().click();
  await op.locator('button.execute').click();
  const status = op.locator('.live-responses-table .response .response-col_status').first();
  await status.waitFor({ timeout: 15_000 });
  const code = (await status.innerText()).trim();
  if (!code.startsWith('202')) {
    const text = await op.locator('.live-responses-table').innerText();
    throw new Error(`Try it out answered ${code}, not 202:\n${text}`);
  }
  await op.scrollIntoViewIfNeeded();
  await page.screenshot({ path: screenshot, fullPage: false });
  console.log(`swagger ui: POST /orders via "Try it out" answered ${before} before "Authorize" and ${code} after; screenshot ${screenshot}`);
} finally {
  await browser.close();
}
