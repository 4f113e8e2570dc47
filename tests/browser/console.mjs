// Drives the approval console in Debian's Chromium (headless, never downloaded) against a live
// phoenix. Run by tests/console.rs, which starts phoenix and checks the outcome through the
// API. Environment: PHOENIX_URL, APPROVER_TOKEN, REPORTER_TOKEN, ARTIFACTS (a directory).
//
// 1. An approver opens the console; then a fault needing approval is reported: the request
//    must appear without a reload. A screenshot of the queue is kept.
// 2. A second tab opens the same request; the first approves it by clicking; the second's
//    click then shows the 409 in words.
// 3. A reporter token sees no approve button and a clear message.
// Prints one JSON line {"fault_id": ...} on success; exits 1 with the reason otherwise.
import { chromium } from "playwright-core";

const url = process.env.PHOENIX_URL;
const approver = process.env.APPROVER_TOKEN;
const reporter = process.env.REPORTER_TOKEN;
const artifacts = process.env.ARTIFACTS;
const TIMEOUT = 30000;

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function signIn(page, token) {
  await page.goto(url);
  await page.fill("#token", token);
  await page.press("#token", "Enter"); // keyboard, as an on-call engineer would
  await page.waitForSelector("#app:not([hidden])", { timeout: TIMEOUT });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const first = await context.newPage();
  const errors = [];
  first.on("pageerror", (e) => errors.push(e.message));
  await signIn(first, approver);
  await first.waitForSelector("#live.live", { timeout: TIMEOUT });

  // Reported after the page is open and live: it must arrive by itself.
  const reported = await fetch(`${url}/v1/faults`, {
    method: "POST",
    headers: { Authorization: `Bearer ${reporter}`, "Content-Type": "application/json" },
    body: JSON.stringify({ app: "web", kind: "drift", message: "config drifted on web-1" }),
  });
  check(reported.status === 202, `report answered ${reported.status}`);
  const faultId = (await reported.json()).id;
  const item = `#queue button[data-fault="${faultId}"]`;
  await first.waitForSelector(item, { timeout: TIMEOUT });
  await first.screenshot({ path: `${artifacts}/console-queue.png`, fullPage: true });

  const second = await context.newPage();
  await signIn(second, approver);
  await second.click(item);
  await second.waitForSelector("button.approve", { timeout: TIMEOUT });

  await first.click(item);
  await first.waitForSelector("button.approve", { timeout: TIMEOUT });
  const plan = await first.textContent("#detail .plan");
  check(plan.includes("record"), `the plan is not shown in words: ${plan}`);
  await first.fill("#decide-comment", "approved from the browser test");
  await first.click("button.approve");
  await first.waitForSelector("#decide-outcome .outcome.ok", { timeout: TIMEOUT });
  await first.screenshot({ path: `${artifacts}/console-approved.png`, fullPage: true });

  await second.click("button.approve");
  await second.waitForSelector("#decide-outcome .outcome.bad", { timeout: TIMEOUT });
  const refusal = await second.textContent("#decide-outcome .outcome.bad");
  check(refusal.includes("409"), `the second approval did not show the 409 in words: ${refusal}`);

  // The reporter looks in the dark theme (both themes must be readable; the screenshot shows).
  const dark = await browser.newContext({ viewport: { width: 1280, height: 700 }, colorScheme: "dark" });
  const third = await dark.newPage();
  await signIn(third, reporter);
  const note = await third.textContent("#queue-note");
  check(note.includes("reporter role"), `no clear message for a reporter: ${note}`);
  check((await third.$$("button.approve")).length === 0, "a reporter sees an approve button");
  await third.screenshot({ path: `${artifacts}/console-reporter-dark.png`, fullPage: true });
  check(errors.length === 0, `script errors on the page: ${errors.join("; ")}`);
  console.log(JSON.stringify({ fault_id: faultId, refusal: refusal.trim(), reporter_note: note.trim() }));
} catch (error) {
  failed = true;
  console.error(`console test: ${error.message}`);
  for (const page of browser.contexts().flatMap((c) => c.pages())) {
    await page.screenshot({ path: `${artifacts}/console-failure-${Date.now()}.png`, fullPage: true }).catch(() => {});
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
