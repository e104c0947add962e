"""Packaging for dataeff: every field comes from settings.ini (nbdev's single source of truth)."""
from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

requirements = cfg.get("requirements", "").split()
requirements += [f'{r}; platform_system == "Linux"' for r in cfg.get("linux_requirements", "").split()]
licenses = {"apache2": ("Apache Software License 2.0", "OSI Approved :: Apache Software License")}
lic = licenses[cfg["license"]]

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license=lic[0],
    url=cfg["git_url"],
    keywords=cfg["keywords"].split(),
    classifiers=[f"License :: {lic[1]}", "Programming Language :: Python :: 3"],
    python_requires=f">={cfg['min_python']}",
    # kernels/ holds plain Triton source and no __init__.py, so that `import kernels` from the repository root finds the installed
    # distribution of that name; dataeff/_kernels is a link to it, so the kernels load as dataeff._kernels in a checkout and in the wheel
    packages=setuptools.find_packages(include=["dataeff", "dataeff.*"]) + ["dataeff._kernels"],
    package_data={"dataeff": ["budget_model.json", "paper_release.json", "paper_coslow.json"], "dataeff._kernels": ["README.md"]},
    include_package_data=True,
    install_requires=requirements,
    extras_require={"dev": cfg.get("dev_requirements", "").split()},
    entry_points={"console_scripts": cfg["console_scripts"].split(), "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    zip_safe=False,
)
