"""Open an HTML page in headless chromium and report what the page did.

``inspect_page(html)`` injects a small probe at the top of the page that records console errors,
uncaught exceptions, unhandled promise rejections and failed resource loads, and, after the load event,
every resource the page fetched and, for each ``div.gs-plot``, whether plotly drew it (an
``svg.main-svg``) and how many traces, and the layout: the viewport and page widths and, for each
``div.scroll`` box, its content and visible widths. chromium's ``--dump-dom`` then prints the DOM,
which carries those records back, and the plot divs are checked again in the dumped DOM itself.
``screenshot(html, browser, png)`` saves what a reader sees at a given window size.
"""

import html
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

PROBE = """<script id="gs-probe">(function(){
var errors=[];
function put(id,value){var el=document.getElementById(id);if(!el){el=document.createElement('pre');
el.id=id;el.hidden=true;(document.body||document.documentElement).appendChild(el);}
el.textContent=JSON.stringify(value);}
var original=console.error;
console.error=function(){errors.push('console.error: '+Array.prototype.map.call(arguments,String).join(' '));
put('gs-probe-errors',errors);return original.apply(console,arguments);};
window.addEventListener('error',function(e){var t=e.target;
errors.push(t&&t!==window&&(t.src||t.href)?'failed to load '+(t.src||t.href):'uncaught: '+e.message);
put('gs-probe-errors',errors);},true);
window.addEventListener('unhandledrejection',function(e){errors.push('unhandled rejection: '+e.reason);
put('gs-probe-errors',errors);});
window.addEventListener('load',function(){setTimeout(function(){
var plots=Array.prototype.map.call(document.querySelectorAll('div.gs-plot'),function(el){
return {id:el.id,svg:el.querySelectorAll('svg.main-svg').length,traces:(el.data||[]).length,
drawn:el.querySelectorAll('g.trace, g.imagelayer image, g.hm image').length};});
put('gs-probe-plots',plots);
put('gs-probe-resources',performance.getEntriesByType('resource').map(function(r){return r.name;}));
put('gs-probe-layout',{viewport:window.innerWidth,page:document.documentElement.scrollWidth,
boxes:Array.prototype.map.call(document.querySelectorAll('div.scroll'),function(el){
var s=el.closest('section');return {section:s?s.id:null,scroll:el.scrollWidth,client:el.clientWidth};})});
put('gs-probe-errors',errors);put('gs-probe-done',true);},1000);});
})();</script>"""

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """Path of a chromium-family browser on PATH, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageResult:
    dom: str
    stderr: str
    done: bool
    errors: list[str]
    resources: list[str]
    plots: list[dict]
    svg_divs: dict[str, int] = field(default_factory=dict)
    layout: dict = field(default_factory=dict)


class _PlotDivs(HTMLParser):
    """Counts svg.main-svg elements inside each div.gs-plot of a DOM dump."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}
        self._stack: list[str | None] = []  # one entry per open div: its gs-plot id or None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "div":
            self._stack.append(attrs.get("id") if "gs-plot" in classes else None)
            if "gs-plot" in classes:
                self.counts.setdefault(attrs.get("id"), 0)
        elif tag == "svg" and "main-svg" in classes:
            owner = next((d for d in reversed(self._stack) if d is not None), None)
            if owner is not None:
                self.counts[owner] += 1

    def handle_endtag(self, tag):
        if tag == "div" and self._stack:
            self._stack.pop()


def _record(dom: str, element_id: str):
    match = re.search(rf'<pre id="{element_id}"[^>]*>(.*?)</pre>', dom, re.S)
    if match is None:
        return None
    return json.loads(html.unescape(match.group(1)))


def _command(browser: str, folder: Path, width: int, height: int) -> list[str]:
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={folder / 'profile'}", "--hide-scrollbars",
            f"--window-size={width},{height}", "--virtual-time-budget=10000", "--enable-logging=stderr",
            "--v=0"]


def inspect_page(page: str, browser: str, *, width: int = 1400, height: int = 900,
                 timeout: float = 180.0) -> PageResult:
    """Load ``page`` (HTML text) from a file:// URL in headless ``browser``, in a window of
    ``width`` x ``height`` CSS pixels, and collect the records."""
    probed = page.replace("<head>", "<head>" + PROBE, 1)
    assert probed != page, "the page has no <head> to put the probe in"
    with tempfile.TemporaryDirectory(prefix="gs-browser-") as folder:
        html_path = Path(folder) / "page.html"
        html_path.write_text(probed, encoding="utf-8")
        command = _command(browser, Path(folder), width, height) + ["--dump-dom", html_path.as_uri()]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    dom = proc.stdout
    parser = _PlotDivs()
    parser.feed(dom)
    return PageResult(dom=dom, stderr=proc.stderr, done=bool(_record(dom, "gs-probe-done")),
                      errors=_record(dom, "gs-probe-errors") or [],
                      resources=_record(dom, "gs-probe-resources") or [],
                      plots=_record(dom, "gs-probe-plots") or [], svg_divs=parser.counts,
                      layout=_record(dom, "gs-probe-layout") or {})


def screenshot(page: str, browser: str, png: str | Path, *, width: int = 1400, height: int = 2000,
               timeout: float = 180.0) -> Path:
    """Save a PNG of the top ``height`` pixels of ``page`` in a ``width``-pixel-wide window."""
    png = Path(png).resolve()
    with tempfile.TemporaryDirectory(prefix="gs-browser-") as folder:
        html_path = Path(folder) / "page.html"
        html_path.write_text(page, encoding="utf-8")
        command = _command(browser, Path(folder), width, height) + [f"--screenshot={png}", html_path.as_uri()]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert png.is_file(), f"no screenshot written: {proc.stderr[-2000:]}"
    return png


def console_errors_in_log(stderr: str) -> list[str]:
    """Uncaught errors and error-level console lines in chromium's --enable-logging output (chromium
    logs console.error at INFO level, so those are caught by the probe instead)."""
    return [line for line in stderr.splitlines()
            if "CONSOLE" in line and ("Uncaught" in line or ":ERROR:CONSOLE" in line)]
