"""Unit-test verdicts that the tested program cannot touch.

A test such as ``assert average([1, 2]) == 1.5`` is split in two (``compile_tests``):

* **probes**: the calls into the solution, ``average([1, 2])``, with their arguments as plain
  data. Only these go into the sandbox, which calls them and prints each return value as plain,
  type-tagged JSON (``encode``);
* **the check**: the rest of the assert, ``<probe 0> == 1.5``, evaluated here, in the trainer,
  on the decoded values (``judge``), by a small evaluator over plain data (``evaluate``).

So the sandboxed interpreter never holds an expected value, an ``assert`` or a comparison to
subvert: patching ``exec``, ``compile`` or ``builtins``, an object whose ``__eq__`` is always
True, forging the harness's output or reading its frames can only change what the solution
*claims* to return, which is exactly what an honest solution does by returning it. A value that
is not plain data (an instance of the solution's class, a subclass of ``int``) does not cross
the boundary: it is opaque and fails every check. Every probe's result line carries the run's
token, and a probe reported twice with different values fails.

Supported test forms: ``assert`` statements whose expressions combine calls to the solution's
functions (names the solution defines, e.g. the entry point) with data literals, names bound by
earlier data assignments (``xs = [3, 1]``), arithmetic, comparisons, boolean logic, indexing and
pure built-ins (``abs``, ``len``, ``sorted``, ``round``, ``isinstance``, ...). Anything else (a
call with side effects on a variable, ``try``/``except``, attribute access on the solution's
objects) raises ``UnsupportedTest`` with the test and the reason, so a dataset is checked before
training starts instead of being judged in a way a policy could game.
"""

from __future__ import annotations

import ast
import builtins
import json
import operator
import re
from dataclasses import dataclass, field
from typing import Any


class UnsupportedTest(ValueError):
    """A test this module cannot judge outside the sandbox (the message says why)."""


# --- plain data across the boundary --------------------------------------------------------

MAX_DEPTH = 64


class Opaque:
    """A value that was not plain data in the sandbox: equal to nothing, usable for nothing."""

    def __init__(self, type_name: str):
        self.type_name = type_name

    def __eq__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"<opaque {self.type_name}>"


def decode(tagged: Any, depth: int = 0) -> Any:
    """Plain Python data from the type-tagged JSON of ``_ENCODER`` (see there); anything
    malformed becomes ``Opaque``."""
    if depth > MAX_DEPTH or not isinstance(tagged, dict) or len(tagged) != 1:
        return Opaque("malformed")
    ((tag, v),) = tagged.items()
    try:
        if tag == "n":
            return None
        if tag == "b" and isinstance(v, bool):
            return v
        if tag == "i" and isinstance(v, str):
            return int(v)
        if tag == "f" and isinstance(v, str):
            return float(v)
        if tag == "c" and isinstance(v, list) and len(v) == 2:
            return complex(float(v[0]), float(v[1]))
        if tag == "s" and isinstance(v, str):
            return v
        if tag == "y" and isinstance(v, str):
            return bytes.fromhex(v)
        if tag in ("l", "t", "S", "F") and isinstance(v, list):
            items = [decode(x, depth + 1) for x in v]
            return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)
        if tag == "d" and isinstance(v, list):
            return {decode(k, depth + 1): decode(x, depth + 1) for k, x in v}
        if tag == "x" and isinstance(v, str):
            return Opaque(v[:80])
    except (ValueError, TypeError, OverflowError):
        pass
    return Opaque("malformed")


def encode(value: Any, depth: int = 0) -> Any:
    """The trusted side's encoder (for probe arguments), the same format as ``_ENCODER``."""
    kind = type(value)
    if depth > MAX_DEPTH:
        raise UnsupportedTest("argument nested too deeply")
    if value is None:
        return {"n": None}
    if kind is bool:
        return {"b": value}
    if kind is int:
        return {"i": str(value)}
    if kind is float:
        return {"f": repr(value)}
    if kind is complex:
        return {"c": [repr(value.real), repr(value.imag)]}
    if kind is str:
        return {"s": value}
    if kind is bytes:
        return {"y": value.hex()}
    if kind in (list, tuple, set, frozenset):
        tag = {list: "l", tuple: "t", set: "S", frozenset: "F"}[kind]
        return {tag: [encode(x, depth + 1) for x in value]}
    if kind is dict:
        return {"d": [[encode(k, depth + 1), encode(x, depth + 1)] for k, x in value.items()]}
    raise UnsupportedTest(f"argument of type {kind.__name__} is not plain data")


# The same encoding, inside the sandbox (no imports of ours there). Exact types only: a subclass
# of int or a user class is reported as opaque, never converted through its own methods.
_ENCODER = r'''
def _pt_encode(v, depth=0):
    t = type(v)
    if depth > 64:
        return {"x": "too deep"}
    if v is None:
        return {"n": None}
    if t is bool:
        return {"b": v}
    if t is int:
        return {"i": int.__repr__(v)}
    if t is float:
        return {"f": float.__repr__(v)}
    if t is complex:
        return {"c": [float.__repr__(v.real), float.__repr__(v.imag)]}
    if t is str:
        return {"s": str.__str__(v)}
    if t is bytes:
        return {"y": bytes.hex(v)}
    if t in (list, tuple, set, frozenset):
        tag = {list: "l", tuple: "t", set: "S", frozenset: "F"}[t]
        return {tag: [_pt_encode(x, depth + 1) for x in v]}
    if t is dict:
        return {"d": [[_pt_encode(k, depth + 1), _pt_encode(x, depth + 1)] for k, x in dict.items(v)]}
    return {"x": t.__name__ if isinstance(getattr(t, "__name__", None), str) else "?"}
def _pt_decode(v):
    ((tag, x),) = v.items()
    if tag == "n": return None
    if tag in ("b", "s"): return x
    if tag == "i": return int(x)
    if tag == "f": return float(x)
    if tag == "c": return complex(float(x[0]), float(x[1]))
    if tag == "y": return bytes.fromhex(x)
    if tag in ("l", "t", "S", "F"):
        return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](_pt_decode(i) for i in x)
    if tag == "d": return {_pt_decode(k): _pt_decode(i) for k, i in x}
    raise ValueError(tag)
'''


# --- compiling tests into probes and checks --------------------------------------------------


@dataclass
class Probe:
    """One call into the solution: ``function(*args, **kwargs)``; each argument is
    ``("value", tagged JSON)`` or ``("probe", k)``, the plain result of an earlier probe."""

    function: str
    args: list[tuple[str, Any]]
    kwargs: dict[str, tuple[str, Any]] = field(default_factory=dict)


@dataclass
class Check:
    """One test: its source, and the trusted expression over ``__probe_<k>`` names."""

    source: str
    expression: ast.expr
    bindings: dict[str, Any]  # names bound by the test's data assignments


SAFE_FUNCTIONS: dict[str, Any] = {
    name: getattr(builtins, name)
    for name in ("abs", "len", "sorted", "min", "max", "sum", "round", "set", "frozenset",
                 "list", "tuple", "dict", "str", "int", "float", "bool", "complex", "any",
                 "all", "isinstance", "type", "reversed", "repr")
}
SAFE_METHODS = {
    str: {"lower", "upper", "strip", "lstrip", "rstrip", "split", "join", "startswith",
          "endswith", "replace", "count", "find", "isdigit", "isalpha", "title"},
    list: {"count", "index"}, tuple: {"count", "index"},
    dict: {"keys", "values", "items", "get"},
    set: {"issubset", "issuperset", "union", "intersection"},
}
MAX_SEQUENCE = 10**6  # sequences built by the trusted evaluator
MAX_EXPONENT = 10_000


class _Compiler:
    """Turns test statements into probes (calls into the solution) and checks."""

    def __init__(self) -> None:
        self.probes: list[Probe] = []
        self.keys: dict[str, int] = {}  # dedupe identical calls within a row

    def compile(self, source: str) -> Check:
        try:
            module = ast.parse(source)
        except SyntaxError as err:
            raise UnsupportedTest(f"not valid Python: {err.msg}") from None
        bindings: dict[str, Any] = {}
        asserts: list[ast.expr] = []
        for node in module.body:
            if isinstance(node, ast.Assert):
                asserts.append(self.transform(node.test, bindings))
            elif (isinstance(node, ast.Assign) and len(node.targets) == 1
                  and isinstance(node.targets[0], ast.Name)):
                value = self.transform(node.value, bindings)
                if _mentions_probe(value):
                    raise UnsupportedTest("assigns a call to the solution to a variable; use "
                                          "the call inside the assert")
                bindings[node.targets[0].id] = evaluate(value, {}, bindings)
            else:
                raise UnsupportedTest(f"has a `{type(node).__name__}` statement; only data "
                                      "assignments and asserts can be judged outside the sandbox")
        if not asserts:
            raise UnsupportedTest("has no assert")
        expression = asserts[0] if len(asserts) == 1 else ast.BoolOp(op=ast.And(), values=asserts)
        _validate(expression)
        return Check(source, expression, bindings)

    def transform(self, node: ast.expr, bindings: dict[str, Any]) -> ast.expr:
        """``node`` with every call into the solution replaced by ``Name('__probe_<k>')``."""
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and (
                node.func.id not in SAFE_FUNCTIONS and node.func.id not in bindings):
            args = [self.argument(a, bindings) for a in node.args]
            kwargs = {}
            for kw in node.keywords:
                if kw.arg is None:
                    raise UnsupportedTest("uses **kwargs in a call to the solution")
                kwargs[kw.arg] = self.argument(kw.value, bindings)
            probe = Probe(node.func.id, args, kwargs)
            key = json.dumps([probe.function, probe.args, sorted(probe.kwargs.items())])
            if key not in self.keys:
                self.keys[key] = len(self.probes)
                self.probes.append(probe)
            return ast.copy_location(ast.Name(id=f"__probe_{self.keys[key]}", ctx=ast.Load()), node)
        if isinstance(node, ast.Starred):
            raise UnsupportedTest("uses * unpacking")
        if isinstance(node, ast.Name) and node.id not in SAFE_FUNCTIONS and (
                node.id not in bindings) and not node.id.startswith("__probe_"):
            raise UnsupportedTest(f"refers to `{node.id}` other than by calling it; only calls "
                                  "to the solution cross into the sandbox")
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp,
                             ast.GeneratorExp, ast.NamedExpr, ast.Await, ast.Yield,
                             ast.YieldFrom, ast.JoinedStr)):
            raise UnsupportedTest(f"uses {type(node).__name__}")
        for name, value in ast.iter_fields(node):
            if isinstance(value, ast.expr):
                setattr(node, name, self.transform(value, bindings))
            elif isinstance(value, list):
                setattr(node, name, [self.transform(v, bindings) if isinstance(v, ast.expr)
                                     else v for v in value])
        return node

    def argument(self, node: ast.expr, bindings: dict[str, Any]) -> tuple[str, Any]:
        node = self.transform(node, bindings)
        if isinstance(node, ast.Name) and node.id.startswith("__probe_"):
            return ("probe", int(node.id[len("__probe_"):]))
        if _mentions_probe(node):
            raise UnsupportedTest("computes on a solution's result before passing it to "
                                  "another call; pass the call itself")
        return ("value", encode(evaluate(node, {}, bindings)))


_EXPRESSIONS = (ast.Constant, ast.Name, ast.List, ast.Tuple, ast.Set, ast.Dict, ast.UnaryOp,
                ast.BinOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Subscript, ast.Call,
                ast.Slice, ast.Load, ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
                ast.keyword)
_METHOD_NAMES = set().union(*SAFE_METHODS.values())


def _validate(expression: ast.expr) -> None:
    """Refuse, at compile time, what ``evaluate`` would not judge: other node types,
    attributes other than a pure method call, calls to anything but a pure built-in."""
    for node in ast.walk(expression):
        if isinstance(node, ast.Attribute):
            continue  # checked with its call below
        if not isinstance(node, _EXPRESSIONS):
            raise UnsupportedTest(f"uses {type(node).__name__}")
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                if func.attr not in _METHOD_NAMES:
                    raise UnsupportedTest(f"calls .{func.attr}(), not a pure method of a "
                                          "built-in type")
            elif not (isinstance(func, ast.Name) and func.id in SAFE_FUNCTIONS):
                raise UnsupportedTest("calls something that is not a pure built-in")
    attributes = {id(n.func) for n in ast.walk(expression)
                  if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    for node in ast.walk(expression):
        if isinstance(node, ast.Attribute) and id(node) not in attributes:
            raise UnsupportedTest(f"reads the attribute .{node.attr}; only calls to the "
                                  "solution cross into the sandbox")


def _mentions_probe(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id.startswith("__probe_") for n in ast.walk(node))


def compile_tests(tests: list[str]) -> tuple[list[Probe], list[Check]]:
    """The row's probes (shared by its tests) and one check per test; ``UnsupportedTest`` names
    the test (by number and text) that cannot be judged outside the sandbox."""
    compiler = _Compiler()
    checks = []
    for i, source in enumerate(tests):
        try:
            checks.append(compiler.compile(source))
        except UnsupportedTest as err:
            raise UnsupportedTest(f"test {i} `{source.strip()[:120]}` {err}") from None
    return compiler.probes, checks


# --- the sandboxed side ---------------------------------------------------------------------

_HARNESS = _ENCODER + r'''
import json as _json, os as _os, signal as _signal
_write = _os.write
_TOKEN = @TOKEN@
_PROBES = _json.loads(@PROBES@)
_LIMIT = @LIMIT@
_SOLUTION = @SOLUTION@
try:
    _os.unlink(__file__)
except OSError:
    pass
class _Timeout(BaseException):
    pass
def _alarm(signum, frame):
    raise _Timeout("call took longer than %ss" % _LIMIT)
_signal.signal(_signal.SIGALRM, _alarm)
_globals = {"__name__": "solution"}
_signal.setitimer(_signal.ITIMER_REAL, _LIMIT)
try:
    exec(compile(_SOLUTION, "solution.py", "exec"), _globals)
finally:
    _signal.setitimer(_signal.ITIMER_REAL, 0)
_results = {}
for _k, (_name, _args, _kwargs) in enumerate(_PROBES):
    def _arg(a):
        return _pt_decode(_results[a[1]]) if a[0] == "probe" else _pt_decode(a[1])
    _line = {"error": "not run"}
    _signal.setitimer(_signal.ITIMER_REAL, _LIMIT)
    try:
        _value = _globals[_name](*[_arg(a) for a in _args],
                                 **{k: _arg(a) for k, a in _kwargs.items()})
        _signal.setitimer(_signal.ITIMER_REAL, 0)
        _results[_k] = _pt_encode(_value)
        _line = {"value": _results[_k]}
    except BaseException as _exc:
        _signal.setitimer(_signal.ITIMER_REAL, 0)
        _line = {"error": type(_exc).__name__}
        _results[_k] = {"x": "error"}
    _write(1, ("\n%s %d %s\n" % (_TOKEN, _k, _json.dumps(_line))).encode())
'''


def harness_program(solution: str, probes: list[Probe], token: str, per_call_s: float) -> str:
    """The sandboxed program: define the solution, call each probe, print each result."""
    payload = json.dumps([[p.function, p.args, p.kwargs] for p in probes])
    values = {"@TOKEN@": repr(token), "@PROBES@": repr(payload),
              "@LIMIT@": repr(float(per_call_s)), "@SOLUTION@": repr(solution)}
    # one pass over the template: text put in (the solution, the arguments) is never rescanned
    return re.sub(r"@(TOKEN|PROBES|LIMIT|SOLUTION)@", lambda m: values[m.group(0)], _HARNESS)


def probe_results(stdout: str, token: str, count: int) -> list[Any]:
    """Each probe's decoded value, or ``_FAILED`` when it raised, timed out, was not reported,
    or was reported twice with different values."""
    seen: dict[int, set[str]] = {}
    for line in stdout.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == token and parts[1].isdigit():
            seen.setdefault(int(parts[1]), set()).add(parts[2])
    results: list[Any] = []
    for k in range(count):
        lines = seen.get(k, set())
        if len(lines) != 1:
            results.append(_FAILED)
            continue
        try:
            line = json.loads(next(iter(lines)))
        except ValueError:
            results.append(_FAILED)
            continue
        results.append(decode(line["value"]) if isinstance(line, dict) and "value" in line
                       else _FAILED)
    return results


_FAILED = Opaque("failed")


def judge(check: Check, results: list[Any]) -> bool:
    """Does the test pass, given the probes' plain results? Any error is a failure."""
    env = {f"__probe_{k}": value for k, value in enumerate(results)}
    needed = {n.id for n in ast.walk(check.expression)
              if isinstance(n, ast.Name) and n.id.startswith("__probe_")}
    if any(env.get(name) is _FAILED for name in needed):
        return False
    try:
        outcome = evaluate(check.expression, env, check.bindings)
    except Exception:  # noqa: BLE001 - a check that cannot be evaluated on these values fails
        return False
    return _truthy(outcome)


def _truthy(value: Any) -> bool:
    if isinstance(value, Opaque):
        return False
    try:
        return bool(value)
    except Exception:  # noqa: BLE001
        return False


# --- the trusted evaluator ----------------------------------------------------------------

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.Pow: operator.pow, ast.BitAnd: operator.and_, ast.BitOr: operator.or_,
           ast.BitXor: operator.xor, ast.LShift: operator.lshift, ast.RShift: operator.rshift}
_UNARY = {ast.Not: operator.not_, ast.USub: operator.neg, ast.UAdd: operator.pos,
          ast.Invert: operator.invert}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
            ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Is: operator.is_, ast.IsNot: operator.is_not,
            ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}


def evaluate(node: ast.expr, env: dict[str, Any], bindings: dict[str, Any]) -> Any:
    """Evaluate a test expression over plain data, with nothing but the operations above: no
    attribute access beyond a few pure methods of built-in types, no calls but SAFE_FUNCTIONS,
    and size guards on the operations that could make a huge value."""
    ev = lambda n: evaluate(n, env, bindings)  # noqa: E731
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in env:
            return env[node.id]
        if node.id in bindings:
            return bindings[node.id]
        if node.id in SAFE_FUNCTIONS:
            return SAFE_FUNCTIONS[node.id]
        raise UnsupportedTest(f"unknown name {node.id}")
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [ev(e) for e in node.elts]
        return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise UnsupportedTest("uses ** in a dict display")
        return {ev(k): ev(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_plain(ev(node.operand)))
    if isinstance(node, ast.BinOp):
        left, right = _plain(ev(node.left)), _plain(ev(node.right))
        _guard(node.op, left, right)
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.BoolOp):
        result: Any = None
        for value in node.values:
            result = ev(value)
            if isinstance(node.op, ast.And) and not _truthy(result):
                return result
            if isinstance(node.op, ast.Or) and _truthy(result):
                return result
        return result
    if isinstance(node, ast.Compare):
        left = ev(node.left)
        for op, comparator in zip(node.ops, node.comparators):
            right = ev(comparator)
            if isinstance(op, (ast.Is, ast.IsNot)) and not (
                    right is None or type(right) is bool or left is None or type(left) is bool):
                raise UnsupportedTest("`is` compares identities, which do not cross the "
                                      "sandbox; use == (or `is` with True, False, None)")
            if isinstance(left, Opaque) or isinstance(right, Opaque):
                return False
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return ev(node.body) if _truthy(ev(node.test)) else ev(node.orelse)
    if isinstance(node, ast.Subscript):
        value = _plain(ev(node.value))
        return value[_index(node.slice, ev)]
    if isinstance(node, ast.Call):
        return _call(node, ev)
    raise UnsupportedTest(f"uses {type(node).__name__}")


def _index(node: ast.expr, ev) -> Any:
    if isinstance(node, ast.Slice):
        return slice(*(ev(p) if p is not None else None for p in (node.lower, node.upper,
                                                                   node.step)))
    return ev(node)


def _call(node: ast.Call, ev) -> Any:
    args = [_plain(ev(a)) for a in node.args]
    kwargs = {kw.arg: _plain(ev(kw.value)) for kw in node.keywords if kw.arg is not None}
    if isinstance(node.func, ast.Attribute):
        owner = _plain(ev(node.func.value))
        allowed = SAFE_METHODS.get(type(owner), set())
        if node.func.attr not in allowed:
            raise UnsupportedTest(f"calls .{node.func.attr}() on a {type(owner).__name__}")
        return getattr(owner, node.func.attr)(*args, **kwargs)
    function = ev(node.func)
    if function not in SAFE_FUNCTIONS.values():
        raise UnsupportedTest("calls something that is not a pure built-in")
    for value in args:
        if isinstance(value, (list, tuple, set, frozenset, dict, str, bytes)) and (
                len(value) > MAX_SEQUENCE):
            raise OverflowError("value too large")
    return function(*args, **kwargs)


def _plain(value: Any) -> Any:
    if isinstance(value, Opaque):
        raise TypeError(f"{value!r} is not plain data")
    return value


def _guard(op: ast.operator, left: Any, right: Any) -> None:
    """Refuse operations whose result would be huge (the values may come from the solution)."""
    if isinstance(op, ast.Mult):
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, (str, bytes, list, tuple)) and isinstance(times, int) and (
                    len(seq) * max(times, 0) > MAX_SEQUENCE):
                raise OverflowError("sequence too large")
    if isinstance(op, ast.Pow) and isinstance(right, int) and isinstance(left, int) and (
            abs(right) > MAX_EXPONENT and abs(left) > 1):
        raise OverflowError("power too large")
    if isinstance(op, ast.LShift) and isinstance(right, int) and right > MAX_EXPONENT:
        raise OverflowError("shift too large")
