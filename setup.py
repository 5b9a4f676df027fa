"""
InkFlow's packaging.  `pip install .` installs the `inkflow` package, the page
(`static/`, shipped inside the package as `inkflow/static`), the twistd plugin
(`twisted/plugins/inkflow_plugin.py`) and the `inkflow` console script.
"""

import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def static_packages():
    """
    Every folder under static/, as a data package under inkflow.static, so
    the page ships whole (subfolders included) in a non-editable install.
    """
    found = {}
    for folder, dirs, _files in os.walk(os.path.join(HERE, "static")):
        # vendor/ holds third-party files fetched at set-up time (scripts/install-n8n-chat.sh)
        # under licences that do not allow InkFlow to redistribute them.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("node_modules", "vendor"))
        rel = os.path.relpath(folder, HERE)
        name = "inkflow." + rel.replace(os.sep, ".")
        found[name] = rel
    return found


STATIC = static_packages()

setup(
    name="inkflow",
    version="0.1.0",
    description="A sturdy Twisted front for n8n: Hebrew RTL page, chat, uploads, retries, health",
    python_requires=">=3.11",
    packages=[
        "inkflow",
        "inkflow.settings",
        "inkflow.server",
        "inkflow.web",
        "inkflow.web.websocket",
        "inkflow.n8n",
        "inkflow.tools",
        "inkflow.state",
        "twisted.plugins",
        *STATIC,
    ],
    package_dir={name: path for name, path in STATIC.items()},
    package_data={name: ["*"] for name in STATIC},
    include_package_data=False,
    # The docs, under <prefix>/share/doc/inkflow: deploy/inkflow.service's Documentation= points there.
    data_files=[
        (
            "share/doc/inkflow",
            [
                "README.md",
                *sorted(f"docs/{name}" for name in os.listdir(os.path.join(HERE, "docs")) if name.endswith(".md")),
            ],
        )
    ],
    # Compatible ranges: from the release tested (the lock files) up to the next major one, so an
    # install as a package takes security fixes.  The exact versions tested are in requirements.lock
    # and requirements-test.lock, which `make install` / `make install-test` install from (`make lock`
    # rewrites them after a change here).
    install_requires=[
        # Exact: InkFlow uses private parts of twisted.web (server and client side),
        # every one listed, with the reason and a test, in inkflow/web/twisted_hooks.py;
        # an upgrade is a change that runs tests/unit/test_twisted_hooks.py.
        "twisted[tls]==26.10.0",
        "wsproto>=1.3.2,<2",  # twisted.web.websocket (the /chat relay)
        "klein>=24.8.0,<26",
        "treq>=26.7.0,<28",
        "psutil>=7.2.2,<8",
        "python-multipart>=0.0.34,<0.1",  # 0.0.x: any release may break
        "filetype>=1.2.0,<2",
        "prometheus-client>=0.26.0,<1",
        "rich>=15.0.0,<16",
        "txredisapi>=1.6.0,<2",  # --redis (inkflow.state.redis)
    ],
    extras_require={
        "test": [
            "pytest>=9.2.0,<10",
            "pytest-twisted>=1.14.3,<2",
            "hypothesis>=6.170.15,<7",
            "mypy>=2.4.1,<3",
            "ruff>=0.17.6,<0.18",  # 0.x: each minor release may add lint rules
            "types-psutil>=7.2.2.20261111,<8",
            "mypy-zope>=1.0.17,<2",
            "playwright>=1.65.2,<2",
        ],
    },
    entry_points={"console_scripts": ["inkflow = inkflow.tools.cli:main"]},
    zip_safe=False,
)
