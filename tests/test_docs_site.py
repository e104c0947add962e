"""The documentation site, built offline by scripts/build-docs and checked in a real browser.

Serves `_site/` on 127.0.0.1 (a free port) and drives Debian's chromium through playwright: every notebook has a page
the nav reaches, every exported symbol has its section, figures load, math renders, search finds a symbol.
Screenshots go to `_site_shots/`. With env CI set, a missing chromium or playwright fails the test instead of skipping.
"""
import ast, functools, http.server, importlib.machinery, importlib.util, json, os, re, shutil, subprocess, sys, threading
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE, SHOTS = ROOT/"_site", ROOT/"_site_shots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _build_docs_module():
    loader = importlib.machinery.SourceFileLoader("build_docs", str(ROOT/"scripts"/"build-docs"))
    spec = importlib.util.spec_from_loader("build_docs", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


bd = _build_docs_module()


def _missing(what):
    if os.environ.get("CI"): pytest.fail(f"{what} (CI must run the browser test: .ci/run installs it)")
    pytest.skip(what)


@pytest.fixture(scope="module")
def site():
    r = subprocess.run([sys.executable, str(ROOT/"scripts"/"build-docs")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"scripts/build-docs failed:\n{r.stderr[-6000:]}"
    assert (SITE/"index.html").is_file()
    return SITE


@pytest.fixture(scope="module")
def notebooks():
    "{page name: (notebook path, title)} for every notebook in nbs/, in nav order."
    from nbdev.config import get_config
    cfg = get_config(path=ROOT)
    out = {}
    for nb in bd.notebooks_in_order(cfg):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        title = next((m.group(1) for c in cells if c["cell_type"] == "markdown"
                      for m in [re.search(r"^#\s+(\S.*?)\s*$", "".join(c["source"]), re.M)] if m), nb.stem)
        out[bd.page_name(nb.relative_to(cfg.nbs_path).as_posix())] = (nb, title)
    return out


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


@pytest.fixture(scope="module")
def browser():
    try: from playwright.sync_api import sync_playwright
    except ImportError: _missing("playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists(): _missing(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    "A page that may load only from the local server: any other request is refused and fails the test."
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside = []
    def route(r):
        if r.request.url.startswith(server) or r.request.url.startswith(("data:", "blob:")): r.continue_()
        else: outside.append(r.request.url); r.abort()
    context.route("**/*", route)
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.base = server
    yield pg
    context.close()
    assert not outside, f"the site asked for resources outside 127.0.0.1: {sorted(set(outside))[:10]}"
    assert not errors, f"JavaScript errors: {errors[:5]}"


def _goto(pg, name):
    resp = pg.goto(pg.base + f"{name}.html", wait_until="load")
    assert resp is not None and resp.status == 200, f"{name}.html: HTTP {resp and resp.status}"
    return resp


def test_every_notebook_has_a_page_the_nav_reaches(page, notebooks):
    _goto(page, "index")
    page.screenshot(path=str(_shot("home.png")), full_page=True)
    nav_links = page.eval_on_selector_all("nav.md-nav--primary a.md-nav__link[href]", "els => els.map(e => e.getAttribute('href'))")
    nav_pages = [re.sub(r"(^\./|\.html(#.*)?$)", "", h) for h in nav_links if ".html" in h or h in ("./", ".")]
    assert len(notebooks) >= 2
    for name, (nb, title) in notebooks.items():
        assert name in nav_pages or (name == "index" and any(h in ("./", ".", "index.html") for h in nav_links)), \
            f"the nav has no link to {name}.html ({nb.name}); nav: {nav_links}"
    for name, (nb, title) in notebooks.items():
        if name == "index": continue
        _goto(page, "index")
        page.click(f'nav.md-nav--primary a.md-nav__link[href="{name}.html"]')
        page.wait_for_load_state("load")
        assert page.url.split("#")[0].endswith(f"/{name}.html"), f"the nav link to {name}.html went to {page.url}"
        h1 = page.inner_text("article h1")
        assert title in h1, f"{name}.html ({nb.name}) shows heading {h1!r}, expected {title!r}"
        assert page.locator("article").inner_text().strip() != h1.strip(), f"{name}.html has only its title"


def _exported_symbols():
    "{page name: [(symbol, anchor)]}: the top-level exported names (each module's __all__) that nbdev's index links."
    spec = importlib.util.spec_from_file_location("_modidx", ROOT/"dataeff"/"_modidx.py")
    modidx = importlib.util.module_from_spec(spec); spec.loader.exec_module(modidx)
    out = {}
    for mod, syms in modidx.d["syms"].items():
        src = ROOT/(mod.replace(".", "/") + ".py")
        if not src.exists(): continue
        tree = ast.parse(src.read_text(encoding="utf-8"))
        exported = next((ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                         and any(getattr(t, "id", None) == "__all__" for t in n.targets)), [])
        for full, (url, _) in syms.items():
            name = full[len(mod) + 1:]
            if name in exported:
                pg, _, anchor = url.partition("#")
                out.setdefault(pg.removesuffix(".html"), []).append((name, anchor))
    return out


def test_every_exported_symbol_has_its_section(page, notebooks):
    symbols = _exported_symbols()
    assert symbols, "dataeff/_modidx.py lists no exported symbols"
    assert "atomic_write" in {s for v in symbols.values() for s, _ in v}
    missing = []
    for name, syms in sorted(symbols.items()):
        assert name in notebooks, f"symbols {[s for s, _ in syms]} link to {name}.html, which no notebook makes"
        _goto(page, name)
        for sym, anchor in syms:
            sec = page.locator(f'article [id="{anchor}"]')
            if sec.count() == 0 or sym.split(".")[-1] not in sec.first.inner_text(): missing.append(f"{name}.html#{anchor} ({sym})")
    assert not missing, f"exported symbols without their section: {missing}"
    _goto(page, "core")
    page.screenshot(path=str(_shot("api-core.png")), full_page=True)


def _shown_figures(nb_path):
    "How many image outputs notebook `nb_path` shows (cells not hidden, included, outputs kept)."
    n = 0
    for c in json.loads(nb_path.read_text(encoding="utf-8"))["cells"]:
        src = "".join(c.get("source", []))
        if c["cell_type"] != "code" or re.search(r"^#\|\s*(hide\b|include:\s*false|output:\s*false|export)", src, re.M): continue
        n += sum(any(k.startswith("image/") for k in (o.get("data") or {})) for o in c.get("outputs", []))
    return n


def test_every_figure_loads(page, notebooks):
    total = 0
    for name, (nb, _) in notebooks.items():
        expected = _shown_figures(nb)
        _goto(page, name)
        imgs = page.eval_on_selector_all("article img", "els => els.map(e => [e.getAttribute('src'), e.complete && e.naturalWidth])")
        broken = [src for src, w in imgs if not w]
        assert not broken, f"{name}.html: images that did not load: {broken}"
        assert len(imgs) >= expected, f"{name}.html shows {len(imgs)} images, {nb.name} has {expected} figure outputs"
        total += len(imgs)
    if any(_shown_figures(nb) for nb, _ in notebooks.values()): assert total > 0


def test_math_renders(page, notebooks, site):
    with_math = [n for n in notebooks if 'class="arithmatex"' in (site/f"{n}.html").read_text(encoding="utf-8")]
    assert with_math, "no page has math; index.ipynb's formula for AUC' should be one"
    for name in with_math:
        _goto(page, name)
        page.wait_for_selector("article .arithmatex mjx-container", timeout=20_000)
        page.wait_for_function("() => [...document.querySelectorAll('article .arithmatex')].every(e => e.querySelector('mjx-container'))",
                               timeout=20_000)
        assert page.locator("mjx-merror").count() == 0, f"{name}.html: MathJax reports a TeX error"


def test_search_finds_a_symbol(page):
    _goto(page, "index")
    page.click("input.md-search__input")
    page.type("input.md-search__input", "atomic_write", delay=20)
    page.wait_for_selector(".md-search-result__item", timeout=20_000)
    hrefs = page.eval_on_selector_all(".md-search-result__item a", "els => els.map(e => e.getAttribute('href'))")
    assert any(re.search(r"core\.html(\?[^#]*)?#atomic_write$", h) for h in hrefs), f"search for atomic_write found {hrefs}"
    page.screenshot(path=str(_shot("search.png")))


def _shot(name):
    SHOTS.mkdir(exist_ok=True)
    return SHOTS/name
