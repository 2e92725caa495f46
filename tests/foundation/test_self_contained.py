"""The repository is self-contained: no tracked file points readers at material outside it (the team's spec
files, a sibling folder, a path on a developer's machine)."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# paths outside the repository, and the file names of the specs the code was written from
# (assembled from parts, so that this file does not name them itself)
_WORKSPACE, _SHARED = "/" + "work/", "shared"
_SPEC_NAMES = ("codetr", "dataseg", "scaledet", "longtail_stepwise", "odinw")
OUTSIDE = re.compile(
    rf"{_WORKSPACE}|\.\./{_SHARED}|{_SHARED}/methods|{_SHARED}/seeds|\banchors\.md\b"
    rf"|\b(?:{'|'.join(_SPEC_NAMES)})\.md\b"
)


def test_no_tracked_file_names_a_path_outside_the_repository():
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    hits = []
    for name in files:
        path = REPO / name
        if not path.is_file() or path.stat().st_size > 2**20:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits.extend(f"{name}:{n}: {line.strip()[:100]}" for n, line in enumerate(text.splitlines(), 1)
                    if OUTSIDE.search(line))
    assert not hits, "\n".join(hits)


def test_the_pattern_catches_what_it_should():
    assert OUTSIDE.search(f"follows `{_WORKSPACE}{_SHARED}/methods/{_SPEC_NAMES[2]}.md`")
    assert OUTSIDE.search("see " + "anchors" + ".md §9.1") and OUTSIDE.search(f"[S] {_SPEC_NAMES[0]}.md from the paper")
    assert not OUTSIDE.search("see DATASETS.md and projects/CoDETR/README.md")
