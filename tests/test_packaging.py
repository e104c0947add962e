"""The checkout as Python sees it: nothing at the repository root shadows an installed distribution, and the Triton kernels
load as `dataeff._kernels` from the checkout, from an editable install and from a built wheel."""
import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.machinery import all_suffixes
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def importable_names(root) -> dict[str, Path]:
    "What `import NAME` finds in `root` when `root` is first on sys.path, ahead of any installed distribution: modules and regular packages."
    names = {}
    for path in Path(root).iterdir():
        if path.is_dir() and (path/"__init__.py").is_file(): names[path.name] = path
        elif path.is_file():
            suffix = next((s for s in all_suffixes() if path.name.endswith(s)), None)  # .py, .pyc, .cpython-311-x86_64-linux-gnu.so, ...
            if suffix: names[path.name[:-len(suffix)]] = path
    return {name: path for name, path in names.items() if name.isidentifier()}


def collisions(root, distributions) -> list[str]:
    "Each name importable at `root` that a distribution in `distributions` ({import name: [distribution, ...]}) other than this project provides."
    return sorted(f"{path.name} shadows {name!r} of {', '.join(sorted(set(distributions[name])))}"
                  for name, path in importable_names(root).items() if set(distributions.get(name, ())) - {"dataeff"})


def test_no_root_name_shadows_an_installed_distribution():
    assert collisions(REPO, importlib.metadata.packages_distributions()) == []


def test_the_check_finds_a_planted_package_module_and_extension(tmp_path):
    (tmp_path/"kernels").mkdir(); (tmp_path/"kernels"/"__init__.py").write_text("")
    (tmp_path/"numpy.py").write_text("")
    (tmp_path/"yaml.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    (tmp_path/"scripts").mkdir()  # no __init__.py: any installed regular package of that name is found first
    (tmp_path/"dataeff").mkdir(); (tmp_path/"dataeff"/"__init__.py").write_text("")  # the project itself
    owners = {"kernels": ["kernels"], "numpy": ["numpy"], "yaml": ["PyYAML"], "scripts": ["some-dist"], "dataeff": ["dataeff"]}
    assert collisions(tmp_path, owners) == ["kernels shadows 'kernels' of kernels", "numpy.py shadows 'numpy' of numpy",
                                            "yaml.cpython-311-x86_64-linux-gnu.so shadows 'yaml' of PyYAML"]


def run_python(code, cwd, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True,
                          env={**os.environ, **env}).stdout.strip()


def test_from_the_root_every_distribution_name_resolves_to_the_installed_one():
    "What a process started at the root imports (python -c, pytest, the notebooks' kernels) for every name the root also holds, namespace folders too."
    code = ("import importlib.metadata, importlib.util, os\n"
            "owners = importlib.metadata.packages_distributions()\n"
            "for name in sorted(os.listdir('.')):\n"
            "    name = name.removesuffix('.py')\n"
            "    if name.isidentifier() and set(owners.get(name, ())) - {'dataeff'}:\n"
            "        spec = importlib.util.find_spec(name)\n"
            "        print(name, *(spec.submodule_search_locations or [spec.origin]))\n")
    found = [line.split() for line in run_python(code, REPO).splitlines()]
    inside = [(name, place) for name, *places in found for place in places if Path(place).resolve().is_relative_to(REPO)]
    assert inside == []
    if "kernels" in importlib.metadata.packages_distributions():  # Hugging Face's kernels, which transformers imports
        assert "kernels" in [name for name, *_ in found]


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_the_kernels_load_as_dataeff_kernels(where, tmp_path):
    "From the checkout (the root on sys.path) and from any folder through the installed package, under Triton's CPU interpreter."
    code = "import dataeff._kernels.pairwise_gram as g; print(g.INTERPRET, g.__file__)"
    interpret, file = run_python(code, REPO if where == "root" else tmp_path, TRITON_INTERPRET="1").split()
    assert interpret == "True" and Path(file).resolve() == REPO/"kernels"/"pairwise_gram.py"


def test_the_wheel_ships_the_kernels_inside_the_package(tmp_path):
    "Built from a copy of the checkout's files (setuptools builds in the source folder), installed into a folder of its own."
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source, copy = REPO/name, tmp_path/"src"/name
        if not source.exists() and not source.is_symlink(): continue  # deleted in the working tree
        copy.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink(): copy.symlink_to(os.readlink(source))
        else: shutil.copy2(source, copy)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path/"dist"), str(tmp_path/"src")],
                   cwd=tmp_path, check=True, capture_output=True)
    wheel = next((tmp_path/"dist").glob("dataeff-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"dataeff/_kernels/pairwise_gram.py", "dataeff/_kernels/README.md"} <= set(names)
    assert {n.split("/")[0] for n in names} == {"dataeff", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path/"site"), str(wheel)], check=True, capture_output=True)
    code = "import dataeff, dataeff._kernels.pairwise_gram as g; print(g.INTERPRET, dataeff.__file__, g.__file__)"
    interpret, *files = run_python(code, tmp_path, TRITON_INTERPRET="1", PYTHONPATH=str(tmp_path/"site")).split()
    assert interpret == "True" and all(Path(f).is_relative_to(tmp_path/"site") for f in files)
