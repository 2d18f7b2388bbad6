"""Only one thing the declarative pyproject.toml cannot say: the published weights travel in the wheel.

``checkpoints/`` stays at the top of the repository (the source of truth); ``build_py`` copies the manifest and
every file it names into ``zoo/weights/published/`` of the build, so that an installed wheel has its weights
(``zoo.weights.store.checkpoint_dir()`` looks there). Everything else is in pyproject.toml.
"""

import json
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"  # the repository's, or the unpacked sdist's
PUBLISHED = ("zoo", "weights", "published")  # package data of zoo.weights


class BuildPyWithWeights(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # pip install -e: nothing to copy, the store reads the repository's checkpoints/
            return
        manifest = CHECKPOINTS / "manifest.json"
        if not manifest.is_file():  # a wheel without its weights would only fail later, on the user's machine
            raise FileNotFoundError(f"{manifest} is missing: the wheel must carry the published weights")
        entries = json.loads(manifest.read_text()).values()
        # the manifest and the files it names, not a glob: a stray local file in checkpoints/ is not shipped
        files = {"manifest.json"} | {e["file"] for e in entries}
        files |= {e["model_kwargs_file"]["file"] for e in entries if e.get("model_kwargs_file")}
        dest = Path(self.build_lib, *PUBLISHED)
        shutil.rmtree(dest, ignore_errors=True)  # build/lib is reused between builds: no weights left from the last
        dest.mkdir(parents=True)
        for name in sorted(files):  # a file the manifest names but that is missing fails the build here
            self.copy_file(str(CHECKPOINTS / name), str(dest / name))


setup(cmdclass={"build_py": BuildPyWithWeights})
