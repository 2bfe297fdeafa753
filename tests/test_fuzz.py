"""Property-based fuzzing (Hypothesis) of what users hand the platform: search-space files (to the
loader and to `studies/ablation.py --space`), the study's and the training command line's numeric
options. Every case ends in a valid result or in one line that names the file or option, exit
code 2, nothing written, in bounded time. A non-finite number is never a valid value.

Example counts are fixed and the examples derandomized (tests/conftest.py), so CI tries the same
cases every run; HYPOTHESIS_PROFILE=explore looks for new ones.
"""
import contextlib
import io
import itertools
import math
import os
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from iabf.config import FIELD_TYPES, INT_MAX, Config, ConfigError, one_line
from iabf import train
from studies import ablation
from studies.plan import grid_points, groups, plan
from studies.space import SpaceError, Study
from studies.validation import load_study

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {p.stem: p.read_text() for p in sorted((ROOT / "search_spaces").glob("*.yaml"))}
BOUND_S = 5.0    # every case, however hostile, is answered within this many seconds

# --- what a hostile or careless file holds ---------------------------------------------------------

SPECIAL = [float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 1e-320, -0.0, 0, 1, -1, 0.5, 2**31, 2**63,
           10**40, -(10**40), True, False, None, "", "nan", ".inf", "0.1", "necst", "mnist", "grid"]
scalars = st.one_of(st.sampled_from(SPECIAL), st.integers(), st.floats(), st.text(max_size=12),
                    st.integers(min_value=-(2**80), max_value=2**80))
keys = st.one_of(st.sampled_from(sorted({*FIELD_TYPES, "study", "grid", "uniform", "choice", "asha", "name",
                                          "max_t", "cpu", "gpu"})), st.text(max_size=8), st.integers())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                      max_leaves=12)


def paths(d, prefix=()):
    """Every key path of a nested mapping/list, the places a mutation can hit."""
    yield prefix
    if isinstance(d, dict):
        for k, v in d.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from paths(v, prefix + (i,))


def put(d, path, value):
    if not path:
        return value
    *head, last = path
    node = d
    for k in head:
        node = node[k]
    node[last] = value
    return d


@st.composite
def mutated_spaces(draw):
    """A shipped space with a few of its values (or new keys) replaced by hostile ones: most cases
    get past the first checks, so the deep ones are exercised too."""
    space = yaml.safe_load(SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))])
    for _ in range(draw(st.integers(1, 3))):
        targets = [p for p in paths(space) if p] + [(draw(keys),), ("fixed", draw(keys)), ("search", draw(keys))]
        target = draw(st.sampled_from(targets))
        if len(target) == 2 and target[0] in ("fixed", "search") and not isinstance(space.get(target[0]), dict):
            space[target[0]] = {}
        try:
            space = put(space, target, draw(values))
        except (KeyError, IndexError, TypeError):   # an earlier mutation removed the way there
            pass
    return yaml.safe_dump(space, allow_unicode=True).encode()


def laughs(depth: int, width: int) -> str:
    """The 'billion laughs': width**depth leaves through nested anchors and aliases."""
    text = "&a0 [lol, lol]"
    for k in range(1, depth):
        text = f"&a{k} [{text}" + f", *a{k - 1}" * (width - 1) + "]"
    return text


@st.composite
def hostile_texts(draw):
    """Deep nesting, anchor bombs and self-reference, at one of the places a space has values."""
    kind = draw(st.sampled_from(["flow", "block", "laughs", "recursive", "digits"]))
    depth = draw(st.integers(1, 5000 if kind in ("flow", "block", "digits") else 40))
    if kind == "flow":
        value = "[" * depth + "0.1" + "]" * depth
    elif kind == "block":
        value = "\n" + "".join("  " * i + "-\n" for i in range(min(depth, 400))) + "  " * min(depth, 400) + "0.1"
    elif kind == "laughs":
        value = laughs(depth, draw(st.integers(2, 10)))
    elif kind == "recursive":
        value = "&r [*r, *r]"
    else:                                  # an integer Python will not parse from text (over 4300 digits)
        value = "9" * (depth + 4300)
    where = draw(st.sampled_from(["fixed:\n  eps: {}", "search:\n  lam:\n    grid: {}", "variants: {}", "seeds: {}",
                                  "description: {}", "scheduler: {}", "resources:\n  gpu: {}", "{}"]))
    return ("study: fuzz\ndataset: digits\n" + where.format(value) + "\n").encode()


ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1", "cp1252", "shift_jis"]


@st.composite
def encoded_texts(draw):
    text = draw(st.sampled_from(sorted(SHIPPED.values())) | st.text(max_size=200))
    encoding = draw(st.sampled_from(ENCODINGS))
    return text.encode(encoding, errors="replace"), encoding, text


file_contents = st.one_of(st.binary(max_size=600), mutated_spaces(), hostile_texts(),
                          encoded_texts().map(lambda t: t[0]),
                          st.tuples(mutated_spaces(), st.binary(max_size=20)).map(b"".join))


# --- the properties --------------------------------------------------------------------------------

def assert_valid(study: Study) -> None:
    """An accepted space only ever makes valid trials: every number finite, every configuration of
    every group (cell and arm) a Config, on its search and confirmation seeds (up to 50 groups and 20
    configurations each), and a plan of trials that can be counted."""
    for g in itertools.islice(groups(study), 50):
        points = grid_points(g.space) or [{}]
        for point in points[:20]:
            for seed in [*study.seeds[:2], *study.search_seeds]:
                Config.from_dict({**g.base, **point, "seed": seed})
        for k, spec in g.space.items():
            for v in next(iter(spec.values())):
                assert not isinstance(v, float) or math.isfinite(v), (k, v)
    assert plan(study)["trials"] >= 1
    assert all(math.isfinite(v) for v in study.resources.values())
    assert study.scheduler is None or all(math.isfinite(v) for v in study.scheduler.values())


def load_or_error(path: Path):
    t0 = time.monotonic()
    try:
        study = load_study(path)
    except SpaceError as e:
        text = str(e)
        assert len(text.splitlines()) == 1 and text.startswith(one_line(f"{path}: ")), text
        study = None
    assert time.monotonic() - t0 < BOUND_S
    return study


@settings(max_examples=400)
@given(content=file_contents)
def test_the_space_loader_answers_any_file_with_a_study_or_one_line(content):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "space.yaml"
        path.write_bytes(content)
        study = load_or_error(path)
        if study is not None:
            assert_valid(study)


@settings(max_examples=60)
@given(encoded=encoded_texts())
def test_a_space_reads_the_same_in_utf8_and_in_utf16_or_32_with_a_byte_order_mark(encoded):
    data, encoding, text = encoded
    with tempfile.TemporaryDirectory() as d:
        path, plain = Path(d) / "space.yaml", Path(d) / "plain.yaml"
        path.write_bytes(data)
        plain.write_bytes(text.encode("utf-8"))
        got, want = load_or_error(path), load_or_error(plain)
        if encoding in ("utf-8", "utf-8-sig", "utf-16", "utf-32"):   # YAML's encodings: the same study
            assert (got is None) == (want is None)
            if got is not None:
                assert (got.name, got.fixed, got.search, got.arms) == (want.name, want.fixed, want.search, want.arms)


@settings(max_examples=30)
@given(kind=st.sampled_from(["folder", "fifo", "dev-null", "dev-zero", "link-to-folder", "broken-link", "missing",
                             "nul-in-name", "too-big"]),
       name=st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=20))
def test_a_path_that_is_not_a_small_regular_file_is_one_line_and_never_blocks(kind, name):
    assume(name not in (".", ".."))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        if kind == "folder":
            path.mkdir()
        elif kind == "fifo":
            os.mkfifo(path)                      # reading it would wait for a writer forever
        elif kind in ("dev-null", "dev-zero"):
            path = Path("/dev") / kind.removeprefix("dev-")
        elif kind == "link-to-folder":
            path.symlink_to(d)
        elif kind == "broken-link":
            path.symlink_to(Path(d) / "nowhere")
        elif kind == "nul-in-name":
            path = Path(d) / (name + "\0.yaml")
        elif kind == "too-big":
            path.write_bytes(b"study: big\n" + b"#" * (2 << 20))
        with pytest.raises(SpaceError) as e:
            t0 = time.monotonic()
            load_study(path)
        assert time.monotonic() - t0 < BOUND_S
        assert len(str(e.value).splitlines()) == 1 and str(e.value).startswith(one_line(f"{path}: "))


def run_study_cli(*argv):
    """studies/ablation.py in this process, in an empty folder: (exit code, stderr lines, anything written)."""
    with tempfile.TemporaryDirectory() as d:
        err = io.StringIO()
        cwd = os.getcwd()
        os.chdir(d)
        try:
            with contextlib.redirect_stderr(err):
                t0 = time.monotonic()
                try:
                    rc = ablation.main(["--storage", str(Path(d) / "results"), *argv])
                except SystemExit as e:             # argparse's own errors
                    rc = e.code
                assert time.monotonic() - t0 < BOUND_S
        finally:
            os.chdir(cwd)
        written = sorted(p.name for p in Path(d).iterdir() if p.name != "space.yaml")
        return rc, err.getvalue().strip().splitlines(), written


@settings(max_examples=150)
@given(content=file_contents)
def test_the_study_cli_refuses_a_bad_space_in_one_line_with_exit_2_and_writes_nothing(content):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "space.yaml"
        path.write_bytes(content)
        try:
            load_study(path)
            assume(False)                      # a valid space would start a study: not this test's job
        except SpaceError:
            pass
        rc, err, written = run_study_cli("--space", str(path))
    assert rc == 2 and len(err) == 1 and err[0].startswith(one_line(f"error: {path}: ")), err
    assert written == []


numbers_as_text = st.one_of(
    st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e999", "1e308", "0", "-0", "-1", "0.5",
                     "1.5", "", " ", "1_000", "0x10", "٣"]),
    st.integers(-(2**80), 2**80).map(str), st.floats().map(repr), st.text(max_size=8))


@settings(max_examples=120)
@given(option=st.sampled_from(["--max-concurrent", "--stack", "--gpus-per-trial", "--tracking-grace", "--chain-steps"]),
       value=numbers_as_text)
def test_the_study_cli_numeric_options_are_finite_and_in_range_or_one_line(option, value):
    argv = ["--smoke", f"{option}={value}"]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            ablation.prepare(ablation.parse_args(argv))
        accepted = True
    except (SystemExit, SpaceError, ConfigError):
        accepted = False
    if accepted:                               # then it is a finite number in range; no study is run
        assert math.isfinite(float(value)) and abs(float(value)) <= INT_MAX
        return
    rc, err, written = run_study_cli(*argv)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and option in err[0], err
    assert written == []


NUMERIC = [f for f, t in FIELD_TYPES.items() if t in ("int", "float")]


@settings(max_examples=200)
@given(field=st.sampled_from(NUMERIC), value=numbers_as_text)
def test_the_training_cli_numeric_options_are_finite_and_in_range_or_one_line(field, value):
    option = "--" + field.replace("_", "-")
    argv = ["--dataset", "digits", "--epochs", "1", f"{option}={value}"]
    if field == "epochs":
        argv = argv[:2] + argv[4:]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            cfg = train.config_from_args(train.config_parser("fuzz", "").parse_args(argv))
    except (SystemExit, ConfigError):
        cfg = None
    if cfg is not None:                        # accepted: a finite value (an integer within 32 bits)
        v = getattr(cfg, field)
        assert math.isfinite(v) and (FIELD_TYPES[field] == "float" or abs(v) <= INT_MAX)
        return
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out"
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            t0 = time.monotonic()
            try:
                rc = train.main([*argv, "--out", str(out)])
            except SystemExit as e:
                rc = e.code
            assert time.monotonic() - t0 < BOUND_S
        lines = err.getvalue().strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and option in lines[0], lines
        assert not out.exists()


# --- sizes: a valid space can still ask for too much ---------------------------------------------

GRID_FIELDS = {"lam": lambda i: round(0.001 * (i + 1), 6), "K": lambda i: i + 1, "flip_k": lambda i: i + 1,
               "batch_size": lambda i: i + 1, "eval_batch_size": lambda i: i + 1, "clean_weight": lambda i: 0.01 * i,
               "weight_decay": lambda i: 1e-5 * i, "lr": lambda i: 1e-4 * (i + 1), "n_bits": lambda i: i + 1,
               "max_train_examples": lambda i: i + 1}


@st.composite
def big_spaces(draw):
    """Valid spaces of every size, from one trial to 10^12 and beyond: many grid parameters of many
    values, many cells (eps x test_eps x dataset), many arms, or a huge num_samples per group."""
    sampled = draw(st.booleans())
    space = {"study": "big", "seeds": list(range(draw(st.integers(1, 5))))}
    names = draw(st.lists(st.sampled_from(sorted(GRID_FIELDS)), unique=True, max_size=len(GRID_FIELDS)))
    if sampled:
        space.update(searcher="random", num_samples=draw(st.integers(1, 100_000)))
        space["search"] = {n: {"choice": [GRID_FIELDS[n](i) for i in range(draw(st.integers(1, 12)))]} for n in names}
    else:
        space["search"] = {n: {"grid": [GRID_FIELDS[n](i) for i in range(draw(st.integers(1, 12)))]} for n in names}
    space["search"]["eps"] = {"grid": [round(0.001 * i, 4) for i in range(draw(st.integers(1, 200)))]}
    space["search"]["dataset"] = {"grid": draw(st.lists(st.sampled_from(["digits", "mnist", "omniglot"]), min_size=1,
                                                        max_size=3, unique=True))}
    if draw(st.booleans()):
        space.setdefault("fixed", {})["test_eps"] = 0.1
        space["cells"] = ["dataset", "eps", "test_eps"]
    space["variants"] = [{"method": m, "name": f"arm{i}", "flip_budget": 0.01 * i} for i, m in
                         enumerate(draw(st.lists(st.sampled_from(["necst", "abf", "iabf"]), min_size=1, max_size=8)))]
    return yaml.safe_dump(space).encode()


@settings(max_examples=40)
@given(content=big_spaces())
def test_a_space_of_any_size_is_planned_or_refused_in_bounded_time_and_memory(content):
    import tracemalloc

    from studies.protocol import StudySearcher
    from studies.validation import MAX_TRIALS

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "space.yaml"
        path.write_bytes(content)

        def plan_it():
            study = load_or_error(path)
            if study is not None:    # accepted: what the driver builds from it stays small and quick
                assert plan(study)["trials"] <= MAX_TRIALS
                StudySearcher(study)
            return study

        t0 = time.monotonic()
        study = plan_it()
        seconds = time.monotonic() - t0
        tracemalloc.start()          # again, for memory (tracemalloc slows Python several times over)
        try:
            plan_it()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert seconds < BOUND_S and peak < 300 * 2**20, (seconds, peak)
        if study is None:
            with pytest.raises(SpaceError, match=rf"{path}: (search|num_samples): the study plans up to [\d,]+ trials"):
                load_study(path)
