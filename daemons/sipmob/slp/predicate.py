"""SLPv2 predicates: LDAPv3 search filters over service attributes (RFC 2608 §8.1, RFC 2254).

Grammar (RFC 2254 §4), with what SLP adds or leaves out:

    filter     = "(" filtercomp ")"
    filtercomp = "&" 1*filter / "|" 1*filter / "!" filter / item
    item       = tag "=*" / tag "=" value-with-wildcards / tag ("~=" / "<=" / ">=") value

- The empty predicate matches every service (RFC 2608 §8.1).
- Values use ``\\XX`` escapes, the same syntax in RFC 2254 §4 and RFC 2608 §6.4. An unescaped
  ``*`` in a ``=`` value is a wildcard; ``\\2a`` is a literal star. ``\\FF`` followed by escaped
  octets is an opaque literal (§5). RFC 2254 only requires ``*``, ``(``, ``)``, ``\\`` and NUL to
  be escaped in a value, so the other characters RFC 2608 reserves (``, ! < = > ~``) are accepted
  unescaped there. Extensible matches (``:=``) are not part of SLP.
- A tag may contain ``*`` wildcards, as tag lists do (RFC 2608 §5 keeps ``*`` out of tags so it
  is never ambiguous); the item is true when any attribute whose tag matches satisfies it.
- White space is allowed around filters and tags; in values it is folded like all SLP strings.

Semantics (RFC 2608 §5, §6.4): an attribute with several values satisfies an item if any value
does. The filter value is read in the type of the registered attribute: integers compare
numerically (when the filter value is an integer), booleans only for ``=`` and ``~=``, strings
as folded strings (`sipmob.slp.names.fold`; ``<=``/``>=`` in code-point order of the folded
form, wildcards only on strings), opaque values bytewise and only with ``=``. ``~=`` is equality
of folded strings ignoring all white space, as OpenSLP implements it. A missing tag, a keyword
attribute (except for presence), or a value that cannot be read in the attribute's type makes
the item FALSE, never an error. RFC 2608 says nothing more; RFC 2251 §4.5.1 evaluates an item
over an absent attribute to FALSE (Undefined is only for unknown attribute types, which SLP
does not have), so ``(!(x=1))`` is TRUE when ``x`` is absent, as in OpenSLP.

Parsing is done twice over, on purpose: `_Parser` is a plain recursive descent that states every
error precisely, and `_fast_parse` reads a well-formed predicate with one regular expression
tokenizer (a handful of C-level scans instead of a Python step per character) and declines
anything it does not like, so that `_Parser` reports it. Evaluation is by closures compiled from
the tree (`_compile`), specialised to the common cases: the tree's own ``matches`` methods are
the reference semantics, and the unit tests check both agree. `prepare` skips the reading for a
predicate whose shape (its text without its plain values) was met before: the shape's compiled
form takes the new values, as a prepared statement does.

Not here: caching parsed predicates by their text (the Directory Agent does it), attribute list parsing
(`sipmob.slp.attrs`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sipmob.slp.attrs import (
    BAD_TAG,
    RESERVED,
    Attribute,
    AttrParseError,
    Opaque,
    is_bool_spelling,
    is_int_spelling,
    parse_opaque,
)
from sipmob.slp.names import WHITESPACE, SLPValueError, fold, fold_edges, unescape, wildcard_match

# Nesting beyond this is a parse error: no real predicate comes near it, and the parser's
# recursion (and the evaluator's) stays far below Python's limit.
MAX_DEPTH = 64
# Items (the leaves: comparisons, presence, substrings) a predicate may hold when the caller gives
# no limit. A home's queries use a handful; the DA passes its own, smaller, configured limit.
MAX_ITEMS = 4096

_OPS = ("=", "~=", "<=", ">=")


class PredicateError(SLPValueError):
    """A malformed predicate (answered with PARSE_ERROR, RFC 2608 §8.1)."""


# The filter tree ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TagRef:
    """The tag of an item: a folded exact key, or the pieces of a folded ``*`` pattern."""

    key: str
    pattern: tuple[str, ...] | None = None

    def attributes(self, attrs: Mapping[str, Attribute]) -> Iterable[Attribute]:
        if self.pattern is None:
            a = attrs.get(self.key)
            return () if a is None else (a,)
        return (a for k, a in attrs.items() if wildcard_match(self.pattern, k))


@dataclasses.dataclass(frozen=True, slots=True)
class FilterValue:
    """A filter value, pre-read in every type it could be compared as."""

    folded: str  # comparison form of the text ("" for an opaque literal)
    as_int: int | None
    as_bool: bool | None
    opaque: bytes | None
    squeezed: str  # folded, with all white space removed, for ~=

    @classmethod
    def read(cls, raw: str, at: int) -> FilterValue:
        if raw.isascii() and raw.isalnum():
            # A bare word or number, as most queries carry: nothing to unescape or fold but case.
            folded = raw.lower()
            number = None
            if raw.isdigit():
                try:
                    number = int(raw)
                except ValueError:
                    raise PredicateError(f"integer at offset {at} is too long") from None
            truth = (folded == "true") if folded in ("true", "false") else None
            return cls(folded, number, truth, None, folded)
        if raw[:3].upper() == "\\FF":
            try:
                data = parse_opaque(raw.strip(WHITESPACE))
            except AttrParseError as e:
                raise PredicateError(f"{e.reason} at offset {at}") from None
            return cls("", None, None, data, "")
        folded = fold(_unescape(raw, at))
        as_int = None
        if is_int_spelling(folded):
            try:
                as_int = int(folded)
            except ValueError:
                raise PredicateError(f"integer at offset {at} is too long") from None
        as_bool = (folded == "true") if is_bool_spelling(folded) else None
        return cls(folded, as_int, as_bool, None, folded.replace(" ", ""))

    def index_key(self) -> str | None:
        """The key every attribute value equal to this one has (see `attrs.attr_value_key`)."""
        if self.opaque is not None:
            return Opaque(self.opaque).wire().lower()
        # "012" equals the integer 12 (key "12") and the string "012" (key "012"): no single key.
        if self.as_int is not None and str(self.as_int) != self.folded:
            return None
        return self.folded


@dataclasses.dataclass(frozen=True, slots=True)
class And:
    children: tuple[Node, ...]

    def matches(self, attrs: Mapping[str, Attribute]) -> bool:
        return all(c.matches(attrs) for c in self.children)


@dataclasses.dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Node, ...]

    def matches(self, attrs: Mapping[str, Attribute]) -> bool:
        return any(c.matches(attrs) for c in self.children)


@dataclasses.dataclass(frozen=True, slots=True)
class Not:
    child: Node

    def matches(self, attrs: Mapping[str, Attribute]) -> bool:
        return not self.child.matches(attrs)


@dataclasses.dataclass(frozen=True, slots=True)
class Present:
    tag: TagRef

    def matches(self, attrs: Mapping[str, Attribute]) -> bool:
        return any(True for _ in self.tag.attributes(attrs))


@dataclasses.dataclass(frozen=True, slots=True)
class Substring:
    tag: TagRef
    pieces: tuple[str, ...]  # folded; the filter is pieces[0] * pieces[1] * ... * pieces[-1]

    def matches(self, attrs: Mapping[str, Attribute]) -> bool:
        for a in self.tag.attributes(attrs):
            if a.values and isinstance(a.values[0], str):
                if any(wildcard_match(self.pieces, f) for f in a.folded):
                    return True
        return False


@dataclasses.dataclass(frozen=True, slots=True)
class Compare:
    tag: TagRef
    op: str  # one of "=", "~=", "<=", ">="
    value: FilterValue

    def matches(self, attrs: Mapping[str, Attribute]) -> bool:
        return any(self._matches_one(a) for a in self.tag.attributes(attrs))

    def _matches_one(self, a: Attribute) -> bool:
        if not a.values:
            return False  # a keyword has no value to compare
        first, v, op = a.values[0], self.value, self.op
        if isinstance(first, bool):
            return op in ("=", "~=") and v.as_bool is not None and v.as_bool in a.values
        if isinstance(first, int):
            n = v.as_int
            if n is None:
                return False
            if op in ("=", "~="):
                return n in a.values
            ints = [x for x in a.values if isinstance(x, int)]
            return any(x <= n for x in ints) if op == "<=" else any(x >= n for x in ints)
        if isinstance(first, Opaque):
            return op == "=" and v.opaque is not None and any(
                isinstance(x, Opaque) and x.data == v.opaque for x in a.values)
        if v.opaque is not None:
            return False
        if op == "=":
            return v.folded in a.folded
        if op == "~=":
            return any(f.replace(" ", "") == v.squeezed for f in a.folded)
        if op == "<=":
            return any(f <= v.folded for f in a.folded)
        return any(f >= v.folded for f in a.folded)


Node = And | Or | Not | Present | Substring | Compare


# The parser -------------------------------------------------------------------------------------


def _unescape(raw: str, at: int) -> str:
    try:
        return unescape(raw)
    except SLPValueError as e:
        raise PredicateError(f"{e.reason} (in text at offset {at})") from None


class _Parser:
    """Recursive descent over the string, one character class test per step, no regular expressions."""

    __slots__ = ("i", "items", "max_items", "n", "s")

    def __init__(self, s: str, max_items: int = MAX_ITEMS) -> None:
        self.s = s
        self.i = 0
        self.n = len(s)
        self.items = 0
        self.max_items = max_items

    def skip_ws(self) -> None:
        s, i, n = self.s, self.i, self.n
        while i < n and s[i] in WHITESPACE:
            i += 1
        self.i = i

    def filter(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise PredicateError(f"filters nested deeper than {MAX_DEPTH}")
        self.skip_ws()
        if self.i >= self.n or self.s[self.i] != "(":
            raise PredicateError(f"expected '(' at offset {self.i}")
        self.i += 1
        self.skip_ws()
        if self.i >= self.n:
            raise PredicateError("unbalanced parentheses: predicate ends inside a filter")
        c = self.s[self.i]
        node: Node
        if c in "&|":
            self.i += 1
            children = self.filter_list(depth)
            node = And(children) if c == "&" else Or(children)
        elif c == "!":
            self.i += 1
            node = Not(self.filter(depth + 1))
        elif c == ")":
            raise PredicateError(f"empty filter at offset {self.i - 1}")
        else:
            node = self.item()
        self.skip_ws()
        if self.i >= self.n:
            raise PredicateError("unbalanced parentheses: missing ')'")
        if self.s[self.i] != ")":
            raise PredicateError(f"expected ')' at offset {self.i}")
        self.i += 1
        return node

    def filter_list(self, depth: int) -> tuple[Node, ...]:
        children = []
        while True:
            self.skip_ws()
            if self.i >= self.n or self.s[self.i] != "(":
                break
            children.append(self.filter(depth + 1))
        if not children:
            # RFC 2254 §4: filterlist = 1*filter
            raise PredicateError(f"'&' or '|' without filters at offset {self.i}")
        return tuple(children)

    def item(self) -> Node:
        self.items += 1
        if self.items > self.max_items:
            raise PredicateError(f"more than {self.max_items} items in the predicate")
        s, start, n = self.s, self.i, self.n
        i = start
        while i < n and s[i] not in "=~<>()":
            i += 1
        if i >= n or s[i] in "()":
            raise PredicateError(f"missing operator in filter at offset {start}")
        if s[i] == "=":
            op = "="
        elif i + 1 < n and s[i + 1] == "=":
            op = s[i] + "="
        else:
            raise PredicateError(f"unknown operator {s[i]!r} at offset {i}")
        tag = self.tag(s[start:i], start)
        vstart = i + len(op)
        j = vstart
        while j < n and s[j] not in "()":
            j += 1
        if j >= n:
            raise PredicateError("unbalanced parentheses: missing ')'")
        if s[j] == "(":
            raise PredicateError(f"unescaped '(' in value at offset {j}")
        self.i = j
        raw = s[vstart:j]
        body = raw.strip(WHITESPACE)
        if not body:
            raise PredicateError(f"empty value at offset {vstart}")
        if "*" not in body:
            return Compare(tag, op, FilterValue.read(body, vstart))
        if op != "=":
            raise PredicateError(f"wildcard with {op!r} at offset {vstart} (only '=' takes one)")
        if body == "*":
            return Present(tag)
        parts = raw.split("*")
        last = len(parts) - 1
        pieces = tuple(fold_edges(_unescape(p, vstart), left=k == 0, right=k == last)
                       for k, p in enumerate(parts))
        return Substring(tag, pieces)

    @staticmethod
    def tag(raw: str, at: int) -> TagRef:
        text = raw.strip(WHITESPACE)
        if not text:
            raise PredicateError(f"missing attribute tag at offset {at}")
        if any(c in RESERVED for c in text.replace("\\", "")):
            raise PredicateError(f"unescaped reserved character in tag {text!r} at offset {at}")
        parts = [_unescape(p, at) for p in text.split("*")]
        for p in parts:
            if BAD_TAG.intersection(p):
                raise PredicateError(f"tag {text!r} contains a bad-tag character (RFC 2608 §5)")
        if len(parts) == 1:
            return TagRef(fold(parts[0]))
        return TagRef(fold(text), tuple(fold(p) for p in parts))


def _collect_terms(node: Node, out: set[tuple[str, str]]) -> None:
    if isinstance(node, And):
        for c in node.children:
            _collect_terms(c, out)
    elif isinstance(node, Compare) and node.op == "=" and node.tag.pattern is None:
        key = node.value.index_key()
        if key is not None:
            out.add((node.tag.key, key))


Matcher = Callable[[Mapping[str, Attribute]], bool]


def _compile(node: Node) -> Matcher:
    """A closure evaluating `node` as its ``matches`` does, with the dispatch done once, here."""
    kind = type(node)
    if kind is And or kind is Or:
        assert isinstance(node, And | Or)
        fs = tuple(_compile(c) for c in node.children)
        if len(fs) == 1:
            return fs[0]
        if len(fs) == 2:
            f0, f1 = fs
            if kind is And:
                return lambda attrs: f0(attrs) and f1(attrs)
            return lambda attrs: f0(attrs) or f1(attrs)
        if kind is And:
            return lambda attrs: all(f(attrs) for f in fs)
        return lambda attrs: any(f(attrs) for f in fs)
    if kind is Not:
        assert isinstance(node, Not)
        f = _compile(node.child)
        return lambda attrs: not f(attrs)
    assert isinstance(node, Present | Substring | Compare)
    if node.tag.pattern is not None or kind is Substring:
        return node.matches  # wildcards: rare, and the tree's evaluator is fine
    key = node.tag.key
    if kind is Present:
        return lambda attrs: key in attrs
    assert isinstance(node, Compare)
    slow = node._matches_one
    if node.op == "=" and node.value.opaque is None:
        # String equality is what nearly every query asks; other types go the general way.
        folded = node.value.folded

        def equal(attrs: Mapping[str, Attribute]) -> bool:
            a = attrs.get(key)
            if a is None:
                return False
            values = a.values
            if values and type(values[0]) is str:
                return folded in a.folded
            return slow(a)
        return equal

    def compare(attrs: Mapping[str, Attribute]) -> bool:
        a = attrs.get(key)
        return a is not None and slow(a)
    return compare


_WS = "[ \t\r\n\v\f]*"
# One token per match: an operator after "(", a whole item (no parentheses inside), a ")", or
# any other character (which makes `_fast_parse` decline).
_TOKEN = re.compile(f"{_WS}(?:\\({_WS}([&|!])|\\(([^()]*)\\)|(\\)))|([\\s\\S])")
_ITEM = re.compile(r"([^=~<>]*)(=|[~<>]=)([\s\S]*)")
_TAG_CACHE: dict[str, TagRef] = {}
_TAG_CACHE_SIZE = 512
_ITEM_CACHE: dict[str, tuple[Node, Matcher]] = {}
_ITEM_SEEN: set[int] = set()  # hashes of items read once
_ITEM_CACHE_SIZE = 512  # items kept once read, each of at most _ITEM_CACHE_TEXT characters:
_ITEM_CACHE_TEXT = 128  # well under a megabyte in all


class _Decline(Exception):
    """`_fast_parse` cannot read the predicate: `_Parser` will (or will say why not)."""


def _fast_item(body: str) -> tuple[Node, Matcher]:
    """An item's node and compiled form; the same text (most items of a household's queries
    repeat) is read once, while it stays among the last `_ITEM_CACHE_SIZE` read."""
    known = _ITEM_CACHE.get(body)
    if known is not None:
        return known
    node = _read_item(body)
    known = (node, _compile(node))
    if len(body) <= _ITEM_CACHE_TEXT:
        # Kept once read twice, so that items naming a new value every time (a counter, a
        # timestamp) do not push out the ones that recur.
        seen = hash(body)
        if seen in _ITEM_SEEN:
            _ITEM_CACHE[body] = known
            if len(_ITEM_CACHE) > _ITEM_CACHE_SIZE:
                del _ITEM_CACHE[next(iter(_ITEM_CACHE))]
        else:
            if len(_ITEM_SEEN) >= 8 * _ITEM_CACHE_SIZE:
                _ITEM_SEEN.clear()
            _ITEM_SEEN.add(seen)
    return known


def _tag_ref(raw_tag: str) -> TagRef:
    tag = _TAG_CACHE.get(raw_tag)
    if tag is None:
        tag = _Parser.tag(raw_tag, 0)
        if len(_TAG_CACHE) >= _TAG_CACHE_SIZE:
            _TAG_CACHE.clear()
        _TAG_CACHE[raw_tag] = tag
    return tag


def _read_item(body: str) -> Node:
    m = _ITEM.match(body)
    if m is None:
        raise _Decline
    raw_tag, op, raw = m.groups()
    tag = _tag_ref(raw_tag)
    value = raw.strip(WHITESPACE)
    if not value:
        raise _Decline
    if "*" not in value:
        return Compare(tag, op, FilterValue.read(value, 0))
    if op != "=":
        raise _Decline
    if value == "*":
        return Present(tag)
    parts = raw.split("*")
    last = len(parts) - 1
    return Substring(tag, tuple(fold_edges(unescape(p), left=k == 0, right=k == last)
                                for k, p in enumerate(parts)))


def _combine(kind: str, fs: list[Matcher]) -> Matcher:
    """`_compile` of an operator whose children are compiled already."""
    if kind == "!":
        f = fs[0]
        return lambda attrs: not f(attrs)
    if len(fs) == 1:
        return fs[0]
    if len(fs) == 2:
        f0, f1 = fs
        if kind == "&":
            return lambda attrs: f0(attrs) and f1(attrs)
        return lambda attrs: f0(attrs) or f1(attrs)
    t = tuple(fs)
    if kind == "&":
        return lambda attrs: all(f(attrs) for f in t)
    return lambda attrs: any(f(attrs) for f in t)


def _fast_parse(text: str, max_items: int) -> tuple[Node, int, Matcher]:
    """The tree, item count and compiled form of a well-formed predicate; raises _Decline for
    anything else, including every error (`_Parser` then finds it and says where)."""
    stack: list[tuple[str, list[Node], list[Matcher]]] = []
    root: Node | None = None
    match: Matcher | None = None
    items = 0
    try:
        for op, body, close, other in _TOKEN.findall(text):
            if root is not None or other:
                raise _Decline
            node: Node
            if op:
                if len(stack) >= MAX_DEPTH:
                    raise _Decline
                stack.append((op, [], []))
                continue
            if close:
                if not stack:
                    raise _Decline
                kind, children, fs = stack.pop()
                if not children or (kind == "!" and len(children) != 1):
                    raise _Decline
                node = Not(children[0]) if kind == "!" else (
                    And(tuple(children)) if kind == "&" else Or(tuple(children)))
                f = _combine(kind, fs)
            else:
                items += 1
                if items > max_items or len(stack) >= MAX_DEPTH:
                    raise _Decline
                node, f = _fast_item(body)
            if stack:
                top = stack[-1]
                if top[0] == "!" and top[1]:
                    raise _Decline
                top[1].append(node)
                top[2].append(f)
            else:
                root, match = node, f
    except SLPValueError:  # PredicateError included: `_Parser` words it with its offset
        raise _Decline from None
    if root is None or match is None or stack:
        raise _Decline
    return root, items, match


@dataclasses.dataclass(frozen=True, slots=True)
class Predicate:
    """A parsed predicate; ``root`` is None for the empty predicate, which matches everything."""

    text: str
    root: Node | None
    # Items (leaves) in the tree: what one evaluation against one service costs at most.
    items: int = dataclasses.field(default=0, compare=False)
    terms: frozenset[tuple[str, str]] = dataclasses.field(init=False, repr=False, compare=False)
    # The compiled form of `root` (`_compile`); given by `parse`, which builds both at once.
    match: Matcher | None = dataclasses.field(default=None, repr=False, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        out: set[tuple[str, str]] = set()
        if self.root is not None:
            _collect_terms(self.root, out)
            if self.match is None:
                object.__setattr__(self, "match", _compile(self.root))
        object.__setattr__(self, "terms", frozenset(out))

    @classmethod
    def parse(cls, s: str, max_items: int = MAX_ITEMS) -> Predicate:
        """Parse a predicate of at most `max_items` items; raises PredicateError."""
        text = s.strip(WHITESPACE)
        if not text:
            return cls(s, None)
        try:
            root, items, match = _fast_parse(text, max_items)
        except _Decline:
            return cls.parse_slowly(s, max_items)
        return cls(s, root, items, match=match)

    @classmethod
    def parse_slowly(cls, s: str, max_items: int = MAX_ITEMS) -> Predicate:
        """`parse` by recursive descent only: the reference for the tokenizer, and the errors."""
        if not s.strip(WHITESPACE):
            return cls(s, None)
        p = _Parser(s, max_items)
        root = p.filter(1)
        p.skip_ws()
        if p.i != p.n:
            raise PredicateError(f"text after the predicate at offset {p.i}")
        return cls(s, root, p.items)

    def matches(self, attrs: Mapping[str, Attribute]) -> bool:
        """Whether a service with these attributes (keyed by folded tag) satisfies the predicate."""
        return self.match is None or self.match(attrs)

    @property
    def residual(self) -> Matcher | None:
        """`Bound.residual`'s counterpart: here ``match`` itself (None: everything matches)."""
        return self.match

    def matches_by_tree(self, attrs: Mapping[str, Attribute]) -> bool:
        """`matches` by walking the tree: the reference semantics the compiled form must keep."""
        return self.root is None or self.root.matches(attrs)

    def index_terms(self) -> frozenset[tuple[str, str]]:
        """``(fold(tag), key)`` pairs every matching service has among its `attrs.index_keys`.

        Derived from a top-level equality item without wildcards, or from such items under a
        top-level ``&`` (and ``&`` nested in it); anything under ``|`` or ``!`` adds nothing.
        An integer written non-canonically ("012") adds nothing either: it matches the integer
        12 and the string "012", whose keys differ.
        """
        return self.terms


# Prepared predicates -------------------------------------------------------------------------------
#
# A household asks the same questions with different values: "(&(room=kitchen)(!(id=4711)))".
# The text without those values is the predicate's shape; a shape seen before is bound to the
# new values without reading the text again (as a prepared statement is). Only equality items
# whose value is a plain word or number (at most 64 characters) are slots: such a value is never
# a wildcard, an opaque or an escape, so it cannot change what the item is, only what it equals.

_SLOT = re.compile(r"\(([^()=~<>*\\&|!]+)=([A-Za-z0-9]{1,64})\)")
_SLOT_BODY = re.compile(r"([^()=~<>*\\&|!]+)=([A-Za-z0-9]{1,64})")
_SHAPE_TEXT = 256  # longer predicates are read as text: each shape holds a few objects per item
_SHAPE_CACHE_SIZE = 128
_SHAPES: dict[tuple[str, ...], _Shape | None] = {}
_SHAPES_SEEN: set[int] = set()  # hashes of shapes met once: prepared when met again
_MISSING: Any = object()

Binder = Callable[[list[str]], Matcher]


class Bound:
    """A predicate read through its shape: what the Directory Agent evaluates, without a tree.

    ``terms``, ``items`` and ``match`` are those `Predicate.parse` gives for the same text.
    ``residual`` is ``match`` for a service already known to carry every one of ``terms`` (one
    found through the index): the equality items those terms decide are not tested again."""

    __slots__ = ("_bind", "_match", "_values", "items", "residual", "terms", "text")

    def __init__(self, text: str, items: int, terms: frozenset[tuple[str, str]], bind: Binder,
                 values: list[str], residual: Callable[[list[str]], Matcher | None] | None) -> None:
        self.text = text
        self.items = items
        self.terms = terms
        self._bind = bind
        self._values = values
        self._match: Matcher | None = None
        self.residual: Matcher | None  # None: every service carrying the terms matches
        if residual is None:
            self._match = self.residual = bind(values)
        else:
            self.residual = residual(values)

    @property
    def match(self) -> Matcher:
        if self._match is None:
            self._match = self._bind(self._values)
        return self._match


@dataclasses.dataclass(slots=True)
class _Shape:
    items: int
    bind: Binder
    terms: frozenset[tuple[str, str]]  # of the items that are not slots
    slot_terms: tuple[tuple[int, str], ...]  # (slot, folded tag) of slots giving a term
    residual: Callable[[list[str]], Matcher | None] | None = None  # when it differs from `bind`


def _value_key(value: str) -> str | None:
    """`FilterValue.index_key` of a slot's value."""
    if value[0] == "0" and len(value) > 1 and value.isdigit():
        return None  # "012" equals the integer 12 and the string "012": no single key
    return value.lower()


def _equal(tag: TagRef, value: str) -> Matcher:
    """`_compile` of ``Compare(tag, "=", FilterValue.read(value))`` for a slot's value."""
    key = tag.key
    folded = value.lower()
    slow: list[Compare] = []

    def equal(attrs: Mapping[str, Attribute]) -> bool:
        a = attrs.get(key)
        if a is None:
            return False
        values = a.values
        if values and type(values[0]) is str:
            return folded in a.folded
        if not slow:  # other types read the value as the tree does, once
            slow.append(Compare(tag, "=", FilterValue.read(value, 0)))
        return slow[0]._matches_one(a)
    return equal


# A part of a shape: ("slot", index, TagRef), ("item", Node, Matcher), or (op, [parts]).
_Part = tuple[Any, ...]


def _binder(part: _Part) -> tuple[Matcher | None, Binder | None]:
    """A part's matcher when it holds no slot, else a function binding values to one."""
    kind = part[0]
    if kind == "item":
        return part[2], None
    if kind == "slot":
        at, tag = part[1], part[2]
        return None, lambda values: _equal(tag, values[at])
    leaves = [_leaf(c) for c in part[1]] if kind == "&" else []
    spec = [leaf for leaf in leaves if leaf is not None]
    if spec and len(spec) == len(leaves):
        # The usual question, "(&(room=x)(!(id=y)))": one closure testing each in turn.
        return None, lambda values: _conjunction(
            [(tag, values[at] if tag is not None else "", want, f) for tag, at, want, f in spec])
    children = [_binder(c) for c in part[1]]
    if all(b is None for _, b in children):
        return _combine(kind, [m for m, _ in children if m is not None]), None
    getters = [b if b is not None else _constant(m) for m, b in children]
    if len(getters) == 1:
        (g,) = getters
        return None, lambda values: _combine(kind, [g(values)])
    if len(getters) == 2:
        g0, g1 = getters
        return None, lambda values: _combine(kind, [g0(values), g1(values)])
    return None, lambda values: _combine(kind, [g(values) for g in getters])


_Leaf = tuple[TagRef | None, int, bool, Matcher | None]


def _leaf(part: _Part) -> _Leaf | None:
    """A child `_conjunction` tests itself: a slot, a slot under "!", or an item (its matcher)."""
    if part[0] == "slot":
        return part[2], part[1], True, None
    if part[0] == "!" and part[1][0][0] == "slot":
        return part[1][0][2], part[1][0][1], False, None
    if part[0] == "item":
        return None, 0, True, part[2]
    return None


def _conjunction(tests: list[tuple[TagRef | None, str, bool, Matcher | None]]) -> Matcher:
    """``&`` of equality items on slots, each maybe under ``!``, and of other items' matchers, in
    one closure: each tested as `_equal` (negated if not ``want``) or its matcher, in order."""
    steps = tuple([(tag.key if tag is not None else None, value.lower(), want, f, k)
                   for k, (tag, value, want, f) in enumerate(tests)])
    slow: dict[int, Compare] = {}

    def conjunction(attrs: Mapping[str, Attribute]) -> bool:
        for key, folded, want, f, k in steps:
            if key is None:
                assert f is not None
                if not f(attrs):
                    return False
                continue
            a = attrs.get(key)
            if a is None:
                if want:
                    return False
                continue
            values = a.values
            if values and type(values[0]) is str:
                hit = folded in a.folded
            else:
                node = slow.get(k)
                if node is None:  # other types read the value as the tree does, once
                    tag, value, _, _ = tests[k]
                    assert tag is not None
                    node = slow[k] = Compare(tag, "=", FilterValue.read(value, 0))
                hit = node._matches_one(a)
            if hit is not want:
                return False
        return True

    if len(steps) != 1 or steps[0][0] is None:
        return conjunction
    # One slot: what a residual usually is, "(!(id=4711))", tested without the loop.
    key, folded, want, _, _ = steps[0]
    assert key is not None

    def one(attrs: Mapping[str, Attribute]) -> bool:
        a = attrs.get(key)
        if a is None:
            return not want
        values = a.values
        if values and type(values[0]) is str:
            return (folded in a.folded) is want
        return conjunction(attrs)  # other types as the tree reads them
    return one


def _residual(part: _Part) -> Callable[[list[str]], Matcher | None] | None:
    """For a top-level ``&`` that `_conjunction` tests: a binder of the same without the equality
    items that give an index term (`_collect_terms`; for a slot, once its value is known:
    `_value_key`). A service found through the index carries those terms, and a term carried
    is the item met: both are the value's key (`attrs.attr_value_key`)."""
    if part[0] != "&":
        return None
    leaves = [_leaf(c) for c in part[1]]
    if not leaves or None in leaves:
        return None
    kept: list[_Leaf] = []
    slots: list[_Leaf] = []  # decided once bound, when the value has a key
    for c, leaf in zip(part[1], leaves, strict=True):
        assert leaf is not None
        if c[0] == "item":
            terms: set[tuple[str, str]] = set()
            _collect_terms(c[1], terms)
            if not terms:
                kept.append(leaf)
        elif leaf[2]:
            slots.append(leaf)
        else:
            kept.append(leaf)
    if len(kept) == len(leaves):
        return None

    def bind(values: list[str]) -> Matcher | None:
        tests = [(tag, values[at] if tag is not None else "", want, f) for tag, at, want, f in kept]
        tests += [(tag, values[at], True, None) for tag, at, _, _ in slots
                  if _value_key(values[at]) is None]
        return _conjunction(tests) if tests else None  # None: the terms decide it all
    return bind


def _constant(m: Matcher | None) -> Binder:
    assert m is not None
    return lambda values: m


def _part_terms(part: _Part, fixed: set[tuple[str, str]], slots: list[tuple[int, str]]) -> None:
    """`_collect_terms` of a shape: the items' terms now, the slots' once bound."""
    kind = part[0]
    if kind == "&":
        for c in part[1]:
            _part_terms(c, fixed, slots)
    elif kind == "slot":
        slots.append((part[1], part[2].key))
    elif kind == "item":
        _collect_terms(part[1], fixed)


def _shape(text: str, slots: int) -> _Shape | None:
    """The shape of a well-formed (stripped) predicate with `slots` slots, or None when
    `_fast_parse` would decline it (the text is then read by `Predicate.parse`)."""
    stack: list[tuple[str, list[_Part]]] = []
    root: _Part | None = None
    items = slot = 0
    try:
        for op, body, close, other in _TOKEN.findall(text):
            if root is not None or other:
                return None
            part: _Part
            if op:
                if len(stack) >= MAX_DEPTH:
                    return None
                stack.append((op, []))
                continue
            if close:
                if not stack:
                    return None
                kind, children = stack.pop()
                if not children or (kind == "!" and len(children) != 1):
                    return None
                part = (kind, children)
            else:
                items += 1
                if len(stack) >= MAX_DEPTH:
                    return None
                m = _SLOT_BODY.fullmatch(body)
                if m is not None:
                    part = ("slot", slot, _tag_ref(m.group(1)))
                    slot += 1
                else:
                    node, f = _fast_item(body)
                    part = ("item", node, f)
            if stack:
                top = stack[-1]
                if top[0] == "!" and top[1]:
                    return None
                top[1].append(part)
            else:
                root = part
    except (SLPValueError, _Decline):
        return None
    if root is None or stack or slot != slots:
        return None
    match, bind = _binder(root)
    if bind is None:
        return None
    fixed: set[tuple[str, str]] = set()
    slot_terms: list[tuple[int, str]] = []
    _part_terms(root, fixed, slot_terms)
    return _Shape(items, bind, frozenset(fixed), tuple(slot_terms), _residual(root))


def prepare(s: str, max_items: int = MAX_ITEMS) -> Bound | None:
    """`s` bound through its shape when that shape was met before, else None: the caller then
    uses `Predicate.parse`, which also reports errors. Evaluates as `Predicate.parse(s)` does."""
    text = s.strip(WHITESPACE)
    if len(text) > _SHAPE_TEXT:
        return None
    parts = _SLOT.split(text)
    if len(parts) == 1:
        return None
    values = parts[2::3]
    del parts[2::3]
    key = tuple(parts)
    shape = _SHAPES.get(key, _MISSING)
    if shape is _MISSING:
        # Prepared once met twice, so that shapes asked once do not push out those that recur.
        seen = hash(key)
        if seen not in _SHAPES_SEEN:
            if len(_SHAPES_SEEN) >= 8 * _SHAPE_CACHE_SIZE:
                _SHAPES_SEEN.clear()
            _SHAPES_SEEN.add(seen)
            return None
        shape = _shape(text, len(values))
        if len(_SHAPES) >= _SHAPE_CACHE_SIZE:
            del _SHAPES[next(iter(_SHAPES))]
        _SHAPES[key] = shape
    if shape is None or shape.items > max_items:
        return None
    terms = shape.terms
    if shape.slot_terms:
        more = [(tag, k) for at, tag in shape.slot_terms if (k := _value_key(values[at])) is not None]
        if more:
            terms = terms.union(more)
    return Bound(s, shape.items, terms, shape.bind, values, shape.residual)
