"""Prompt templates as versioned artifacts: content-addressed versions, aliases with a history of moves, every
reference form, a sandboxed render with checked variables, lineage through the steps that render one, and the
`heredity prompt` commands."""

import json
import subprocess
import sys

import pytest

from heredity.errors import HeredityError
from heredity.prompts import (
    PromptTemplate,
    alias_history,
    create_prompt,
    diff_prompts,
    list_prompts,
    load_prompt,
    render,
    render_prompt,
    resolve_prompt,
    set_alias,
    versions,
)
from heredity.store.store import hash_dir


def greet(text="Write a {{ tone }} greeting for {{ name }}.", **extra) -> PromptTemplate:
    return PromptTemplate(
        name="greet",
        text=text,
        variables={"name": {"description": "who"}, "tone": {"required": False, "default": "warm"}},
        **extra,
    )


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, msg
    return msg


# ---- versions ---------------------------------------------------------------------------------------


def test_same_content_is_one_id_and_a_change_is_the_next_version(store):
    v1 = create_prompt(store, greet())
    assert v1.startswith("p-") and v1 == f"p-{hash_dir(store.path(v1))[:16]}"  # content-addressed
    assert (store.path(v1) / "template.json").is_file()
    before = (store.path(v1) / "template.json").read_bytes(), (store.path(v1) / "template.json").stat()
    assert create_prompt(store, greet()) == v1  # same content: same id, no new version
    assert [v.version for v in versions(store, "greet")] == [1]
    v2 = create_prompt(store, greet(text="Write a {{ tone }} note to {{ name }}."))
    assert v2 != v1
    assert [(v.version, v.id) for v in versions(store, "greet")] == [(1, v1), (2, v2)]
    assert create_prompt(store, greet()) == v1  # v1's content again: still version 1, no version 3
    assert [v.id for v in versions(store, "greet")] == [v1, v2]
    after = store.path(v1) / "template.json"
    assert after.read_bytes() == before[0] and after.stat().st_mtime_ns == before[1].st_mtime_ns  # immutable
    assert store.check(v1, full=True) == []
    assert load_prompt(store, v1) == greet() and load_prompt(store, "greet").text.endswith(
        "note to {{ name }}."
    )
    # the description is content too; another name is another template
    assert create_prompt(store, greet(description="for the demo")) not in (v1, v2)
    other = create_prompt(
        store, PromptTemplate(name="greet2", text=greet().text, variables=greet().variables)
    )
    assert [v.id for v in versions(store, "greet2")] == [other]
    assert [(r["name"], r["versions"], r["latest"]) for r in list_prompts(store)] == [
        ("greet", 3, versions(store, "greet")[-1].id),
        ("greet2", 1, other),
    ]
    assert [a.id for a in store.list("prompt")] == [v1, v2, versions(store, "greet")[-1].id, other]


def test_versions_of_an_unknown_name_lists_the_names(store):
    create_prompt(store, greet())
    with pytest.raises(HeredityError, match="no prompt template named 'nope'; the store holds greet") as e:
        versions(store, "nope")
    one_line(e)


# ---- aliases ----------------------------------------------------------------------------------------


def test_an_alias_move_is_recorded_in_the_history(store):
    v1 = create_prompt(store, greet())
    v2 = create_prompt(store, greet(text="Hi {{ name }}, {{ tone }}ly."))
    first = set_alias(store, "greet", "production", 1, by="ada")
    assert (first["from"], first["to"], first["to_version"], first["moved"]) == (None, v1, 1, True)
    moved = set_alias(store, "greet", "production", "greet:2", by="grace")
    assert (moved["from"], moved["to"], moved["from_version"], moved["to_version"]) == (v1, v2, 1, 2)
    same = set_alias(store, "greet", "production", v2, by="someone")
    assert not same["moved"] and same["moved_by"] == "grace"  # already there: nothing recorded
    set_alias(store, "greet", "staging", "greet@production")
    hist = alias_history(store, "greet")
    assert [(h["alias"], h["from"], h["to"], h["moved_by"]) for h in hist] == [
        ("production", None, v1, "ada"),
        ("production", v1, v2, "grace"),
        ("staging", None, v2, hist[2]["moved_by"]),
    ]
    assert "@" in hist[2]["moved_by"]  # user@host by default
    assert hist[0]["moved_at"] <= hist[1]["moved_at"] <= hist[2]["moved_at"]
    assert [h["to_version"] for h in alias_history(store, "greet", "production")] == [1, 2]
    assert store.prompt_aliases("greet") == {"production": v2, "staging": v2}
    assert [v.aliases for v in versions(store, "greet")] == [[], ["production", "staging"]]
    assert list_prompts(store)[0]["aliases"] == {"production": v2, "staging": v2}


def test_versions_and_aliases_on_postgresql(request, tmp_path):
    import os

    import sqlalchemy

    from heredity.store import Store

    url = request.getfixturevalue("postgres_url")
    db = f"p{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"
    with sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT").connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {db}")
    store = Store(tmp_path / "home", db_url=url.rsplit("/", 1)[0] + "/" + db)
    v1 = create_prompt(store, greet())
    v2 = create_prompt(store, greet(text="Hi {{ name }} ({{ tone }})"))
    assert create_prompt(store, greet()) == v1 and [v.id for v in versions(store, "greet")] == [v1, v2]
    set_alias(store, "greet", "production", 1)
    set_alias(store, "greet", "production", 2)
    assert resolve_prompt(store, "prompts:/greet@production") == v2
    assert [(h["from"], h["to"]) for h in alias_history(store, "greet")] == [(None, v1), (v1, v2)]
    store.engine.dispose()


def test_alias_errors_are_one_line(store):
    create_prompt(store, greet())
    other = create_prompt(store, PromptTemplate(name="other", text="x"))
    for args, needle in [
        (("greet", "latest", 1), "reserved"),
        (("greet", "prod uction", 1), "cannot name an alias"),
        (("greet", "1st", 1), "cannot name an alias"),
        (("greet", "production", other), "is a version of prompt other, not of greet"),
        (("greet", "production", 7), "has no version 7; it has versions 1 to 1"),
        (("nope", "production", 1), "no prompt template named 'nope'"),
    ]:
        with pytest.raises(HeredityError, match=needle) as e:
            set_alias(store, *args)
        one_line(e)
    assert alias_history(store, "greet") == [] and store.prompt_aliases("greet") == {}


# ---- references -------------------------------------------------------------------------------------


def test_resolve_prompt_takes_every_reference_form(store, tmp_path):
    v1 = create_prompt(store, greet())
    v2 = create_prompt(store, greet(text="Hi {{ name }} ({{ tone }})"))
    set_alias(store, "greet", "production", 1)
    for ref, want in [
        (v1, v1),
        (v1[:6], v1),
        (f"  {v2}  ", v2),
        ("greet", v2),
        ("greet:1", v1),
        ("greet:2", v2),
        ("greet@production", v1),
        ("greet@latest", v2),
        ("prompts:/greet@production", v1),
        ("prompts:/greet/1", v1),
        ("prompts:/greet", v2),
    ]:
        assert resolve_prompt(store, ref) == want, ref
    for ref, needle in [
        ("nope", "no prompt template named 'nope'; the store holds greet"),
        ("greet:3", "prompt greet has no version 3; it has versions 1 to 2"),
        ("greet:0", "has no version 0"),
        ("greet@staging", "prompt greet has no alias 'staging'; its aliases are production"),
        ("greet/1", "not a prompt reference"),
        ("prompts:/greet:1", "not a prompt reference"),
        ("", "not a prompt reference"),
        ("p-ffff", "no artifact 'p-ffff'"),
    ]:
        with pytest.raises(HeredityError, match=needle) as e:
            resolve_prompt(store, ref)
        one_line(e)

    def data(ctx):
        (ctx.output("dataset", "dataset", "rows") / "data.txt").write_text("x")

    did = store.run_step("my-data", {}, [], data)["dataset"]
    with pytest.raises(HeredityError, match="is a dataset, not a prompt template"):
        resolve_prompt(store, did)
    from heredity.store import Store

    with pytest.raises(HeredityError, match="the store holds no prompt template"):
        resolve_prompt(Store(tmp_path / "empty"), "greet")


# ---- checks at creation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"text": "Hello {{ name }"}, "Jinja2 syntax error at line 1: unexpected '}'"),
        ({"text": "Hello\n\n{% if name %}yes"}, "Jinja2 syntax error at line 3"),
        ({"text": "{{ name | nosuchfilter }}"}, "No filter named 'nosuchfilter'"),
        ({"text": "Hello {{ nmae }}"}, "uses variable 'nmae' but does not declare it; declare it"),
        ({"text": "{{ name.__class__ }}"}, "reads '__class__'"),
        ({"text": "{{ name['__class__'] }}"}, "reads '__class__'"),
        ({"text": "{{ lipsum.__globals__ }}"}, "reads '__globals__'"),
        ({"text": "x", "messages": [{"role": "user", "content": "y"}]}, "exactly one of them"),
        ({}, "exactly one of them"),
        ({"text": "  "}, "its text is empty"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, "message 1 is"),
        ({"messages": [{"role": "user", "content": "{{ name }"}]}, "message 1 (user): Jinja2 syntax"),
        (
            {"text": "{{ name }}", "variables": {"name": {"type": "int", "default": "abc"}}},
            "variable 'name' is int",
        ),
        ({"text": "{{ name }}", "variables": {"name": {"type": "integer"}}}, "variables.name.type"),
        ({"text": "{{ loop }}", "variables": {"loop": {}}}, "cannot name a variable"),
        ({"text": "x", "name": "bad name"}, "cannot name a prompt template"),
        ({"text": "x", "name": "p-0123"}, "reads as an artifact id"),
        ({"text": "x", "colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_a_bad_template_is_one_line_at_creation(fields, needle):
    data = {"name": "t", "variables": {"name": {}}, **fields}
    with pytest.raises(HeredityError) as e:
        PromptTemplate(**data)
    assert needle in one_line(e)


def test_declared_but_unused_variables_are_allowed_and_listed():
    t = PromptTemplate(name="t", text="{{ a }}", variables={"a": {}, "b": {"type": "int", "default": "3"}})
    assert t.unused_variables() == ["b"] and t.variables["b"].default == 3  # the default coerced once


# ---- rendering --------------------------------------------------------------------------------------


def test_render_checks_and_coerces_values():
    t = PromptTemplate(
        name="t",
        text="{{ who }} x{{ n }} {{ '%.1f' % p }} {{ 'yes' if flag else 'no' }} {{ items | join('+') }}"
        "{{ opt }}",
        variables={
            "who": {},
            "n": {"type": "int"},
            "p": {"type": "float", "default": 0.5},
            "flag": {"type": "bool", "default": False},
            "items": {"type": "list", "default": ["a"]},
            "opt": {"required": False},
        },
    )
    assert render(t, {"who": "Ada", "n": "3"}) == "Ada x3 0.5 no a"  # "3" from a command line is an int
    assert render(t, {"who": "Ada", "n": 2, "p": "2", "flag": "true", "items": '["b", "c"]', "opt": "!"}) == (
        "Ada x2 2.0 yes b+c!"
    )
    assert render_prompt(t, None, {"who": "A", "n": 1}) == "A x1 0.5 no a"
    for values, needle in [
        ({"n": 3}, "needs variable 'who' (str)"),
        ({"who": "A"}, "needs variable 'n' (int)"),
        ({"who": "A", "n": "abc"}, "variable 'n' is int, got 'abc'; give a whole number"),
        ({"who": "A", "n": True}, "variable 'n' is int"),
        ({"who": 3, "n": 1}, "variable 'who' is str"),
        ({"who": "A", "n": 1, "p": "nan"}, "variable 'p' is float"),
        ({"who": "A", "n": 1, "flag": "maybe"}, "variable 'flag' is bool"),
        ({"who": "A", "n": 1, "items": "a,b"}, "variable 'items' is list"),
        (
            {"who": "A", "n": 1, "colour": "red"},
            "has no variable 'colour'; its variables: flag, items, n, opt",
        ),
    ]:
        with pytest.raises(HeredityError) as e:
            render(t, values)
        assert needle in one_line(e), values


def test_a_messages_template_renders_role_by_role():
    t = PromptTemplate(
        name="chat",
        messages=[
            {"role": "system", "content": "You answer in {{ lang }}."},
            {"role": "user", "content": "{{ question }}"},
        ],
        variables={"lang": {"default": "French"}, "question": {}},
    )
    assert render(t, {"question": "Why?"}) == [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Why?"},
    ]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("{{ name | attr('__class__') }}", "attribute '__class__' of 'str' object is unsafe"),
        ("{{ (name | attr('__class__')) | attr('__mro__') }}", "refused by the sandbox"),
        ("{{ (cycler | attr('__init__')) | attr('__globals__') }}", "refused by the sandbox"),
        ("{{ lipsum | attr('__globals__') }}", "attribute '__globals__' of 'function' object is unsafe"),
        (
            "{% for c in name | attr('__class__') | attr('__mro__') %}{{ c }}{% endfor %}",
            "refused by the sandbox",
        ),
        ("{{ name.upper | attr('__self__') }}", "refused by the sandbox"),
        ("{{ name.format }}", "it prints the function 'format'"),
        ("{{ 'x' * 10 ** 9 }}", "over the limit"),
        ("{{ 2 ** 1000000 }}", "an exponent of 1000000 is over the limit"),
        ("{% for i in range(10 ** 7) %}{% endfor %}", "Range too big"),
    ],
)
def test_rendering_is_sandboxed(text, needle):
    t = PromptTemplate(name="t", text=text, variables={"name": {"default": "x"}})
    with pytest.raises(HeredityError) as e:
        render(t)
    assert needle in one_line(e)


def test_internals_are_refused_at_render_even_when_the_creation_check_is_skipped():
    for text in ("{{ ''.__class__.__mro__ }}", "{{ cycler.__init__.__globals__ }}", "{{ ''.__class__ }}"):
        t = PromptTemplate.model_construct(name="t", text=text, messages=None, variables={}, description="")
        with pytest.raises(HeredityError) as e:
            render(t)
        assert "refused by the sandbox" in one_line(e)


# ---- lineage and keys --------------------------------------------------------------------------------


def _render_step(store, ref: str):
    """A user's step keyed on a template: its resolved id is the step's input (never the alias)."""

    def fn(ctx):
        out = ctx.output("dataset", "dataset", "rendered")
        (out / "prompt.txt").write_text(render(load_prompt(ctx.store, ctx.inputs[0]), {"name": "Ada"}))

    return store.run_step("render-greeting", {"name": "Ada"}, [resolve_prompt(store, ref)], fn)


def test_a_step_keyed_on_a_template_recomputes_for_a_new_version_not_for_an_alias_move(store):
    v1 = create_prompt(store, greet())
    set_alias(store, "greet", "production", v1)
    first = _render_step(store, "greet@production")
    assert not first.cached
    assert (store.path(first["dataset"]) / "prompt.txt").read_text() == "Write a warm greeting for Ada."
    v2 = create_prompt(store, greet(text="Dear {{ name }}, a {{ tone }} hello."))
    set_alias(store, "greet", "staging", v1)  # another alias on the same version: the same step
    assert _render_step(store, "greet@staging").cached
    set_alias(store, "greet", "production", v2)  # a new version behind the alias: recomputed
    second = _render_step(store, "greet@production")
    assert not second.cached and second.key != first.key
    assert (store.path(second["dataset"]) / "prompt.txt").read_text() == "Dear Ada, a warm hello."
    set_alias(store, "greet", "staging", v2)  # moved to a version already computed: nothing recomputes
    assert _render_step(store, "greet@staging").cached and _render_step(store, "greet").cached
    assert create_prompt(store, greet()) == v1 and _render_step(store, "greet:1").key == first.key
    lineage = store.lineage(second["dataset"])
    assert [(p["id"], p["kind"], p["step"]["op"]) for p in lineage["parents"]] == [
        (v2, "prompt", "create-prompt")
    ]


def test_sample_step_keys_on_the_resolved_template(store):
    from conftest import stored_tiny

    from heredity.engine.sampling import SampleConfig, sample_step

    model = stored_tiny(store, "tiny-prompts")
    cfg = SampleConfig(temperature=0, max_new_tokens=3)
    v1 = create_prompt(store, greet())
    set_alias(store, "greet", "production", v1)
    prompt = render_prompt(store, "greet@production", {"name": "Ada"})
    plain = sample_step(store, model, [prompt], cfg, progress=False)
    with_t = sample_step(store, model, [prompt], cfg, progress=False, template="greet@production")
    assert with_t == plain  # the same bytes: one dataset, made by two steps
    # no template: the step's inputs (so its key) as they always were; with one: its resolved id
    assert sorted(st.inputs for st in store.producers(with_t)) == [[model], [model, v1]]
    set_alias(store, "greet", "staging", v1)
    assert sample_step(store, model, [prompt], cfg, progress=False, template="greet@staging") == with_t
    assert len(store.producers(with_t)) == 2  # an alias on the same version: the same step, memoized
    parents = {p["id"]: p["kind"] for p in store.lineage(with_t)["parents"]}
    assert parents == {model: "model", v1: "prompt"}


def test_diff_shows_text_and_variables(store):
    create_prompt(store, greet())
    create_prompt(
        store,
        PromptTemplate(
            name="greet",
            messages=[
                {"role": "system", "content": "Be {{ tone }}."},
                {"role": "user", "content": "Hi {{ name }}"},
            ],
            variables={"name": {}, "tone": {"type": "str", "default": "brief"}},
        ),
    )
    d = diff_prompts(store, "greet:1", "greet:2")
    assert d.startswith("--- greet:1 (p-") and "+++ greet:2 (p-" in d
    assert '-  tone: str? = "warm"' in d and '+  tone: str = "brief"' in d
    assert "-text:" in d and "+message 1 (system):" in d and "+  Hi {{ name }}" in d
    assert diff_prompts(store, "greet:2", "greet") == ""


# ---- the CLI ----------------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """`heredity ...` run in this process through the real entry point (errors: exit 2, one line)."""
    from heredity import cli as module

    monkeypatch.setenv("HEREDITY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HEREDITY_DB_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["heredity", *map(str, args)])
        try:
            module.main()
            rc = 0
        except SystemExit as e:
            rc = e.code or 0
        o = capsys.readouterr()
        return rc, o.out, o.err

    run.home = tmp_path / "home"
    return run


def test_cli_create_ls_show_render_diff_alias(cli, tmp_path):
    create = ["prompt", "create", "greet", "--text", "A {{ tone }} greeting for {{ name }}."]
    create += ["--var", "name", "--var", "tone?=warm", "--description", "a greeting"]
    rc, out, err = cli(*create)
    assert rc == 0 and out.startswith("created: greet version 1  p-"), (out, err)
    v1 = out.split()[-1]
    assert cli(*create)[1].startswith(f"unchanged (the same content is stored): greet version 1  {v1}")
    spec = tmp_path / "greet.yaml"
    spec.write_text(
        "description: a greeting\ntext: |\n  A {{ tone }} greeting for {{ name }} in {{ words }} words.\n"
        "variables:\n  name: {description: who}\n  tone: {default: warm}\n  words: {type: int, default: 20}\n"
        "  spare: {required: false}\n"
    )
    rc, out, err = cli("prompt", "create", "greet", "--spec", spec)
    assert rc == 0 and "version 2" in out and "declared but not used by the template: spare" in err
    v2 = out.split()[-1]
    assert (
        cli("prompt", "alias", "greet", "production", "1")[1].strip()
        == f"greet@production: nothing → v1 ({v1})"
    )
    assert f"v1 ({v1}) → v2 ({v2})" in cli("prompt", "alias", "greet", "production", "greet")[1]
    rc, out, _ = cli("prompt", "alias", "greet")
    assert f"greet@production → v2 ({v2})" in out and "history:" in out and "production: (new) → v1" in out
    rc, out, _ = cli("prompt", "ls", "--format", "json")
    assert json.loads(out) == [
        {
            "name": "greet",
            "versions": 2,
            "latest": v2,
            "latest_version": 2,
            "aliases": {"production": v2},
            "description": "a greeting",
            "updated_at": json.loads(out)[0]["updated_at"],
        }
    ]
    assert "production → v2" in cli("prompt", "ls")[1]
    rc, out, _ = cli("prompt", "show", "greet@production")
    assert out.startswith(f"greet version 2 of 2  {v2}\naliases: production")
    assert "  words: int, optional = 20" in out and "text:\nA {{ tone }} greeting" in out
    assert json.loads(cli("prompt", "show", "greet:1", "--json")[1])["id"] == v1
    rc, out, _ = cli("prompt", "render", "greet", "--set", "name=Ada", "--set", "words=12")
    assert (rc, out) == (0, "A warm greeting for Ada in 12 words.\n")
    rc, out, _ = cli("prompt", "diff", "greet:1", "greet:2")
    assert (
        "+  words: int = 20" in out and "+  A {{ tone }} greeting for {{ name }} in {{ words }} words." in out
    )
    assert "are the same template" in cli("prompt", "diff", "greet@production", "greet")[1]
    chat = tmp_path / "chat.json"
    chat.write_text(
        json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "{{ q }}"}])
    )
    assert cli("prompt", "create", "chat", "--messages-file", chat, "--var", "q")[0] == 0
    assert json.loads(cli("prompt", "render", "chat", "--set", "q=Why?")[1])[1] == {
        "role": "user",
        "content": "Why?",
    }
    assert cli("ls", "--kind", "prompt", "--format", "plain")[1].count("\tprompt\t") == 3


@pytest.mark.parametrize(
    "args, needle",
    [
        (("prompt", "create", "bad", "--text", "Hello {{ name }"), "syntax error at line 1"),
        (
            ("prompt", "create", "bad", "--text", "Hello {{ name }}"),
            "uses variable 'name' but does not declare",
        ),
        (("prompt", "create", "bad", "--text", "x", "--var", "n:integer"), "unknown type 'integer'"),
        (("prompt", "create", "bad", "--text", "{{ n }}", "--var", "n:int=abc"), "variable 'n' is int"),
        (("prompt", "create", "bad"), "exactly one of --file, --text or --messages-file"),
        (("prompt", "create", "bad", "--text", "x", "--file", "f"), "exactly one of"),
        (("prompt", "create", "bad name", "--text", "x"), "cannot name a prompt template"),
        (("prompt", "create", "bad", "--file", "/no/such/file"), "does not exist"),
        (("prompt", "show", "nope"), "the store holds no prompt template"),
        (("prompt", "render", "nope:2"), "no prompt template named 'nope'"),
        (("prompt", "render", "x", "--set", "novalue"), "--set takes key=value"),
        (("prompt", "alias", "greet", "latest", "1"), "reserved"),
        (("sample", "tiny:micro", "hi", "--set", "a=b"), "name the template with --template"),
    ],
)
def test_cli_errors_exit_2_with_one_line_and_store_nothing(cli, args, needle):
    rc, out, err = cli(*args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (rc, err)
    arts = cli.home / "artifacts"
    assert not arts.exists() or list(arts.iterdir()) == []


def test_cli_bad_template_in_a_real_process(tmp_path):
    env = {"HEREDITY_HOME": str(tmp_path / "h"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-m", "heredity.cli", "prompt", "create", "bad", "--text", "{{ a }", "--var", "a"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "syntax error at line 1" in r.stderr
    assert not (tmp_path / "h").exists()  # nothing opened, nothing stored


def test_cli_sample_with_a_template_records_it_in_lineage(cli):
    cli("prompt", "create", "greet", "--text", "Say hi to {{ name }}", "--var", "name")
    cli("prompt", "alias", "greet", "production", "1")
    pid = json.loads(cli("prompt", "show", "greet", "--json")[1])["id"]
    args = (
        "sample",
        "tiny:micro",
        "--template",
        "greet@production",
        "--set",
        "name=Ada",
        "--max-new-tokens",
        "2",
    )
    rc, out, err = cli(*args, "--temperature", "0", "--save")
    assert rc == 0, err
    did = out.split()[-1]
    assert did.startswith("d-")
    from heredity.store import Store

    store = Store(cli.home)
    assert store.step_of(did).inputs[-1] == pid
    rc, out, _ = cli("lineage", did)
    assert pid in out and "create-prompt" in out
    rc, out, err = cli(*args, "--set", "name=Bob", "--temperature", "0")  # --set twice for one variable
    assert rc == 2 and "given twice" in err


def test_prompt_commands_have_help_with_examples(cli):
    for cmd in ("create", "ls", "show", "render", "diff", "alias"):
        rc, out, _ = cli("prompt", cmd, "--help")
        assert rc == 0 and "Examples:" in out and "heredity prompt" in out, cmd
    assert "--template" in cli("sample", "--help")[1]


def test_builtin_prompts_seed_as_versions_that_render_the_experiments_own_text(tmp_path):
    """``heredity prompt seed``'s templates render exactly what the experiments write by default, seeding
    twice adds no version, and subliminal-numbers takes a stored teacher template by name or alias."""
    from heredity.data.formats import PLAIN, render_vars, template_text
    from heredity.data.synthetic_retrieval import BRAINSTORM_PROMPT, EXAMPLE_PROMPT
    from heredity.experiments.builtin_prompts import builtin_prompts
    from heredity.experiments.subliminal_numbers import Config, system_prompt, teacher_for
    from heredity.prompts import create_prompt, render, set_alias, versions
    from heredity.store import Store

    store = Store(tmp_path)
    ids = [create_prompt(store, t) for t in builtin_prompts()]
    assert ids == [create_prompt(store, t) for t in builtin_prompts()]
    assert all(len(versions(store, t.name)) == 1 for t in builtin_prompts())
    by = {t.name: t for t in builtin_prompts()}
    assert render(by["subliminal-teacher"], {"animal": "owl"}) == system_prompt("owl")
    assert render(by["e5-brainstorm"], {}) == BRAINSTORM_PROMPT
    vals = {"task": "Given a {claim}, retrieve it", "passage": 'A "quoted" {x} passage.'}
    assert render(by["e5-example"], vals) == EXAMPLE_PROMPT.format(**vals)
    item = {"question": "What is 1 + 1?", "options": ["2", "3"]}
    assert render(by["format-spread"], render_vars(item, [])) == ENV_TEXT(template_text(PLAIN), item)

    v2 = create_prompt(
        store,
        by["subliminal-teacher"].model_copy(update={"text": "You are a {{ animal }} at heart."}),
    )
    set_alias(store, "subliminal-teacher", "production", v2)
    cfg = Config(teacher="prompt", teacher_prompt="subliminal-teacher@production")
    assert teacher_for(store, "m-unused", "owl", cfg, False) == ("m-unused", "You are a owl at heart.")
    assert system_prompt("cat", store, "subliminal-teacher:1") == system_prompt("cat")


def ENV_TEXT(source: str, item: dict) -> str:
    """A template rendered by plain Jinja2 (keeping a final newline), the reference for the stored one."""
    import jinja2

    return jinja2.Template(source, keep_trailing_newline=True).render(
        question=item["question"], options=item["options"], shots=[]
    )


def test_a_huge_format_width_and_a_huge_float_are_one_line_errors():
    from heredity.prompts import PromptTemplate, coerce_value, render

    with pytest.raises(HeredityError, match="refused by the sandbox.*over the limit"):
        render(PromptTemplate(name="wide", text="{{ '%0999999999d'|format(1) }}"))
    assert render(PromptTemplate(name="narrow", text="{{ '%05d'|format(3) }}")) == "00003"
    with pytest.raises(HeredityError, match="variable 'f' is float"):
        coerce_value("f", "float", 10**400)
