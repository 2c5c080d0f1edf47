"""Document dedup (kyx/data/dedup.py) on planted exact and near duplicates."""
import os

from kyx import data
from kyx.data import dedup


def variant(text, k):
    """``text`` with a few lines edited: a near duplicate."""
    lines = text.splitlines()
    for i in range(k):
        lines[(i * 37) % len(lines)] += f"  # edited {i}"
    return "\n".join(lines)


def test_planted_duplicates_are_found_and_distinct_files_kept(tmp_path, stdlib_copy, make_cfg):
    root = stdlib_copy(str(tmp_path / "texts"))
    with open(os.path.join(root, "textwrap.py")) as f:
        text = f.read()
    with open(os.path.join(root, "zz_exact.py"), "w") as f:  # same after normalisation
        f.write("  " + text.upper().replace("\n", " \n"))
    with open(os.path.join(root, "zz_near.py"), "w") as f:
        f.write(variant(text, 3))
    texts = [open(os.path.join(root, n)).read() for n in sorted(os.listdir(root))]
    names = sorted(os.listdir(root))
    dropped = dedup.duplicates(texts, dedup.default_config())
    assert {names[i]: (kind, names[j]) for i, (kind, j) in dropped.items()} == {
        "zz_exact.py": ("exact", "textwrap.py"), "zz_near.py": ("near", "textwrap.py")}
    # a copy with every third line rewritten shares well under 80% of its shingles
    rewritten = "\n".join(line[::-1] if i % 3 == 0 else line
                          for i, line in enumerate(text.splitlines()))
    assert not dedup.duplicates([text, rewritten], dedup.default_config())
    # at corpus build time, with counts in the corpus stats
    cfg = make_cfg(tmp_path / "data", name="text_files", path=root)
    corpus = data.load_corpus(cfg)
    assert corpus.stats["dedup_exact"] == 1 and corpus.stats["dedup_near"] == 1
    assert corpus.stats["files_kept"] == len(names) - 2
    cfg.dedup.near = False
    assert data.load_corpus(cfg).stats["dedup_near"] == 0
