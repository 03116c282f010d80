"""Benchmark-shaped files, written from nothing: the schema and the counts of the official
LongBench-Write and LongWrite-Ruler files and a judge template with the same placeholders and
scores, but none of their text. Tests read these; only checks of the official files themselves
(their SHA-256, their own prompts) need the real ones.

- `longbench_write.jsonl`: 120 prompts, the official subset counts (26 in [0, 500), 36 in
  [500, 2000), 31 in [2000, 4000), 27 in [4000, 20000]), 60 English and 60 Chinese, `type` among
  the official seven; `longbench_write_en.jsonl` its 60 English prompts;
- `longwrite_ruler.jsonl`: 8 instructions (4 English, 4 Chinese) x lengths 1000 ... 30000;
- `judge.txt`: one `$INST$`, one `$RESPONSE$` (inside <Response> tags), JSON scores of the six
  dimensions asked for.

Every prompt states its required length as its first number.
"""

from __future__ import annotations

import json
from pathlib import Path

TYPES = ("Literature and Creative Writing", "Academic and Monograph", "Popular Science", "Functional Writing",
         "News Report", "Community Forum", "Education and Training")
# (low, high, count, lengths cycled through): the last subset's upper end, 20000, is in it.
SUBSET_COUNTS = ((0, 500, 26, (100, 150, 200, 300, 400, 499)),
                 (500, 2000, 36, (500, 800, 1000, 1200, 1500, 1999)),
                 (2000, 4000, 31, (2000, 2500, 3000, 3500, 3999)),
                 (4000, 20001, 27, (4000, 5000, 8000, 10000, 20000)))
TOPICS_EN = ("city parks", "old bridges", "river trade", "night trains", "bee keeping", "tide pools",
             "paper mills", "glass making", "mountain huts", "lighthouses", "salt roads", "kite festivals")
TOPICS_ZH = ("城市公园", "古桥", "河运", "夜车", "养蜂", "潮池", "造纸", "玻璃", "山屋", "灯塔", "盐道", "风筝节")
RULER_LENGTHS = (1000, 2000, 5000, 10000, 20000, 30000)
RULER_INSTRUCTIONS = (  # (prompt template with {n}, type): four English, four Chinese
    ("Write a {n}-word travel guide to a coastal country", "社区论坛"),
    ("写一篇{n}字的海滨国家旅游指南", "社区论坛"),
    ("Write a {n}-word story about a young inventor", "文学与创作"),
    ("Write a {n}-word article on the history of the Roman Empire", "科普介绍"),
    ("写一篇关于城市交通对经济影响的{n}字论文", "学术与专著"),
    ("写一部讲述年轻发明家的{n}字小说", "文学与创作"),
    ("写一篇介绍古代帝国历史的{n}字文章", "科普介绍"),
    ("Write a {n}-word paper on the impact of city transport on the economy", "学术与专著"),
)
DIMENSIONS = ("Relevance", "Accuracy", "Coherence", "Clarity", "Breadth and Depth", "Reading Experience")
JUDGE_TEMPLATE = """You judge the quality of an AI assistant's answer to a writing request.

Score the answer from 1 (worst) to 5 (best) on each of six dimensions: {names}.

<User Request>

$INST$

</User Request>

<Response>

$RESPONSE$

</Response>

First write a short analysis, then answer in JSON only: {{"Analysis": ..., {fields}}}. Each score is one integer
from 1 to 5. Do not judge whether the answer has the requested length.
""".format(names=", ".join(DIMENSIONS), fields=", ".join(f'"{d}": ...' for d in DIMENSIONS))


def longbench_write_rows() -> list[dict]:
    """120 rows in LongBench-Write's schema ({"prompt", "type", "length"}), English and Chinese alternating."""
    rows = []
    for low, high, count, lengths in SUBSET_COUNTS:
        for k in range(count):
            n, i = lengths[k % len(lengths)], len(rows)
            kind = TYPES[i % len(TYPES)]
            if i % 2 == 0:
                prompt = f"Write a {n}-word {kind.lower()} piece about {TOPICS_EN[k % len(TOPICS_EN)]} (number {i})"
            else:
                prompt = f"写一篇{n}字的文章，主题是{TOPICS_ZH[k % len(TOPICS_ZH)]}（第{i}篇）"
            assert low <= n < high
            rows.append({"prompt": prompt, "type": kind, "length": n})
    return rows


def longwrite_ruler_rows() -> list[dict]:
    return [{"prompt": template.format(n=n), "type": kind, "length": n}
            for n in RULER_LENGTHS for template, kind in RULER_INSTRUCTIONS]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_benchmark_files(data_dir: Path) -> Path:
    """The four files under `data_dir` (created), the names `eval.<benchmark>.data_dir` reads."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    rows = longbench_write_rows()
    _write_jsonl(data_dir / "longbench_write.jsonl", rows)
    _write_jsonl(data_dir / "longbench_write_en.jsonl", [r for r in rows if r["prompt"].startswith("Write")])
    _write_jsonl(data_dir / "longwrite_ruler.jsonl", longwrite_ruler_rows())
    (data_dir / "judge.txt").write_text(JUDGE_TEMPLATE, encoding="utf-8")
    return data_dir


# --- WritingBench's length subset, in its schema (lw.eval.writingbench), none of its text -------------

WRITINGBENCH_QUERIES = (  # (query, domain1): English and Chinese, each stating a length
    ("Write a 120-word note about city parks for a newsletter.", "Education"),
    ("Write a story about night trains, between 200 and 300 words.", "Literature & Arts"),
    ("写一篇关于养蜂的短文，不少于150字。", "Literature & Arts"),
    ("Write a memo on paper mills of no less than 100 words.", "Finance & Business"),
    ("写一段介绍灯塔的文字，字数控制在80-120字之间。", "Education"),
    ("Write a poem about kites, about ten lines long.", "Literature & Arts"),
)
WRITINGBENCH_CRITERIA = ("Relevance", "Structure", "Style", "Detail", "Length")
WRITINGBENCH_PROMPT = '''# A judge prompt of the official prompt.py's shape (two string assignments, .strip()), not its text.
evaluate_system = """
You grade writing.
""".strip()

evaluate_prompt = """
Grade the Response to the Query on the one Criteria below from 1 to 10.
Answer only with JSON: {{"score": an integer from 1 to 10, "reason": "why"}}

** Criteria **
```{criteria}```

** Query **
```{query}```

** Response **
```{response}```
""".strip()
'''


def writingbench_rows() -> tuple[list[dict], list[dict]]:
    """(length_subset.jsonl rows, length_subset_C.jsonl rows): five criteria per query; the last
    criterion is the length one, and the second query lists two (as four official queries do)."""
    rows, c_rows = [], []
    for i, (query, domain) in enumerate(WRITINGBENCH_QUERIES):
        checklist = [{"name": f"{name}_{i}", "criteria_description": f"How well the response does {name.lower()}.",
                      **{band: f"{band} points." for band in ("1-2", "3-4", "5-6", "7-8", "9-10")}}
                     for name in WRITINGBENCH_CRITERIA]
        rows.append({"index": 100 + i, "domain1": domain, "domain2": "Notes", "query": query, "checklist": checklist})
        c_rows.append({**rows[-1], "checklist": checklist[-2:] if i == 1 else checklist[-1:]})
    return rows, c_rows


def write_writingbench_files(data_dir: Path) -> Path:
    """length_subset.jsonl, length_subset_C.jsonl and prompt.py under `data_dir` (created)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    rows, c_rows = writingbench_rows()
    _write_jsonl(data_dir / "length_subset.jsonl", rows)
    _write_jsonl(data_dir / "length_subset_C.jsonl", c_rows)
    (data_dir / "prompt.py").write_text(WRITINGBENCH_PROMPT, encoding="utf-8")
    return data_dir
