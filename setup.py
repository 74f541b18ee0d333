"""Packaging for regcache: `pip install .` then `python -m regcache` (or the `regcache` command)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def read_version() -> str:
    """`__version__` from regcache/__init__.py, read as text: importing it would need the deps."""
    text = (HERE / "regcache" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.MULTILINE)
    if match is None:
        raise RuntimeError("regcache/__init__.py has no __version__ = '...' line")
    return match.group(1)


def read_readme() -> str:
    readme = HERE / "README.md"
    return readme.read_text(encoding="utf-8") if readme.exists() else ""


setup(
    name="regcache",
    version=read_version(),
    description="A pull-through, multi-registry image cache for containerd",
    long_description=read_readme(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["regcache", "regcache.*"]),
    python_requires=">=3.11",
    install_requires=[
        # 6.5.6+ drops Authorization on cross-origin redirects.
        "tornado>=6.5.6",
        # Tornado's curl client: forward proxies and stalled-transfer aborts.
        "pycurl",
        "prometheus-client",
        "PyYAML",
        "configargparse",
        # The S3 tier (--bucket) and Amazon ECR tokens (GetAuthorizationToken).
        "aiobotocore>=2.19",
    ],
    entry_points={"console_scripts": ["regcache=regcache.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Operating System :: POSIX :: Linux",
        "Framework :: Tornado",
        "Topic :: System :: Software Distribution",
    ],
)
