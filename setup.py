"""Build the irisrep._core extension (Cython, assembled from topic .pxi files)."""

import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

here = os.path.dirname(os.path.abspath(__file__))
debug = os.environ.get("IRISREP_DEBUG", "0") == "1"

# Every header and topic file is a build dependency: editing one rebuilds _core.
depends = glob.glob("include/**/*.h", recursive=True) + glob.glob("src/irisrep/*.pxi") + glob.glob(
    "src/irisrep/*.pxd"
)

ext = Extension(
    "irisrep._core",
    sources=["src/irisrep/_core.pyx"],
    include_dirs=["include", "include/third_party/xxhash", numpy.get_include()],
    depends=depends,
    extra_compile_args=["-O3", "-std=c11"] + (["-UNDEBUG", "-O0", "-g"] if debug else ["-DNDEBUG"]),
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(
    ext_modules=cythonize(
        [ext],
        language_level=3,
        compile_time_env={"IRISREP_DEBUG": debug},
        compiler_directives={
            "boundscheck": debug,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": debug,
            "embedsignature": True,
        },
    ),
)
