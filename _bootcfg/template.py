"""The part of Go's text/template that matchbox's documentation and examples use.

Profiles name cloud-configs and generic files that are templates, filled from a
group's variables (its metadata, its selector, the request). This is the subset
of Go's `text/template` those files use, with Go's results:

    {{.key}}  {{.a.b}}  {{$.key}}  {{$x}}  {{$x.key}}  {{.}}
    {{index . "key"}}  {{index .list 0}}
    {{if P}} ... {{else if P}} ... {{else}} ... {{end}}
    {{range P}} ... {{else}} ... {{end}}   {{range $x := P}}   {{range $i, $x := P}}
    {{/* comments */}}   trim markers {{- and -}}

`parse(text)` refuses anything else when the file loads, naming line and column
(TemplateSyntaxError, a ConfigError). `Template.render(variables)` raises
TemplateError where Go's would fail with matchbox's `missingkey=error`: a missing
key in `.key`, a field of a non-object, ranging over a string or number, an index
out of range. Values print as Go's `%v` prints what `encoding/json` decoded
(`true`, `3`, `1e+07`, `[a b]`, `map[a:1]`). One deliberate difference: where Go
would print `<no value>` (a null, or `index` of a missing key), rendering fails
instead, so no machine gets those words in its config.

Pure: no files, no sockets. tests/gotemplate/ holds the Go program the tests use
to hold this module to Go's own output.
"""

import decimal
import re
from typing import NamedTuple

from render import ConfigError

KEYWORDS = ("if", "else", "end", "range", "index", "with", "define", "template",
            "block", "nil", "true", "false", "break", "continue", "not", "and", "or")
_SPACE = " \t\r\n"
_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\n]+)
  | (?P<declare>:=)
  | (?P<comma>,)
  | (?P<var>\$[A-Za-z0-9_]*)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+)
  | (?P<dot>\.)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<number>-?[0-9]+)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
""", re.X)
_FIELDS_AFTER_VAR = re.compile(r"(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


class TemplateSyntaxError(ConfigError):
    """A construct outside the supported subset, or broken syntax; line and col
    (1-based) say where."""


class TemplateError(ValueError):
    """Rendering failed for these variables (Go's execution error); the message
    says at which action and why."""


class Template(NamedTuple):
    nodes: tuple
    text: str

    def render(self, variables):
        """The filled-in text (str). Raises TemplateError."""
        out = []
        _walk(self.nodes, variables, {"$": variables}, out)
        return "".join(out)


# ---------------------------------------------------------------- parsing

def parse(text):
    """A Template from the file's text, or TemplateSyntaxError."""
    items = _lex(text)
    parser = _Parser(items)
    return Template(parser.block(), text)


def parse_file(data):
    """A Template from a file's bytes (UTF-8), or ConfigError."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("not UTF-8 (byte %d)" % e.start) from None
    return parse(text)


def _lex(text):
    """[("text", str)] and [("action", words, line, col)] in order, trims applied."""
    items = []
    pos = 0
    trim_next = False
    while True:
        start = text.find("{{", pos)
        chunk = text[pos:] if start < 0 else text[pos:start]
        if trim_next:
            chunk = chunk.lstrip(_SPACE)
        if start < 0:
            if chunk:
                items.append(("text", chunk))
            return items
        line, col = _position(text, start)
        inner = start + 2
        if text.startswith("-", inner) and text[inner + 1:inner + 2] in tuple(_SPACE):
            chunk = chunk.rstrip(_SPACE)
            inner += 2
        if chunk:
            items.append(("text", chunk))
        end = _action_end(text, inner, line, col)
        body = text[inner:end]
        trim_next = False
        close = end + 2
        if body.endswith("-") and body[-2:-1] in tuple(_SPACE) and len(body) >= 2:
            body = body[:-2]
            trim_next = True
        stripped = body.strip(_SPACE)
        if stripped.startswith("/*"):
            if not (body.endswith("*/") and len(body) >= 4) or not body.startswith("/*"):
                raise TemplateSyntaxError("a comment must be written {{/* ... */}}",
                                          line, col)
        else:
            items.append(("action", _words(body, text, inner), line, col))
        pos = close


def _action_end(text, inner, line, col):
    """Index of the `}}` closing the action that starts at `inner` (strings may
    contain `}}`; a comment ends at `*/`)."""
    i = inner
    if text.startswith("/*", i) or text[i:].lstrip(_SPACE).startswith("/*"):
        close = text.find("*/", i)
        if close < 0:
            raise TemplateSyntaxError("unclosed comment", line, col)
        i = close + 2
    while i < len(text):
        ch = text[i]
        if text.startswith("}}", i):
            return i
        if ch in "\"`":
            end = text.find(ch, i + 1) if ch == "`" else _string_end(text, i)
            if end < 0:
                raise TemplateSyntaxError("unterminated quoted string", line, col)
            i = end + 1
            continue
        i += 1
    raise TemplateSyntaxError("unclosed action: no }} after this {{", line, col)


def _string_end(text, i):
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
            continue
        if text[j] == '"':
            return j
        if text[j] == "\n":
            return -1
        j += 1
    return -1


def _words(body, text, offset):
    """The tokens of one action: (kind, value, line, col)."""
    words = []
    pos = 0
    while pos < len(body):
        m = _TOKEN.match(body, pos)
        line, col = _position(text, offset + pos)
        if not m:
            raise TemplateSyntaxError("%r is not part of the template language bootcfg "
                                      "speaks" % _cut(body[pos:]), line, col)
        kind = m.lastgroup
        value = m.group()
        if kind == "var":
            rest = _FIELDS_AFTER_VAR.match(body, m.end())
            if rest:
                value += rest.group()
                m = rest
        if kind != "space":
            after = body[m.end():m.end() + 1]
            if after and after not in _SPACE and kind not in ("comma",) and \
                    after != "," and not (kind == "var" and body.startswith(":=", m.end())):
                raise TemplateSyntaxError("%r is not part of the template language bootcfg "
                                          "speaks" % _cut(body[pos:]), line, col)
            words.append((kind, value, line, col))
        pos = m.end()
    return words


class _Parser:
    def __init__(self, items):
        self.items = items
        self.at = 0
        self.scopes = [{"$"}]

    def block(self, opened=None):
        """Nodes up to the {{end}} or {{else}} that closes the block opened at
        `opened` (line, col), left for the caller; to the end of the file when
        `opened` is None."""
        nodes = []
        while self.at < len(self.items):
            item = self.items[self.at]
            if item[0] == "text":
                nodes.append(("text", item[1]))
                self.at += 1
                continue
            _, words, line, col = item
            head = words[0] if words else ("", "", line, col)
            if head[0] == "word" and head[1] in ("end", "else"):
                if opened is None:
                    raise TemplateSyntaxError("{{%s}} without an {{if}} or {{range}}"
                                              % head[1], line, col)
                return tuple(nodes)
            self.at += 1
            if head[0] == "word" and head[1] == "if":
                nodes.append(self.if_node(words[1:], line, col))
            elif head[0] == "word" and head[1] == "range":
                nodes.append(self.range_node(words[1:], line, col))
            else:
                nodes.append(("print", self.expr(words, line, col), line, col))
        if opened is not None:
            raise TemplateSyntaxError("no {{end}} for this block", *opened)
        return tuple(nodes)

    def closing(self):
        """The {{else ...}} or {{end}} that ended a block: (words, line, col)."""
        _, words, line, col = self.items[self.at]
        self.at += 1
        return words, line, col

    def else_to_end(self, words, line, col, opened):
        """After a plain {{else}}: its nodes, and the {{end}} that must follow."""
        self.no_more(words, 1, line, col)
        nodes = self.block(opened)
        words, line, col = self.closing()
        if words[0][1] != "end":
            raise TemplateSyntaxError("{{else}} after {{else}}", line, col)
        self.no_more(words, 1, line, col)
        return nodes

    def if_node(self, words, line, col):
        branches = [(self.expr(words, line, col), self.block((line, col)))]
        while True:
            closing, cline, ccol = self.closing()
            if closing[0][1] == "end":
                self.no_more(closing, 1, cline, ccol)
                return ("if", tuple(branches), ())
            if len(closing) > 1 and closing[1][:2] == ("word", "if"):
                branches.append((self.expr(closing[2:], cline, ccol),
                                 self.block((line, col))))
                continue
            return ("if", tuple(branches), self.else_to_end(closing, cline, ccol, (line, col)))

    def range_node(self, words, line, col):
        names = []
        if len(words) >= 2 and words[0][0] == "var" and words[1][0] in ("declare", "comma"):
            names.append(words[0][1])
            words = words[1:]
            if words[0][0] == "comma":
                if len(words) < 3 or words[1][0] != "var" or words[2][0] != "declare":
                    raise TemplateSyntaxError("range: expected $index, $element :=", line, col)
                names.append(words[1][1])
                words = words[2:]
            words = words[1:]
            for name in names:
                if "." in name or name == "$":
                    raise TemplateSyntaxError("range: %s cannot be declared" % name, line, col)
        source = self.expr(words, line, col)
        self.scopes.append(set(names))
        body = self.block((line, col))
        self.scopes.pop()
        closing, cline, ccol = self.closing()
        otherwise = ()
        if closing[0][1] == "else":
            otherwise = self.else_to_end(closing, cline, ccol, (line, col))
        else:
            self.no_more(closing, 1, cline, ccol)
        return ("range", tuple(names), source, body, otherwise)

    def expr(self, words, line, col):
        if not words:
            raise TemplateSyntaxError("empty action", line, col)
        kind, value, wline, wcol = words[0]
        if kind == "word" and value == "index":
            if len(words) < 3:
                raise TemplateSyntaxError("index needs a value and at least one key",
                                          wline, wcol)
            keys = tuple(self.literal(w) for w in words[2:])
            return ("index", self.term(words[1]), keys, line, col)
        if kind == "word":
            return self.term(words[0])
        if len(words) > 1:
            raise TemplateSyntaxError("%r: only one value per action is supported (no "
                                      "functions, pipes or arguments)" % words[1][1],
                                      words[1][2], words[1][3])
        return self.term(words[0])

    def term(self, word):
        kind, value, line, col = word
        if kind == "dot":
            return ("field", ".", (), value, line, col)
        if kind == "field":
            return ("field", ".", tuple(value[1:].split(".")), value, line, col)
        if kind == "var":
            name, _, rest = value.partition(".")
            if not any(name in scope for scope in self.scopes):
                raise TemplateSyntaxError("undefined variable %s" % name, line, col)
            return ("field", name, tuple(rest.split(".")) if rest else (), value, line, col)
        if kind in ("string", "raw"):
            return ("literal", self.literal(word), value, line, col)
        if kind == "word":
            raise TemplateSyntaxError("%r is not supported here (supported: .key, $var, "
                                      "index, if, else, range, end)" % value, line, col)
        raise TemplateSyntaxError("%s is not a value bootcfg templates can print"
                                  % value, line, col)

    @staticmethod
    def literal(word):
        kind, value, line, col = word
        if kind == "string":
            try:
                return _go_unquote(value)
            except ValueError as e:
                raise TemplateSyntaxError(str(e), line, col) from None
        if kind == "raw":
            return value[1:-1]
        if kind == "number":
            return int(value)
        raise TemplateSyntaxError("index keys must be \"strings\" or whole numbers, not %s"
                                  % value, line, col)

    @staticmethod
    def no_more(words, n, line, col):
        if len(words) > n:
            raise TemplateSyntaxError("unexpected %r in {{%s}}" % (words[n][1], words[0][1]),
                                      line, col)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "a": "\a", "b": "\b",
            "f": "\f", "v": "\v", "'": "'"}


def _go_unquote(text):
    out, i, body = [], 0, text[1:-1]
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1:i + 2]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in ("x", "u", "U"):
            width = {"x": 2, "u": 4, "U": 8}[nxt]
            digits = body[i + 2:i + 2 + width]
            if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise ValueError("bad escape in %s" % text)
            out.append(chr(int(digits, 16)))
            i += 2 + width
        else:
            raise ValueError("escape \\%s in %s is not supported" % (nxt, text))
    return "".join(out)


# ---------------------------------------------------------------- rendering

def _walk(nodes, dot, scope, out):
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "print":
            value = _eval(node[1], dot, scope)
            if value is None:
                raise TemplateError("%d:%d: %s has no value (Go would print <no value>)"
                                    % (node[2], node[3], _shown(node[1])))
            out.append(go_format(value))
        elif kind == "if":
            for cond, body in node[1]:
                if truth(_eval(cond, dot, scope)):
                    _walk(body, dot, scope, out)
                    break
            else:
                _walk(node[2], dot, scope, out)
        else:
            _range(node, dot, scope, out)


def _range(node, dot, scope, out):
    _, names, source, body, otherwise = node
    value = _eval(source, dot, scope)
    if value is None:
        pairs = []
    elif isinstance(value, list):
        pairs = list(enumerate(value))
    elif isinstance(value, dict):
        pairs = sorted(value.items())
    else:
        raise TemplateError("%d:%d: range can't iterate over %s"
                            % (source[-2], source[-1], go_format(value)))
    if not pairs:
        _walk(otherwise, dot, scope, out)
        return
    for key, item in pairs:
        inner = dict(scope)
        if len(names) == 1:
            inner[names[0]] = item
        elif len(names) == 2:
            inner[names[0]], inner[names[1]] = key, item
        _walk(body, item, inner, out)


def _eval(expr, dot, scope):
    if expr[0] == "index":
        _, term, keys, line, col = expr
        value = _eval(term, dot, scope)
        for key in keys:
            value = _index(value, key, line, col, expr)
        return value
    if expr[0] == "literal":
        return expr[1]
    _, base, path, shown, line, col = expr
    value = dot if base == "." else scope[base]
    walked = base if base != "." else ""
    for name in path:
        walked += "." + name
        if isinstance(value, dict):
            if name not in value:
                if isinstance(value, LenientMap):
                    return value.placeholder
                raise TemplateError("%d:%d: %s: map has no entry for key %r"
                                    % (line, col, shown, name))
            value = value[name]
        elif value is None:
            raise TemplateError("%d:%d: %s: nil evaluating field %s" % (line, col, shown, name))
        else:
            raise TemplateError("%d:%d: %s: can't evaluate field %s in %s"
                                % (line, col, shown, name, _kind(value)))
    return value


def _index(value, key, line, col, expr):
    where = "%d:%d: %s" % (line, col, _shown(expr))
    if isinstance(value, dict):
        if not isinstance(key, str):
            raise TemplateError("%s: key %r should be a string" % (where, key))
        if isinstance(value, LenientMap) and key not in value:
            return value.placeholder
        return value.get(key)
    if isinstance(value, list):
        if not isinstance(key, int) or isinstance(key, bool):
            raise TemplateError("%s: a list is indexed by a whole number" % where)
        if not 0 <= key < len(value):
            raise TemplateError("%s: index out of range: %d" % (where, key))
        return value[key]
    if value is None:
        raise TemplateError("%s: index of untyped nil" % where)
    raise TemplateError("%s: can't index item of type %s" % (where, _kind(value)))


class LenientMap(dict):
    """A mapping whose missing keys read as `placeholder`: what `check` gives a
    template for values known only per request (request.query)."""

    placeholder = "x"


def truth(value):
    """Go's truth: false, 0, nil and empty strings, lists and maps are false."""
    if value is None or value is False:
        return False
    if isinstance(value, (int, float, str, list, dict)) and not isinstance(value, bool):
        return bool(value)
    return True


def go_format(value):
    """`value` as Go's fmt %v prints what encoding/json decoded."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "<nil>"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return go_float(float(value))
    if isinstance(value, list):
        return "[" + " ".join(go_format(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join("%s:%s" % (k, go_format(value[k]))
                                 for k in sorted(value)) + "]"
    return str(value)


def go_float(f):
    """A float64 as Go's %v prints it: shortest digits, exponent form when the
    exponent is below -4 or 6 and above (1e+07, 1.5e-05, 100000)."""
    if f != f:
        return "NaN"
    if f in (float("inf"), float("-inf")):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if str(f).startswith("-") else "0"
    sign, digits, exponent = decimal.Decimal(repr(f)).normalize().as_tuple()
    text = "".join(map(str, digits))
    exp = len(digits) + exponent - 1
    prefix = "-" if sign else ""
    if exp < -4 or exp >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return "%s%se%s%02d" % (prefix, mantissa, "-" if exp < 0 else "+", abs(exp))
    if exp < 0:
        return prefix + "0." + "0" * (-exp - 1) + text
    if len(text) <= exp + 1:
        return prefix + text + "0" * (exp + 1 - len(text))
    return prefix + text[:exp + 1] + "." + text[exp + 1:]


def _kind(value):
    return {dict: "a map", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _shown(expr):
    if expr[0] == "index":
        return "index %s %s" % (_shown(expr[1]), " ".join(
            '"%s"' % k if isinstance(k, str) else str(k) for k in expr[2]))
    return expr[-3]


def _position(text, at):
    line = text.count("\n", 0, at) + 1
    return line, at - (text.rfind("\n", 0, at) + 1) + 1


def _cut(text, limit=24):
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "..."
