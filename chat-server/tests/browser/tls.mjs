// The chat page over https:// and the chat over wss:// in headless
// Chromium (issue 14). The test CA is not in any trust store: the leaf is
// trusted by Chromium's SPKI allow-list flag (certificate verification
// stays on for everything else), and Node's fetch by NODE_EXTRA_CA_CERTS.
// Usage: node tls.mjs HTTPS_URL SCREENSHOT USER_DATA_DIR PLAYWRIGHT_CORE_INDEX SPKI_SHA256_BASE64
import { createRequire } from "node:module";

const [url, screenshot, profile, playwrightPath, spki] = process.argv.slice(2);
const { chromium } = createRequire(import.meta.url)(playwrightPath);
const T = { timeout: 10000 };

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok - ${what}`);
}

for (let i = 0; ; i++) {
  try {
    const r = await fetch(new URL("/healthz", url));
    if (r.ok && (await r.text()) === "ok") break;
  } catch (e) {
    if (i === 100) throw new Error(`server did not become healthy over https: ${e.cause ?? e}`);
  }
  await new Promise((r) => setTimeout(r, 100));
}

const context = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  viewport: { width: 900, height: 560 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
    `--ignore-certificate-errors-spki-list=${spki}`,
  ],
});
let failed = false;
try {
  const wsUrls = [];
  context.on("page", (p) => {
    p.on("websocket", (ws) => wsUrls.push(ws.url()));
    p.on("pageerror", (e) => { console.error("page error:", e.message); failed = true; });
  });
  const join = async (page, nick) => {
    const resp = await page.goto(url, T);
    check(resp.ok() && page.url().startsWith("https://"), `${nick}'s page loads over https`);
    await page.fill("#nick-input", nick);
    await page.press("#nick-input", "Enter");
    await page.waitForSelector("#join", { state: "hidden", ...T });
  };
  const a = await context.newPage();
  const b = await context.newPage();
  await join(a, "alice");
  await join(b, "bob");
  check(wsUrls.length >= 2 && wsUrls.every((u) => u.startsWith("wss://")), `the page picked wss: (${wsUrls[0]})`);
  const security = await a.evaluate(() => window.isSecureContext);
  check(security, "the page is a secure context");

  await a.fill("#msg-input", "hello over wss 🔒");
  await a.press("#msg-input", "Enter");
  await b.locator("#messages .line", { hasText: "hello over wss 🔒" }).waitFor(T);
  check(true, "alice's message reaches bob over wss");
  const longLine = "compressible chat line over tls ".repeat(40).trim();
  await b.fill("#msg-input", longLine);
  await b.press("#msg-input", "Enter");
  await a.locator("#messages .line", { hasText: longLine }).waitFor(T);
  check(true, "a long (compressed) line reaches alice over wss");
  await a.screenshot({ path: screenshot });
  console.log(`screenshot: ${screenshot}`);
} catch (e) {
  console.error(e);
  failed = true;
} finally {
  await context.close();
}
process.exit(failed ? 1 : 0);
