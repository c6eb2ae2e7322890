"""Every C loop's ctypes signature against its C prototype (fedrec.native): ctypes does not check the
count, so a Python argument list one entry short passes a 64-bit pointer as a 32-bit int, silently,
and the loop reads or writes through the truncated address. The sources are preprocessed with the
system's C compiler (their macros expanded) and each exported ``fedrec_*`` function's parameters are
counted and typed (pointer, integer, floating point), then compared with what ``native()`` declares."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess

import pytest

from fedrec.experiments.preload_native import LOOPS

CC = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler: the C loops are not built here")

DEFINITION = re.compile(r"\b(fedrec_\w+)\s*\(([^(){};]*)\)\s*\{")


def kind_of_c(param: str) -> str:
    if "*" in param:
        return "pointer"
    if re.search(r"\b(float|double)\b", param):
        return "real"
    return "integer"


def kind_of_ctypes(t) -> str:
    if t is ctypes.c_void_p or (isinstance(t, type) and issubclass(t, ctypes._Pointer)):
        return "pointer"
    if t in (ctypes.c_float, ctypes.c_double):
        return "real"
    return "integer"


def prototypes(source: str) -> dict[str, list[str]]:
    out = subprocess.run(
        [CC, "-E", "-P", "-x", "c", "-"], input=source, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    found = {}
    for name, params in DEFINITION.findall(" ".join(out.split())):
        parts = [p.strip() for p in params.split(",") if p.strip() and p.strip() != "void"]
        found[name] = [kind_of_c(p) for p in parts]
    return found


@pytest.mark.parametrize("module", LOOPS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_each_c_function_is_declared_with_its_prototypes_arguments(module) -> None:
    lib = module.native()
    if lib is None:
        pytest.skip("the C loop did not build here")
    protos = prototypes(module._C)
    declared = {name: fn for name, fn in vars(lib).items() if name.startswith("fedrec_")}
    assert declared, "native() declared no function"
    for name, fn in declared.items():
        assert name in protos, f"{name} is declared but not defined in the source"
        got = [kind_of_ctypes(t) for t in fn.argtypes]
        assert got == protos[name], f"{name}: ctypes {got} against C {protos[name]}"
