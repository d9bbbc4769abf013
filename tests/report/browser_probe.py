"""Render a report in headless Chromium and read back what a person would notice is wrong.

Why a probe script plus ``--dump-dom`` (and not the DevTools protocol): Chromium's ``--enable-logging=stderr``
prints every console message at the same INFO level, so errors cannot be told from logs there, and a CDP
client needs a websocket. Instead a copy of the page gets a small script as the first element of ``<head>``
(so it sees errors raised while the rest of the page loads): it records ``console.error`` calls, uncaught
errors, failed resources and CSP violations, and on ``load`` measures the page (text, images, overflow of the
main column) and writes the result as JSON into the DOM, which ``--dump-dom`` returns. Any console line in
Chromium's stderr log is counted too: reports contain no script of their own, so there should be none.

Used by tests/report/test_browser.py and scripts/make_gallery.py.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "headless_shell")

PROBE = r"""<script>(function(){
var errors = [];
console.error = function(){ errors.push('console.error: ' + [].join.call(arguments, ' ')); };
window.addEventListener('error', function(e){
  var t = e.target;
  if (t && t !== window && t.tagName)
    errors.push('failed to load ' + t.tagName + ' ' + (t.alt || String(t.src || t.href).slice(0, 60)));
  else errors.push('uncaught: ' + e.message);
}, true);
window.addEventListener('unhandledrejection', function(e){ errors.push('rejection: ' + e.reason); });
document.addEventListener('securitypolicyviolation', function(e){
  errors.push('CSP: ' + e.violatedDirective);
});
window.addEventListener('load', function(){
  var doc = document.documentElement, main = document.querySelector('main') || document.body;
  var imgs = [].slice.call(document.images);
  var broken = imgs.filter(function(i){ return !i.complete || i.naturalWidth === 0; })
                   .map(function(i){ return i.alt || String(i.src).slice(0, 40); });
  var overflow = [], right = main.getBoundingClientRect().right;
  if (doc.scrollWidth > doc.clientWidth)
    overflow.push('page is ' + doc.scrollWidth + 'px wide in a ' + doc.clientWidth + 'px window');
  main.querySelectorAll('*').forEach(function(el){
    var b = el.getBoundingClientRect();
    var tag = el.tagName.toLowerCase() + (el.className ? '.' + el.className : '');
    if (b.width > 0 && b.right > right + 1)
      overflow.push(tag + ' ends at ' + Math.round(b.right) + 'px, past the main column (' +
                    Math.round(right) + 'px)');
    if (el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1)
      overflow.push(tag + ' scrolls sideways (' + el.scrollWidth + ' > ' + el.clientWidth + 'px)');
  });
  var out = document.createElement('pre');
  out.id = 'shrinkscope-probe';
  out.textContent = JSON.stringify({text: (main.innerText || '').trim().length, images: imgs.length,
    broken: broken, errors: errors, overflow: overflow.slice(0, 20), height: doc.scrollHeight});
  document.body.appendChild(out);
});
})();</script>"""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary (``$SHRINKSCOPE_CHROMIUM`` first), or None."""
    env = os.environ.get("SHRINKSCOPE_CHROMIUM")
    if env:
        return env
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(chromium: str | None, args: list[str], url: str, *, timeout: float) -> subprocess.CompletedProcess:
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium binary found (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="shrinkscope-chromium-") as profile:
        cmd = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-extensions",
            "--mute-audio",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            *args,
            url,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def probe(
    page: str | Path,
    *,
    width: int = 1280,
    height: int = 900,
    chromium: str | None = None,
    timeout: float = 120,
) -> dict:
    """Load a copy of ``page`` with the probe script at ``width`` x ``height``; returns the probe's findings
    (``text``, ``images``, ``broken``, ``errors``, ``overflow``, ``height``) plus ``console`` (console lines
    from Chromium's log)."""
    page = Path(page).resolve()
    text = page.read_text(encoding="utf-8")
    i = text.find("<head>")
    probed = text[: i + 6] + PROBE + text[i + 6 :] if i >= 0 else PROBE + text
    copy = page.with_name(page.stem + ".probe.html")
    copy.write_text(probed, encoding="utf-8")
    try:
        run = _run(
            chromium, [f"--window-size={width},{height}", "--dump-dom"], copy.as_uri(), timeout=timeout
        )
    finally:
        copy.unlink()
    m = re.search(r'<pre id="shrinkscope-probe">(.*?)</pre>', run.stdout, re.S)
    if m is None:
        raise RuntimeError(
            f"the probe did not report (exit {run.returncode}); stderr tail: {run.stderr[-800:]}"
        )
    found = json.loads(html.unescape(m.group(1)))
    found["console"] = [ln for ln in run.stderr.splitlines() if ":CONSOLE" in ln]
    return found


def screenshot(
    page: str | Path,
    png: str | Path,
    *,
    width: int = 1280,
    height: int = 900,
    chromium: str | None = None,
    timeout: float = 120,
) -> None:
    """Save a ``width`` x ``height`` screenshot of ``page`` (make ``height`` the probe's to get it all)."""
    run = _run(
        chromium,
        [f"--window-size={width},{height}", f"--screenshot={Path(png).resolve()}"],
        Path(page).resolve().as_uri(),
        timeout=timeout,
    )
    if not Path(png).exists():
        raise RuntimeError(f"no screenshot written (exit {run.returncode}): {run.stderr[-800:]}")
