"""The template subset, held to Go's own text/template (tests/gotemplate/main.go).

Every case in AGREE is rendered by Go (missingkey=error, data decoded by
encoding/json, as matchbox runs it) and by _bootcfg/template.py: the outputs must
be equal; where Go fails to parse, we refuse at load; where Go fails to execute,
we fail to render; where Go prints `<no value>`, we fail to render (the one
deliberate difference). REFUSED holds what Go accepts and we refuse at load.
"""

import json
import os
import subprocess

import pytest

from _bootcfg import template
from helpers import ROOT, need_tool

DATA = {
    "hostname": "node1.example.com", "n": 3, "big": 10000000, "million": 1000000,
    "frac": 0.25, "tiny": 0.00001, "neg": -7, "huge": 123456789012, "t": True, "f": False,
    "none": None, "empty": "", "zero": 0, "list": ["a", "b", "c"], "nums": [1, 2.5, 1e21],
    "nested": {"b": {"c": 2}, "list": [{"name": "x"}, {"name": "y"}]},
    "mixed": [1, "a", None, True, {"k": "v"}, [1, 2]], "elist": [], "emap": {},
    "map": {"b": 1, "a": 2}, "some-key": "hyphen", "keys": ["ssh-ed25519 AAAA x@y"],
    "request": {"query": {"mac": "52:54:00:a1:00:02", "os": "installed"},
                "raw_query": "mac=52-54-00-a1-00-02&os=installed"},
}

AGREE = [
    # plain fields and nesting
    "hello", "", "{{.hostname}}", "a{{.n}}b", "{{.nested.b.c}}", "{{.request.query.mac}}",
    "{{.request.raw_query}}", "{{ .hostname }}", "{{.hostname}}{{.hostname}}",
    # how values print
    "{{.n}} {{.big}} {{.million}} {{.frac}} {{.tiny}} {{.neg}} {{.huge}}",
    "{{.t}} {{.f}} {{.empty}}|{{.zero}}", "{{.list}}", "{{.nums}}", "{{.mixed}}",
    "{{.map}}", "{{.nested}}", "{{.elist}}{{.emap}}",
    # missing keys and bad fields
    "{{.missing}}", "{{.nested.missing}}", "{{.hostname.x}}", "{{.none.x}}", "{{.list.x}}",
    "{{.none}}", "{{if .missing}}y{{end}}",
    # index
    '{{index . "hostname"}}', '{{index . "some-key"}}', '{{index . "missing"}}',
    '{{index .nested "b" "c"}}', "{{index .list 1}}", "{{index .list 5}}",
    '{{index .list "a"}}', '{{index .none "a"}}', '{{index . 1}}',
    "{{index .nested.list 0}}", '{{index .request.query "os"}}',
    '{{if index . "missing"}}y{{else}}n{{end}}', '{{if index . "hostname"}}y{{end}}',
    # if / else
    "{{if .t}}yes{{end}}", "{{if .f}}yes{{else}}no{{end}}", "{{if .zero}}a{{else}}b{{end}}",
    "{{if .empty}}a{{else}}b{{end}}", "{{if .elist}}a{{else}}b{{end}}",
    "{{if .emap}}a{{else}}b{{end}}", "{{if .none}}a{{else}}b{{end}}",
    "{{if .list}}a{{end}}", "{{if .frac}}a{{end}}",
    "{{if .f}}1{{else if .t}}2{{else}}3{{end}}", "{{if .f}}1{{else if .zero}}2{{else}}3{{end}}",
    "{{if .t}}{{if .f}}x{{else}}y{{end}}{{end}}",
    # range
    "{{range .list}}[{{.}}]{{end}}", "{{range $x := .list}}{{$x}},{{end}}",
    "{{range $i, $x := .list}}{{$i}}={{$x}} {{end}}", "{{range .elist}}x{{else}}empty{{end}}",
    "{{range .none}}x{{else}}nothing{{end}}", "{{range .hostname}}x{{end}}",
    "{{range .n}}x{{end}}", "{{range $k, $v := .map}}{{$k}}:{{$v}};{{end}}",
    "{{range .map}}{{.}}{{end}}", "{{range .nested.list}}{{.name}} {{end}}",
    "{{range .nested.list}}{{$.hostname}}/{{.name}} {{end}}",
    "{{range .list}}{{.x}}{{end}}", "{{range $x := .nested.list}}{{$x.name}}{{end}}",
    "{{range .keys}}  - {{.}}\n{{end}}",
    # trim markers and comments
    "a  {{- .n -}}  b", "a\n\n{{- .n}}\n", "{{.n -}}\n\n  x", "a {{/* note */}} b",
    "a {{- /* note */ -}} b", "{{/* multi\nline */}}x", "x{{- /* c */}}",
    "line1\n{{- if .t}}\nyes\n{{- end}}\nline3",
    # literal strings
    '{{"{{"}}', "{{`raw`}}",
    # syntax errors (Go refuses at parse too)
    "{{", "{{.n", "{{end}}", "{{if .t}}x", "{{else}}", "{{if .t}}{{else}}{{else}}{{end}}",
    "{{.some-key}}", "{{$undefined}}", "{{ /* bad */}}", "{{/* c */ }}", "{{.a b}}",
    "{{range $x := .list}}{{end}}{{$x}}", '{{index . "k"', "{{.n}}}", "{{}}",
]

# Go accepts these; they are outside the subset, so they are refused at load.
REFUSED = [
    "{{with .t}}x{{end}}", "{{template \"x\"}}", "{{define \"x\"}}y{{end}}",
    "{{.n | printf \"%d\"}}", "{{printf \"%d\" .n}}", "{{len .list}}", "{{not .t}}",
    "{{if and .t .f}}x{{end}}", "{{if eq .n 3}}x{{end}}", "{{$x := 1}}{{$x}}",
    "{{range .list}}{{break}}{{end}}", "{{html .hostname}}", "{{(index . \"n\")}}",
    "{{true}}", "{{nil}}", "{{3}}", "{{-3}}", "{{block \"b\" .}}x{{end}}",
]


@pytest.fixture(scope="module")
def go_engine(tmp_path_factory):
    go = need_tool("go", "apt-get install golang-go")
    out = str(tmp_path_factory.mktemp("go") / "gotemplate")
    env = dict(os.environ, GOCACHE=str(tmp_path_factory.mktemp("gocache")),
               HOME=str(tmp_path_factory.mktemp("home")), GO111MODULE="off")
    subprocess.run([go, "build", "-o", out, os.path.join(ROOT, "tests", "gotemplate",
                                                         "main.go")],
                   check=True, env=env, timeout=300)

    def run(cases):
        proc = subprocess.run([out], input=json.dumps(cases), capture_output=True,
                              text=True, check=True, timeout=60)
        return json.loads(proc.stdout)
    return run


def ours(text, data):
    try:
        tpl = template.parse(text)
    except template.TemplateSyntaxError as e:
        return {"parse_error": str(e)}
    try:
        return {"out": tpl.render(data)}
    except template.TemplateError as e:
        return {"exec_error": str(e)}


@pytest.mark.cli
def test_the_subset_agrees_with_go(go_engine):
    results = go_engine([{"template": t, "data": DATA} for t in AGREE])
    wrong = []
    for text, go in zip(AGREE, results):
        mine = ours(text, json.loads(json.dumps(DATA)))
        if "out" in go and "<no value>" in go["out"]:
            expected_kind = "exec_error"        # the deliberate difference
        else:
            expected_kind = next(iter(go))
        if next(iter(mine)) != expected_kind or (expected_kind == "out" and
                                                 mine["out"] != go["out"]):
            wrong.append((text, go, mine))
    assert not wrong, "\n".join("%r\n  go:   %r\n  ours: %r" % w for w in wrong)
    kinds = [next(iter(r)) for r in results]
    assert kinds.count("out") > 40 and kinds.count("exec_error") > 8 and \
        kinds.count("parse_error") > 8


@pytest.mark.cli
def test_go_accepts_what_we_refuse_at_load(go_engine):
    results = go_engine([{"template": t, "data": DATA} for t in REFUSED])
    for text, go in zip(REFUSED, results):
        assert "parse_error" not in go, (text, go)
        with pytest.raises(template.TemplateSyntaxError):
            template.parse(text)


@pytest.mark.parametrize("text, line, col", [
    ("ok\n  {{with .x}}{{end}}", 2, 5),
    ("{{if .t}}\n\nx", 1, 1),
    ("a\nb {{.x | y}}", 2, 8),
    ("{{range .l}}{{$nope}}{{end}}", 1, 15),
    ("{{if .a}}\n{{if .b}}x{{end}}", 1, 1),      # the outer block is the unclosed one
])
@pytest.mark.unit
def test_refusals_name_line_and_column(text, line, col):
    with pytest.raises(template.TemplateSyntaxError) as e:
        template.parse(text)
    assert (e.value.line, e.value.col) == (line, col), str(e.value)


@pytest.mark.parametrize("value, text", [
    (3, "3"), (3.0, "3"), (10000000, "1e+07"), (100000, "100000"), (1234567, "1.234567e+06"),
    (0.0001, "0.0001"), (0.00001, "1e-05"), (-2.5, "-2.5"), (0, "0"), (1e300, "1e+300"),
    (True, "true"), ("x y", "x y"), ([1, "a"], "[1 a]"), ({"b": [1], "a": None},
                                                           "map[a:<nil> b:[1]]"),
])
@pytest.mark.unit
def test_values_print_as_go_prints_them(value, text):
    assert template.go_format(value) == text


@pytest.mark.unit
def test_missing_key_errors_name_the_key_and_place():
    with pytest.raises(template.TemplateError) as e:
        template.parse("x\n  {{.hostname}}").render({})
    assert "2:5" in str(e.value) and "hostname" in str(e.value)


@pytest.mark.unit
def test_indexing_a_string_fails_where_go_prints_a_byte():
    # Go prints 110 (the byte 'n'): never what a config means.
    with pytest.raises(template.TemplateError):
        template.parse("{{index .h 0}}").render({"h": "node"})


@pytest.mark.unit
def test_lenient_request_query_stands_in_for_any_key():
    tpl = template.parse("{{.request.query.rack}}")
    assert tpl.render({"request": {"query": template.LenientMap()}}) == "x"
