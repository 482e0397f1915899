"""Run the command blocks that the READMEs mark for testing, exactly as written.

Marking a block: put the HTML comment (invisible on GitHub) on the line right before the fence::

    <!-- readme-test -->
    ```bash
    python -m integrations.ovseg.fixture runs/fixtures/ovseg
    ```

Options, space-separated after a colon: ``<!-- readme-test: needs=ovseg,openmask3d timeout=600 -->``

* ``needs=``: what the block needs besides the project: ``ovseg`` (Detectron2 installed and
  ``OVSEG_ROOT`` an OVSeg checkout) and/or ``openmask3d`` (``OPENMASK3D_ROOT`` a checkout and its
  feature-step packages). A block whose needs are missing is skipped with the reason; with
  ``OPENDAS_REQUIRE_INTEGRATIONS=1`` (CI) it fails instead.
* ``timeout=``: seconds for the block (default 600).

Fences ``bash``/``sh``/``shell`` run with ``bash -euo pipefail``; ``python`` blocks run with the test's
Python. Every ``README.md`` of the repository is scanned (the top-level one, ``integrations/*/``,
``docs/``, ...): the lead can mark blocks of the main README the same way.

Blocks that cannot run here (real data, a GPU, the network) stay unmarked; for them
:func:`test_unmarked_commands_use_existing_flags` checks that every ``--flag`` a command passes to one
of the project's scripts (``python eval/*.py``, ``python -m integrations...`` / ``opendas_encoder...``)
exists in that script's ``--help``, so renaming a flag without updating the README fails too.

How blocks run: in document order, one test per block, in a per-README working folder whose
entries are symlinks to the repository's top-level entries (so ``python eval/run_2d.py`` and
``python -m integrations...`` work as from the repository root) while files the commands write
(``runs/...``) land in that temporary folder. Blocks of one README share that folder, so a later
block may use what an earlier one wrote; environment variables do not carry over between blocks.
``python`` and the project's console scripts are those of the interpreter running the tests.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = re.compile(r"^<!--\s*readme-test(?::(?P<opts>[^>]*?))?\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>[A-Za-z]*)\s*$")
LANGS = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}
KNOWN_NEEDS = ("ovseg", "openmask3d")
#: top-level entries not linked into the working folder (outputs of earlier runs, caches)
NOT_LINKED = {"runs", "outputs", "build", ".git", ".pytest_cache", "__pycache__"}


@dataclass
class Block:
    readme: str  # path relative to the repository
    line: int  # line of the opening fence (1-based)
    lang: str
    code: str
    needs: Tuple[str, ...] = ()
    timeout: int = 600
    errors: List[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.readme}:{self.line}"


def parse_marker(opts: str, where: str) -> Tuple[Tuple[str, ...], int, List[str]]:
    needs, timeout, errors = (), 600, []
    for token in shlex.split(opts or ""):
        key, sep, value = token.partition("=")
        if key == "needs" and sep:
            needs = tuple(v for v in value.split(",") if v)
            errors += [f"{where}: unknown need {n!r} (known: {', '.join(KNOWN_NEEDS)})" for n in needs if n not in KNOWN_NEEDS]
        elif key == "timeout" and sep and value.isdigit():
            timeout = int(value)
        else:
            errors.append(f"{where}: unknown readme-test option {token!r}")
    return needs, timeout, errors


def extract_blocks(path: str, rel: str) -> List[Block]:
    """The marked blocks of one Markdown file, in order; a marker not followed by a fence is an error."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = MARKER.match(lines[i].strip())
        if not m:
            i += 1
            continue
        where = f"{rel}:{i + 1}"
        needs, timeout, errors = parse_marker(m.group("opts"), where)
        fence = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if not fence or fence.group("lang") not in LANGS:
            blocks.append(Block(rel, i + 2, "", "", errors=errors + [f"{where}: a readme-test marker must be "
                                                                    "followed by a ```bash or ```python fence"]))
            i += 1
            continue
        end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            blocks.append(Block(rel, i + 2, "", "", errors=errors + [f"{where}: unterminated code block"]))
            break
        blocks.append(Block(rel, i + 2, LANGS[fence.group("lang")], "\n".join(lines[i + 2:end]) + "\n",
                            needs, timeout, errors))
        i = end + 1
    return blocks


def readme_files() -> List[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in NOT_LINKED
                             and d not in ("node_modules", "site-packages"))
        if "README.md" in filenames:
            found.append(os.path.relpath(os.path.join(dirpath, "README.md"), ROOT))
    return sorted(found, key=lambda p: (p.count(os.sep), p))


BLOCKS = [b for rel in readme_files() for b in extract_blocks(os.path.join(ROOT, rel), rel)]


def missing_needs(needs) -> List[str]:
    missing = []
    if "ovseg" in needs:
        root = os.environ.get("OVSEG_ROOT", "")
        if not os.path.isfile(os.path.join(root, "open_vocab_seg", "ovseg_model.py")):
            missing.append("OVSEG_ROOT is not an OVSeg checkout")
        if importlib.util.find_spec("detectron2") is None:
            missing.append("Detectron2 is not installed")
    if "openmask3d" in needs:
        root = os.environ.get("OPENMASK3D_ROOT", "")
        if not os.path.isdir(os.path.join(root, "openmask3d")):
            missing.append("OPENMASK3D_ROOT is not an OpenMask3D checkout")
        missing += [f"{m} is not installed" for m in ("hydra", "omegaconf", "open3d", "imageio")
                    if importlib.util.find_spec(m) is None]
    return missing


_VIEWS: Dict[str, str] = {}


def working_folder(readme: str, tmp_path_factory) -> str:
    """One folder per README: symlinks to the repository's top-level entries, outputs stay here."""
    if readme not in _VIEWS:
        view = str(tmp_path_factory.mktemp("readme_" + re.sub(r"\W+", "_", readme)))
        for entry in os.listdir(ROOT):
            if entry not in NOT_LINKED and not entry.endswith(".egg-info"):
                os.symlink(os.path.join(ROOT, entry), os.path.join(view, entry))
        _VIEWS[readme] = view
    return _VIEWS[readme]


def all_fenced_blocks(path: str) -> List[Tuple[int, str, str]]:
    """(line, language, code) of every fenced block of a Markdown file."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m and lines[i].strip() != "```":
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), len(lines))
            out.append((i + 1, m.group("lang"), "\n".join(lines[i + 1:end])))
            i = end + 1
        else:
            i += 1
    return out


def project_commands(code: str) -> List[Tuple[List[str], List[str]]]:
    """(the command that runs a project script, the --flags it passes) for each such shell command."""
    joined = re.sub(r"\\\n\s*", " ", code)
    found = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0]
        for part in re.split(r"&&|;|\|\|", line):
            try:
                tokens = shlex.split(part)
            except ValueError:
                continue
            if "python" not in tokens:
                continue
            k = tokens.index("python")
            rest = tokens[k + 1:]
            if rest[:1] == ["-m"] and len(rest) > 1 and rest[1].split(".")[0] in ("integrations", "opendas_encoder"):
                cmd, args = ["-m", rest[1]], rest[2:]
            elif rest and rest[0].startswith("eval/") and rest[0].endswith(".py"):
                cmd, args = [rest[0]], rest[1:]
            else:
                continue
            args = [a.lstrip("[") for a in args]  # optional flags written as [--flag VALUE]
            found.append((cmd, sorted({a.split("=", 1)[0] for a in args if a.startswith("--")})))
    return found


def unmarked_usages() -> Dict[Tuple[str, ...], Dict[str, List[str]]]:
    """script command -> {flag: [README:line, ...]} over the unmarked shell blocks of every README."""
    usages: Dict[Tuple[str, ...], Dict[str, List[str]]] = {}
    marked = {(b.readme, b.line) for b in BLOCKS}
    for rel in readme_files():
        for line, lang, code in all_fenced_blocks(os.path.join(ROOT, rel)):
            if LANGS.get(lang) != "bash" or (rel, line) in marked:
                continue
            for cmd, flags in project_commands(code):
                per_flag = usages.setdefault(tuple(cmd), {})
                for flag in flags:
                    per_flag.setdefault(flag, []).append(f"{rel}:{line}")
    return usages


UNMARKED = unmarked_usages()


@pytest.mark.slow
@pytest.mark.parametrize("cmd", sorted(UNMARKED), ids=lambda c: " ".join(c))
def test_unmarked_commands_use_existing_flags(cmd):
    r = subprocess.run([sys.executable, *cmd, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        reason = f"`python {' '.join(cmd)} --help` failed here: {r.stderr.strip().splitlines()[-1:]}"
        if os.environ.get("OPENDAS_REQUIRE_INTEGRATIONS"):
            pytest.fail(reason)
        pytest.skip(reason)
    unknown = {f: where for f, where in UNMARKED[cmd].items()
               if not re.search(rf"(^|[\s\[,]){re.escape(f)}\b", r.stdout)}
    assert not unknown, f"`python {' '.join(cmd)}` has no such flag(s) (see its --help): {unknown}"


def test_readme_markers_are_well_formed():
    errors = [e for b in BLOCKS for e in b.errors]
    assert not errors, "\n".join(errors)


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in BLOCKS if not b.errors], ids=lambda b: b.id)
def test_readme_block_runs_as_written(block, tmp_path_factory):
    missing = missing_needs(block.needs)
    if missing:
        reason = f"{block.id} needs {', '.join(block.needs)}: {'; '.join(missing)}"
        if os.environ.get("OPENDAS_REQUIRE_INTEGRATIONS"):
            pytest.fail(reason + " (OPENDAS_REQUIRE_INTEGRATIONS is set)")
        pytest.skip(reason)
    cwd = working_folder(block.readme, tmp_path_factory)
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = ["bash", "-euo", "pipefail", "-c", block.code] if block.lang == "bash" else [sys.executable, "-c", block.code]
    try:
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=block.timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        pytest.fail(f"{block.id}: still running after {block.timeout} s\n{block.code}\n{out[-2000:]}")
    assert r.returncode == 0, (f"{block.id} failed (exit {r.returncode}):\n{block.code}\n--- stdout\n"
                               f"{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}")
