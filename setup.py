"""Package layout that pyproject.toml cannot say on its own: every ``hemocount*`` package found, plus the
repository's ``weights/`` folder installed as ``hemocount/weights/`` (manifest and shipped ONNX files; which
files, in pyproject.toml's package-data), where :func:`hemocount.weights.weights_dir` finds it in a wheel.

A fixed list in pyproject.toml would need editing for every new subpackage; a forgotten one would only show
in an installed wheel.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["hemocount", "hemocount.*"]), "hemocount.weights"],
    package_dir={"hemocount.weights": "weights"},
)
