"""The repository is self-contained: no tracked file points readers at material outside it (the team's spec
files, a sibling folder, a path on a developer's machine)."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# paths outside the repository, and the file names of the specs the code was written from
OUTSIDE = re.compile(
    r"/work/|\.\./shared|shared/methods|shared/seeds|\banchors\.md\b"
    r"|\b(?:codetr|dataseg|scaledet|longtail_stepwise|odinw)\.md\b"
)


def test_no_tracked_file_names_a_path_outside_the_repository():
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    hits = []
    for name in files:
        path = REPO / name
        if name == "tests/foundation/test_self_contained.py" or not path.is_file() or path.stat().st_size > 2**20:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits.extend(f"{name}:{n}: {line.strip()[:100]}" for n, line in enumerate(text.splitlines(), 1)
                    if OUTSIDE.search(line))
    assert not hits, "\n".join(hits)


def test_the_pattern_catches_what_it_should():
    assert OUTSIDE.search("follows `/work/shared/methods/scaledet.md`")
    assert OUTSIDE.search("see anchors.md §9.1") and OUTSIDE.search("[S] codetr.md from the paper")
    assert not OUTSIDE.search("see DATASETS.md and projects/CoDETR/README.md")
