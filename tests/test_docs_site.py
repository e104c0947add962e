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
        fm = re.search(r"^title:\s*['\"]?(.*?)['\"]?\s*$", "".join(cells[0]["source"]), re.M) if cells and cells[0]["cell_type"] == "raw" else None
        title = fm.group(1) if fm else next((m.group(1) for c in cells if c["cell_type"] == "markdown"
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
    for name, (nb, title) in notebooks.items():   # walk the nav from page to page
        if name == "index": continue
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


# ---------------------------------------------------------------- the Markdown conversion, without a browser

def _cfg():
    from types import SimpleNamespace
    return SimpleNamespace(doc_host="https://dataeff.github.io", doc_baseurl="/dataeff")


def _code(src, *outputs): return {"cell_type": "code", "source": src, "metadata": {}, "outputs": list(outputs)}
def _plain(text): return {"output_type": "execute_result", "data": {"text/plain": text}, "metadata": {}}


PNG_1PX = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
PAGES = {"00_core.ipynb": "core", "01_curves.ipynb": "curves", "index.ipynb": "index"}


def _sample_nb():
    return {"cells": [
        {"cell_type": "raw", "metadata": {}, "source": "---\ntitle: Curves\ndescription: 'The `AUC` metric'\n---\n"},
        {"cell_type": "markdown", "metadata": {}, "source": "## The metric\n\nSee [core](00_core.ipynb#atomic_write), "
         "[the API](https://dataeff.github.io/dataeff/core.html#read_json) and $x^p$."},
        _code("#| echo: false\nhidden_source()", _plain("shown output")),
        _code("#| include: false\nnot_included()", _plain("not included output")),
        _code("#| output: false\nshown_source()", _plain("suppressed output")),
        _code("#| fig-cap: A curve\nplot()", {"output_type": "display_data", "data": {"image/png": PNG_1PX, "text/plain": "<Figure>"}, "metadata": {}}),
        _code("#| echo: false\n#| output: asis\nshow_doc(f)", {"output_type": "execute_result", "metadata": {}, "data": {
            "text/markdown": "---\n\n[source](https://github.com/x/y.py#L1){target=\"_blank\"}\n\n### power_curve\n\n```python\ndef power_curve(x, p):\n```",
            "text/plain": "def power_curve"}}),
        _code("df", {"output_type": "execute_result", "metadata": {}, "data": {"text/html": "<table class=\"dataframe\"><tr><td>1</td></tr></table>", "text/plain": "df"}}),
        _code("print(1)", {"output_type": "stream", "name": "stderr", "text": "10%|#  |\r100%|###|\n"}),
    ]}


def test_page_honours_cell_options_and_rewrites_links(tmp_path):
    page = bd.Page("01_curves.ipynb", _sample_nb(), _cfg(), PAGES, "site", "curves_files")
    md = page.render()
    assert md.startswith("---\ntitle: Curves\ndescription: The `AUC` metric\n---\n\n# Curves\n")
    assert "shown output" in md and "hidden_source" not in md
    assert "not_included" not in md and "not included output" not in md
    assert "shown_source()" in md and "suppressed output" not in md
    assert "![A curve](curves_files/figure-1.png)" in md and list(page.files) == ["curves_files/figure-1.png"]
    assert "[core](core.md#atomic_write)" in md and "[the API](core.md#read_json)" in md
    assert "## The metric {#the-metric}" in md and "### power_curve {#power_curve}" in md
    assert '<table class="dataframe">' in md and "```python\ndef power_curve(x, p):\n```" in md
    assert "100%|###|" in md and "10%|#" not in md   # a progress bar shows as its last state


def test_readme_mode_links_to_the_doc_site(tmp_path):
    md = bd.Page("01_curves.ipynb", _sample_nb(), _cfg(), PAGES, "readme", "curves_files").render()
    assert md.startswith("# Curves\n\n> The `AUC` metric\n\n")
    assert "[core](https://dataeff.github.io/dataeff/core.html#atomic_write)" in md
    assert "{#" not in md and '{target="_blank"}' not in md and "[source](https://github.com/x/y.py#L1)\n" in md


def test_nbdev_processing_keeps_title_prose_hides_cells_and_runs_no_notebook_code(tmp_path):
    import nbformat
    marker = tmp_path/"executed"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Tiny\n\n> What it is for.\n\nProse that nbdev would drop with the title."),
                nbformat.v4.new_code_cell("#| export\ndef twice(x):\n    \"Double `x`.\"\n    return 2*x"),
                nbformat.v4.new_code_cell("#| hide\nhidden_helper = 1"),
                nbformat.v4.new_code_cell(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')")]
    src, dst = tmp_path/"tiny.ipynb", tmp_path/"tiny_proc.ipynb"
    nbformat.write(nb, src)
    assert bd._process_notebook(str(src), str(dst)) is None
    md = bd.Page("tiny.ipynb", json.loads(dst.read_text()), _cfg(), {"tiny.ipynb": "tiny"}, "site", "tiny_files").render()
    assert "title: Tiny" in md and "description: What it is for." in md
    assert "Prose that nbdev would drop with the title." in md
    assert "### twice {#twice}" in md and "*Double `x`.*" in md   # nbdev added and ran show_doc
    assert "hidden_helper" not in md and "pathlib.Path(" in md
    assert not marker.exists(), "the docs build executed a notebook cell that merely contains an import"


def test_link_check_reports_missing_files_and_anchors(tmp_path):
    (tmp_path/"a.html").write_text('<h2 id="here">x</h2><a href="#here">ok</a><a href="b.html#gone">x</a>'
                                   '<a href="c.html">x</a><img src="a_files/f.png"><a href="/base/a.html#here">ok</a>'
                                   '<a href="https://example.org/x">external</a>')
    (tmp_path/"b.html").write_text('<h2 id="there">x</h2>')
    with pytest.raises(bd.BuildError) as e: bd.check_site_links(tmp_path, "/base/")
    msg = str(e.value)
    assert "b.html#gone names no element id" in msg and "broken link c.html" in msg and "broken link a_files/f.png" in msg
    assert "#here" not in msg and "example.org" not in msg
    (tmp_path/"a.html").write_text('<h2 id="here">x</h2><a href="b.html#there">ok</a><a href="/base/b.html">ok</a>')
    bd.check_site_links(tmp_path, "/base/")
