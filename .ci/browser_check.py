"""Load the built docs site in headless Chromium and check what a reader would see.

Serves the site with ``python -m http.server`` on 127.0.0.1, dumps every page's DOM after its
scripts ran (``chromium --headless --dump-dom``) and fails when

- a page is not rendered: no Material page (header, article with an ``<h1>``), the theme's
  scripts did not run (``<html class="… js">``, and a copy button on every code block), or a
  JavaScript error was logged;
- an equation is not typeset for the renderer: every ``$$`` block of the page's Markdown must
  be an ``arithmatex`` wrapper holding ``\\[ … \\]`` and no TeX command may appear in the text
  outside them; with ``--katex`` (a local copy of the KaTeX package that the browser receives
  in place of the CDN's) every wrapper must also hold KaTeX's output, without a KaTeX error;
- a local link, image, stylesheet or script points at a file the site does not have, a link's
  ``#fragment`` names no element of its target page, or the server answered 404 for a local
  request.

``--self-test`` first breaks a copy of the site in four ways (a missing image, a broken link, a
page without its scripts, an equation outside its wrapper) and requires each to be caught.
``--screenshots DIR`` saves the home page and a layer page at 1280×900 as PNG.

Usage: python .ci/browser_check.py --site SITE --docs docs [--katex KATEX_PACKAGE_DIR]
       [--screenshots DIR] [--self-test]
"""

from __future__ import annotations

import argparse
import functools
import html
import http.server
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
)
CDN_HOST = "cdn.jsdelivr.net"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}  # fmt: skip
# text of these elements is not prose: TeX there is code or the renderer's own source copy
NOT_PROSE = {"code", "pre", "script", "style", "annotation", "textarea", "noscript"}
TEX_COMMAND = re.compile(
    r"\\(frac|sum|tag|begin|end|left|right|lVert|rVert|theta|lambda|sigma|gamma|alpha|mu|"
    r"operatorname|mathcal|mathbb|sqrt|hat|tilde|text|qquad|cos|sin|exp|max|log)\b|\\\[|\\\]"
)


class Page(HTMLParser):
    """What the checks need from one HTML document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, set[str]]] = []
        self.html_classes: set[str] = set()
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str]] = []  # (tag, url)
        self.maths: list[dict] = []  # one per arithmatex wrapper
        self.stray_tex: list[str] = []
        self.count = {"pre": 0, "copy": 0, "h1": 0, "article": 0, "header": 0}

    def _inside(self, name: str) -> bool:
        return any(tag == name or name in classes for tag, classes in self.stack)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        classes = set((attributes.get("class") or "").split())
        for key in ("id", "name"):
            if attributes.get(key):
                self.ids.add(attributes[key])
        if tag == "html":
            self.html_classes = classes
        if tag == "pre":
            self.count["pre"] += 1
        if attributes.get("data-clipboard-target"):
            self.count["copy"] += 1
        if tag == "h1" and self._inside("md-content"):
            self.count["h1"] += 1
        if tag == "article" and "md-content__inner" in classes:
            self.count["article"] += 1
        if tag == "header" and "md-header" in classes:
            self.count["header"] += 1
        for attr in ("href", "src"):
            value = attributes.get(attr)
            if value and tag in {"a", "img", "link", "script", "source", "iframe"}:
                self.refs.append((tag, value))
        if "arithmatex" in classes:
            self.maths.append({"tag": tag, "text": "", "katex": False, "error": False})
        elif self.maths and self._inside("arithmatex"):
            if "katex" in classes:
                self.maths[-1]["katex"] = True
            if "katex-error" in classes:
                self.maths[-1]["error"] = True
        if tag not in VOID:
            self.stack.append((tag, classes))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID and self.stack and self.stack[-1][0] == tag:
            self.stack.pop()

    def handle_endtag(self, tag):
        for index in range(len(self.stack) - 1, -1, -1):
            if self.stack[index][0] == tag:
                del self.stack[index:]
                return

    def handle_data(self, data):
        if self._inside("arithmatex"):
            if not any(t in NOT_PROSE or "katex-html" in c for t, c in self.stack):
                self.maths[-1]["text"] += data
            return
        if any(tag in NOT_PROSE for tag, _ in self.stack):
            return
        if TEX_COMMAND.search(data):
            self.stray_tex.append(data.strip()[:80])


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SiteServer:
    """``python -m http.server`` on 127.0.0.1 for ``root``; its request log shows every 404."""

    def __init__(self, root: Path, workdir: Path) -> None:
        self.port = free_port()
        self.log_path = workdir / f"http-{self.port}.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
             "--directory", str(root)],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("http.server did not start") from None
                time.sleep(0.1)
        self.base = f"http://127.0.0.1:{self.port}/"

    def not_found(self) -> list[str]:
        self.log.flush()
        found = re.findall(r'"GET (\S+) HTTP/[\d.]+" 404', self.log_path.read_text())
        return sorted(set(found))

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.log.close()


class CdnStandIn:
    """An HTTPS server on 127.0.0.1 answering as cdn.jsdelivr.net with a local KaTeX package.

    Chromium is pointed at it with ``--host-resolver-rules`` (and accepts its self-signed
    certificate), so the site's CDN URLs load the real KaTeX with no network.
    """

    def __init__(self, package: Path, version: str, workdir: Path) -> None:
        root = workdir / "cdn"
        (root / "npm").mkdir(parents=True, exist_ok=True)
        (root / "npm" / f"katex@{version}").symlink_to(package.resolve())
        key, cert = workdir / "cdn.key", workdir / "cdn.crt"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", f"/CN={CDN_HOST}", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )  # fmt: skip
        handler = functools.partial(QuietHandler, directory=str(root))
        self.server = QuietServer(("127.0.0.1", 0), handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def chromium_flags(self) -> list[str]:
        return [f"--host-resolver-rules=MAP {CDN_HOST} 127.0.0.1:{self.port}",
                "--ignore-certificate-errors"]  # fmt: skip

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # the browser may close a connection mid-response when its page is done: not a fault
        if not isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError)):
            super().handle_error(request, client_address)


def chromium(url: str, workdir: Path, extra: list[str], action: list[str]) -> tuple[str, str]:
    """Run headless Chromium on ``url`` with a fresh profile; returns (stdout, stderr)."""
    profile = Path(tempfile.mkdtemp(prefix="profile-", dir=workdir))
    command = [
        os.environ.get("CHROMIUM", "chromium"),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        *extra,
        *action,
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    shutil.rmtree(profile, ignore_errors=True)
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited with {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout, result.stderr


def site_pages(site: Path) -> list[Path]:
    """Every page of the site (``…/index.html``), the home page first."""
    pages = sorted(site.rglob("index.html"), key=lambda p: (p != site / "index.html", str(p)))
    return [p for p in pages if p.relative_to(site).parts[0] not in {"assets", "search"}]


def source_of(page: Path, site: Path, docs: Path) -> Path | None:
    relative = page.parent.relative_to(site)
    candidates = [docs / "index.md"] if not relative.parts else [
        docs / relative.with_suffix(".md"), docs / relative / "index.md"
    ]  # fmt: skip
    return next((c for c in candidates if c.is_file()), None)


def display_maths_in(markdown: str) -> int:
    """Number of ``$$`` display blocks in a page's Markdown (outside fenced code)."""
    text = re.sub(r"^\s*```.*?^\s*```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    return sum(1 for line in text.splitlines() if line.strip() == "$$") // 2


@functools.cache
def ids_of(path: Path) -> frozenset[str]:
    return frozenset(parse(path.read_text(errors="replace")).ids)


def check_references(page: Page, url: str, base: str, site: Path) -> list[str]:
    problems = []
    for tag, ref in page.refs:
        target = urllib.parse.urljoin(url, html.unescape(ref))
        parts = urllib.parse.urlsplit(target)
        if parts.scheme not in {"http", "https"} or not target.startswith(base):
            continue  # another host (the CDN, doi.org, …): not the site's to check
        path = site / urllib.parse.unquote(parts.path.lstrip("/"))
        if path.is_dir():
            path = path / "index.html"
        if not path.is_file():
            problems.append(f"<{tag}> {ref!r} → {parts.path}: no such file in the site")
            continue
        if parts.fragment and path.suffix == ".html":
            fragment = urllib.parse.unquote(parts.fragment)
            known = page.ids if target.split("#")[0] == url.split("#")[0] else set()
            if fragment not in known and fragment not in ids_of(path):
                problems.append(f"<{tag}> {ref!r}: no element with id {fragment!r} there")
    return problems


def check_page(
    page_path: Path, site: Path, docs: Path, base: str, workdir: Path, extra: list[str],
    katex: bool,
) -> tuple[list[str], str]:  # fmt: skip
    """Problems of one page (empty when it is fine) and a one-line summary."""
    relative = page_path.parent.relative_to(site).as_posix()
    url = base + ("" if relative == "." else relative + "/")
    dom, log = chromium(url, workdir, extra, ["--dump-dom"])
    page = parse(dom)
    static = parse(page_path.read_text())
    problems = []
    if page.count["header"] < 1 or page.count["article"] < 1 or page.count["h1"] < 1:
        problems.append(
            "not a rendered Material page (header, article and its <h1>: "
            f"{page.count['header']}, {page.count['article']}, {page.count['h1']})"
        )
    if "js" not in page.html_classes:
        problems.append(f"the theme's scripts did not run (<html class={page.html_classes}>)")
    if static.count["pre"] and page.count["copy"] < static.count["pre"]:
        problems.append(
            f"{static.count['pre']} code blocks but {page.count['copy']} copy buttons: the "
            "theme's JavaScript bundle did not run"
        )
    errors = [line for line in log.splitlines() if "CONSOLE" in line and "Uncaught" in line]
    problems += [f"JavaScript error: {line.strip()[-200:]}" for line in errors]
    source = source_of(page_path, site, docs)
    expected = display_maths_in(source.read_text()) if source else 0
    shown = sum(1 for m in page.maths if m["tag"] == "div")
    if shown != expected:
        problems.append(f"{expected} $$ blocks in {source} but {shown} maths wrappers on the page")
    if page.stray_tex:
        problems.append(f"TeX outside a maths wrapper: {page.stray_tex[:3]}")
    for index, maths in enumerate(page.maths):
        text = maths["text"].strip()
        if katex:
            if not maths["katex"] or maths["error"]:
                state = "a KaTeX error" if maths["error"] else "no KaTeX output"
                problems.append(f"equation {index + 1}: {state} ({text[:60]!r})")
        elif not (text.startswith(("\\[", "\\(")) and text.endswith(("\\]", "\\)"))):
            problems.append(f"equation {index + 1} is not wrapped for the renderer: {text[:60]!r}")
    problems += check_references(page, url, base, site)
    rendered = sum(m["katex"] for m in page.maths)
    summary = (
        f"{relative:<34} {len(dom) // 1024:>5} KiB DOM, {page.count['copy']:>3} copy buttons, "
        f"{len(page.maths):>2} equations ({rendered} typeset), {len(page.refs):>4} references"
    )
    return problems, summary


def check_site(
    site: Path, docs: Path, workdir: Path, cdn: CdnStandIn | None, pages: list[Path] | None = None
) -> list[str]:
    """Check ``pages`` (default: all) of ``site``; prints a line per page; returns problems."""
    server = SiteServer(site, workdir)
    extra = cdn.chromium_flags() if cdn else []
    problems = []
    try:
        for page_path in pages or site_pages(site):
            found, summary = check_page(
                page_path, site, docs, server.base, workdir, extra, katex=cdn is not None
            )
            print(("FAIL " if found else "ok   ") + summary, flush=True)
            relative = page_path.relative_to(site).as_posix()
            problems += [f"{relative}: {problem}" for problem in found]
        problems += [f"404 for a local request: {path}" for path in server.not_found()]
    finally:
        server.close()
    return problems


def screenshots(site: Path, workdir: Path, cdn: CdnStandIn | None, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    server = SiteServer(site, workdir)
    extra = (cdn.chromium_flags() if cdn else []) + ["--window-size=1280,900"]
    try:
        for name, path in (("home", ""), ("layer-pooling", "layers/pooling/")):
            target = out / f"{name}.png"
            chromium(server.base + path, workdir, extra, [f"--screenshot={target}"])
            print(f"screenshot: {target} ({target.stat().st_size // 1024} KiB)")
    finally:
        server.close()


def self_test(site: Path, docs: Path, workdir: Path, cdn: CdnStandIn | None) -> list[str]:
    """Break a copy of the site in four ways; each must be caught. Returns what was missed."""
    broken = workdir / "broken-site"
    shutil.copytree(site, broken, symlinks=True)
    layer = broken / "layers" / "pooling" / "index.html"
    other = broken / "layers" / "parts" / "index.html"
    home = broken / "index.html"
    image = re.search(r'<img[^>]*src="([^"]+)"', layer.read_text())
    if image is None:
        return ["self-test: the pooling page has no image to remove"]
    (layer.parent / image.group(1)).resolve().unlink()
    text = home.read_text()
    home.write_text(text.replace("</article>", '<a href="no-such-page/">broken</a></article>', 1))
    text = other.read_text()
    other.write_text(re.sub(r"<script\b.*?</script>", "", text, flags=re.DOTALL))
    getting = broken / "getting-started" / "index.html"
    text = (broken / "layers" / "alignment" / "index.html").read_text()
    (broken / "layers" / "alignment" / "index.html").write_text(
        text.replace('<div class="arithmatex">', '<div class="unwrapped">', 1)
    )
    pages = [home, layer, other, broken / "layers" / "alignment" / "index.html", getting]
    print("self-test: a copy of the site with four faults (missing image, broken link, page "
          "without scripts, equation outside its wrapper)")  # fmt: skip
    found = "\n".join(check_site(broken, docs, workdir, cdn, pages))
    expected = {
        "missing image": "404 for a local request: "
        + urllib.parse.urljoin("/layers/pooling/", image.group(1)),
        "broken link": "index.html: <a> 'no-such-page/'",
        "page without scripts": "layers/parts/index.html: the theme's scripts did not run",
        "equation outside its wrapper": "layers/alignment/index.html: TeX outside a maths wrapper",
    }
    missed = [f"self-test: {fault} not caught" for fault, text in expected.items()
              if text not in found]  # fmt: skip
    if "getting-started/index.html" in found:
        missed.append("self-test: a page without any fault was reported")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, required=True, help="the built site (mkdocs build)")
    parser.add_argument("--docs", type=Path, default=Path("docs"), help="its Markdown sources")
    parser.add_argument("--katex", type=Path, help="KaTeX npm package folder (renders maths)")
    parser.add_argument("--screenshots", type=Path, help="folder for two PNG screenshots")
    parser.add_argument("--self-test", action="store_true", help="first check the checks")
    args = parser.parse_args()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="browser-check-") as tmp:
        workdir = Path(tmp)
        cdn = None
        if args.katex is not None:
            version = re.search(r"npm/katex@([\w.-]+)/", (args.site / "index.html").read_text())
            if version is None:
                print("the site loads no KaTeX from the CDN", file=sys.stderr)
                return 1
            cdn = CdnStandIn(args.katex, version.group(1), workdir)
            print(f"maths: KaTeX {version.group(1)} served as {CDN_HOST} (equations typeset)")
        else:
            print("maths: no KaTeX (offline): checking that every equation is wrapped")
        try:
            problems = self_test(args.site, args.docs, workdir, cdn) if args.self_test else []
            print(f"the site: {args.site}")
            problems += check_site(args.site, args.docs, workdir, cdn)
            if args.screenshots is not None:
                screenshots(args.site, workdir, cdn, args.screenshots)
        finally:
            if cdn is not None:
                cdn.close()
    for problem in problems:
        print(f"browser check: {problem}", file=sys.stderr)
    status = "FAILED" if problems else "passed"
    print(f"browser check {status} in {time.monotonic() - start:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
