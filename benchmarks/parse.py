"""Answer-parser cost on fuzzed and adversarial answers: is it linear in the answer's length?

Builds ``--n`` answers (default 10,000): well-formed answers and prose, fuzzed strings of answer
fragments (braces, quotes, keys, label words, negations) with occasional long runs, and
adversarial answers of up to 20,000 characters (a ``{`` followed by long runs of spaces: the
shapes that once backtracked for over 20 s). Each is parsed once per mode; the lines report the
total time, the slowest answer, and the worst microseconds per character over answers of at least
``--min-chars`` parsed characters (answers are read up to ``MAX_ANSWER_CHARS``; shorter ones are
dominated by per-call overhead). Each answer is timed ``--repeat`` times and the best kept, with
the garbage collector off while timing (as `timeit` does).
It also counts answers where the default returned a label the strict parse would not (must be 0)
and where lenient contradicted strict (another label; must be 0).

    python benchmarks/parse.py
    python benchmarks/parse.py --n 2000 --seed 1
"""
from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vea_bench.labels import MIKELS8  # noqa: E402
from vea_bench.models.parse import MAX_ANSWER_CHARS, PARSE_MODES, parse_answer  # noqa: E402

PIECES = ["{", "}", "'", '"', ":", "=", ",", " ", "\n", "\t", "emotion", "'emotion'", "{'emotion':", "'}", "awe",
          "sad", "fear", "not", "no", "content", "wonder", "[", "]", "```", "\u2018", "\u201d", "and", "or", "!!!",
          "the", "The image shows", "I think", "isn't"]


def adversarial(n_chars: int) -> list[str]:
    """Shapes that make backtracking regexes or naive rescans quadratic or worse."""
    k = max(n_chars, 20)
    return [
        "{" + " " * (k - 1),
        "{ " + " " * (k // 2) + ":",
        "{'emotion': '" * (k // 13),
        "{'emotion': 'a" * (k // 14) + "'}",
        "{'emotion': 'a\n" * (k // 15) + "{'emotion': 'awe'}",
        "{ " + "a " * (k // 2) + ":",
        "{" + " -" * (k // 2) + ": x",
        "!" * k + "a",
        "{'" + " " * k + "'}",
        "not " * (k // 4) + "sad",
        "{" * k,
        "}" * k,
        ("{'emotion': " + "'x', " * (k // 6)),
    ]


def answers(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    for size in (152, 1000, 5000, 20002):
        out += adversarial(size)
    labels = list(MIKELS8.labels)
    while len(out) < n:
        r = rng.random()
        if r < 0.2:
            out.append(f"{{'emotion': '{rng.choice(labels)}'}}")
        elif r < 0.3:
            out.append(f"The image conveys {rng.choice(['', 'no ', 'not much '])}{rng.choice(labels)}.")
        else:
            k = rng.randint(0, 60)
            out.append("".join(rng.choice(PIECES) * (rng.randint(50, 2000) if rng.random() < 0.03 else 1)
                               for _ in range(k)))
    return out[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="answers to parse")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-chars", type=int, default=1000, help="µs/char is reported over answers this long")
    ap.add_argument("--repeat", type=int, default=5, help="time each answer this many times, keep the best")
    args = ap.parse_args()
    texts = answers(args.n, args.seed)
    long = sum(len(t) >= args.min_chars for t in texts)
    print(f"{len(texts)} answers, {sum(map(len, texts)):,} characters, {long} of >= {args.min_chars} characters, "
          f"longest {max(map(len, texts)):,} (parsed up to {MAX_ANSWER_CHARS:,})")
    results = {}
    gc.disable()  # as timeit does: a collection of the 22 MB of answers is not the parser's cost
    for mode in PARSE_MODES:
        worst_per_char, worst_s, worst_len, total = 0.0, 0.0, 0, 0.0
        got = []
        for t in texts:
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                res = parse_answer(t, MIKELS8, mode=mode)
                times.append(time.perf_counter() - t0)
            got.append(res)
            dt = min(times)  # the machine may be shared: the best of --repeat runs
            total += dt
            if dt > worst_s:
                worst_s, worst_len = dt, len(t)
            read = min(len(t), MAX_ANSWER_CHARS)  # characters actually parsed
            if read >= args.min_chars:
                worst_per_char = max(worst_per_char, dt * 1e6 / read)
        results[mode] = got
        gc.collect()
        print(f"  {mode:8} total {total:.3f} s; slowest answer {worst_s * 1e3:.2f} ms ({worst_len:,} chars); "
              f"worst {worst_per_char:.3f} µs per parsed char over answers >= {args.min_chars} chars")
    default = [parse_answer(t, MIKELS8) for t in texts]
    extra = sum(d.label is not None and d.label != s.label for d, s in zip(default, results["strict"]))
    contra = sum(s.label is not None and lenient.label not in (None, s.label)
                 for s, lenient in zip(results["strict"], results["lenient"]))
    print(f"  default labels the strict parse would not return: {extra}; lenient contradicting strict: {contra}")


if __name__ == "__main__":
    main()
