"""Predicates: LDAPv3 search filters as SLP evaluates them (RFC 2608 §8.1, RFC 2254)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from sipmob.slp import predicate
from sipmob.slp.attrs import (
    Attribute,
    AttrParseError,
    Opaque,
    escape_tag,
    escape_value,
    index_keys,
    parse_attr_list,
)
from sipmob.slp.names import SLPValueError
from sipmob.slp.predicate import MAX_DEPTH, Predicate, PredicateError

ATTRS = parse_attr_list(
    r"(room=Living Room),(floor=2),(codecs=PCMU,opus,G722),(display=TRUE),(width=1920,1280),"
    r"(name=  Big  Screen TV),video,(key=\FF\00\01),(temp=-5),(label=a\2ab)")

SEMANTICS = [
    # equality on strings: folded case and white space
    ("(room=living room)", True),
    ("(room=LIVING ROOM)", True),
    ("(room=  living   room )", True),
    ("(room=livingroom)", False),
    ("(room=kitchen)", False),
    ("(name=big screen tv)", True),
    # multi-valued: any value
    ("(codecs=opus)", True),
    ("(codecs=g722)", True),
    ("(codecs=speex)", False),
    # integers
    ("(floor=2)", True),
    ("(floor=02)", True),
    ("(floor= 2 )", True),
    ("(floor=3)", False),
    ("(floor=-2)", False),
    ("(floor>=2)", True),
    ("(floor>=3)", False),
    ("(floor<=2)", True),
    ("(floor<=1)", False),
    ("(temp<=-5)", True),
    ("(temp>=-4)", False),
    ("(temp=-05)", True),
    ("(width>=1900)", True),
    ("(width<=1300)", True),
    ("(width<=1000)", False),
    ("(width=1280)", True),
    ("(floor=two)", False),   # not an integer: type mismatch is false
    ("(floor=2*)", False),    # wildcards apply to strings only
    ("(floor~=2)", True),
    # booleans
    ("(display=true)", True),
    ("(display=TRUE)", True),
    ("(display=false)", False),
    ("(display=1)", False),
    ("(display>=true)", False),
    ("(display<=true)", False),
    ("(display~=true)", True),
    # string ordering on the folded form
    ("(room>=living)", True),
    ("(room<=living)", False),
    ("(room<=m)", True),
    ("(room>=m)", False),
    ("(codecs<=PCMU)", True),
    # substring wildcards
    ("(room=liv*)", True),
    ("(room=*room)", True),
    ("(room=*ing*)", True),
    ("(room=l*g r*m)", True),
    ("(room=LIVING*)", True),
    ("(room=*kitchen*)", False),
    ("(room=room*)", False),
    ("(codecs=pc*)", True),
    ("(name=big   screen*)", True),
    # escaped star is literal
    (r"(label=a\2ab)", True),
    (r"(label=a\2a*)", True),
    (r"(room=living\2a)", False),
    # presence
    ("(video=*)", True),
    ("(room=*)", True),
    ("(missing=*)", False),
    # keyword attributes have no value to compare
    ("(video=true)", False),
    ("(video=video)", False),
    ("(video>=a)", False),
    # missing attributes: false, and so true under "!"
    ("(missing=1)", False),
    ("(missing>=0)", False),
    ("(!(missing=1))", True),
    # approximate: folded, white space ignored
    ("(room~=livingroom)", True),
    ("(room~=LIVING   ROOM)", True),
    ("(room~=living)", False),
    # opaque: bytewise, "=" only
    (r"(key=\FF\00\01)", True),
    (r"(key=\ff\00\01)", True),
    (r"(key=\FF\00)", False),
    ("(key=x)", False),
    (r"(key>=\FF\00)", False),
    (r"(key~=\FF\00\01)", False),
    (r"(room=\FF\00)", False),
    # wildcards and folding in tags
    ("(cod*=opus)", True),
    ("(*oor=2)", True),
    ("(w*=1920)", True),
    ("(x*=*)", False),
    ("(*=*)", True),
    ("(ROOM=living room)", True),
    ("( room =living room)", True),
    # boolean operators, nesting, white space between filters
    ("(&(floor=2)(display=true))", True),
    ("(&(floor=2)(display=false))", False),
    ("(|(floor=3)(display=true))", True),
    ("(|(floor=3)(display=false))", False),
    ("(!(floor=2))", False),
    ("(!(floor=3))", True),
    ("(&(floor=2))", True),
    ("(|(floor=3))", False),
    ("(!(!(video=*)))", True),
    ("( & (floor=2) (room=living room) )", True),
    ("(&(floor=2)(|(x=1)(!(y=2))))", True),
    ("(&(|(room=kitchen)(room=living*))(!(codecs=speex))(width>=1900))", True),
    ("(&(|(room=kitchen)(room=hall*))(!(codecs=speex)))", False),
    ("(|(&(floor=2)(temp>=0))(&(floor=2)(temp<=0)))", True),
]


@pytest.mark.parametrize(("text", "expected"), SEMANTICS)
def test_predicate_semantics(text: str, expected: bool) -> None:
    assert Predicate.parse(text).matches(ATTRS) is expected


def test_semantics_table_covers_enough_cases() -> None:
    assert len(SEMANTICS) >= 60


def test_empty_predicate_matches_everything() -> None:
    assert Predicate.parse("").matches({}) and Predicate.parse("  ").matches(ATTRS)


def test_predicate_on_service_without_attributes_is_false() -> None:
    assert not Predicate.parse("(a=1)").matches({})


# RFC 2254 §5 examples, against attributes made for them -----------------------------------

RFC2254_ATTRS = parse_attr_list(
    r"(cn=Babs Jensen),(objectClass=Person),(sn=Jensen),(o=University of Michigan),"
    r"(o2=Parens R Us \28for all your parenthetical needs\29),(star=a\2ab),"
    r"(filename=C:\5cMyFile),(bin=\00\00\00\04),(sn2=Lu\c4\8di\c4\87)")


@pytest.mark.parametrize(("text", "expected"), [
    ("(cn=Babs Jensen)", True),
    ("(!(cn=Tim Howes))", True),
    ("(&(objectClass=Person)(|(sn=Jensen)(cn=Babs J*)))", True),
    ("(o=univ*of*mich*)", True),
    (r"(o2=Parens R Us \28for all your parenthetical needs\29)", True),
    (r"(star=*\2A*)", True),
    (r"(filename=C:\5cMyFile)", True),
    (r"(bin=\00\00\00\04)", True),
    (r"(sn2=Lu\c4\8di\c4\87)", True),
    ("(cn=Tim Howes)", False),
])
def test_rfc2254_examples(text: str, expected: bool) -> None:
    assert Predicate.parse(text).matches(RFC2254_ATTRS) is expected


# malformed predicates ---------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "(", ")", "()", "( )", "(a=1", "a=1", "(a=1))", "(a=1)(b=2)", "(a=1) x",
    "(&)", "(|)", "(!)", "(!(a=1)(b=2))", "(&(a=1)x)", "(&a=1)",
    "(a)", "(=1)", "( =1)", "(a<1)", "(a>1)", "(a~1)", "(a!=1)", "(a,b=1)", "(a_b=1)",
    "(a=)", "(a= )", r"(a=\zz)", r"(a=x\2)", r"(a=\C3)", r"(a=\FF)", r"(a=\FF00)",
    "(a~=x*)", "(a>=1*)", "(a<=*)", "(a=b(c)", "(a=b)c)",
])
def test_malformed_predicates_are_rejected(text: str) -> None:
    with pytest.raises(PredicateError):
        Predicate.parse(text)


def test_predicate_error_is_an_slp_value_error() -> None:
    with pytest.raises(SLPValueError):
        Predicate.parse("(a=1")


def test_deepest_allowed_nesting_parses() -> None:
    depth = MAX_DEPTH - 1
    assert Predicate.parse("(!" * depth + "(a=1)" + ")" * depth).matches({}) is (depth % 2 == 1)


@pytest.mark.parametrize("op", ["!", "&", "|"])
def test_nesting_beyond_the_cap_is_rejected(op: str) -> None:
    with pytest.raises(PredicateError):
        Predicate.parse(f"({op}" * MAX_DEPTH + "(a=1)" + ")" * MAX_DEPTH)


@pytest.mark.parametrize("op", ["!", "&"])
def test_ten_thousand_deep_nesting_is_a_parse_error_not_a_crash(op: str) -> None:
    with pytest.raises(PredicateError):
        Predicate.parse(f"({op}" * 10_000 + "(a=1)" + ")" * 10_000)


@given(st.text(alphabet="()&|!=~<>*\\ab1F ", max_size=30))
@settings(max_examples=200)
def test_parse_raises_only_predicate_error(text: str) -> None:
    try:
        Predicate.parse(text).matches(ATTRS)
    except PredicateError:
        pass


# index terms --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "terms"), [
    ("(a=1)", {("a", "1")}),
    ("(&(a=1)(B=Foo  Bar))", {("a", "1"), ("b", "foo bar")}),
    ("(&(a=1)(&(b=2)(c=3)))", {("a", "1"), ("b", "2"), ("c", "3")}),
    ("(&(a=1)(|(b=2)(c=3)))", {("a", "1")}),
    ("(&(a=1)(!(b=2)))", {("a", "1")}),
    ("(a=TRUE)", {("a", "true")}),
    ("(a= -7 )", {("a", "-7")}),
    (r"(a=\FF\0A)", {("a", r"\ff\0a")}),
    (r"(a=x\2ay)", {("a", "x*y")}),
    ("(|(a=1)(b=2))", set()),
    ("(!(a=1))", set()),
    ("(a=1*)", set()),
    ("(a*=1)", set()),
    ("(a>=1)", set()),
    ("(a~=1)", set()),
    ("(a=*)", set()),
    ("(a=012)", set()),   # equals the integer 12 and the string "012": no single key
    ("(a=-0)", set()),
    ("", set()),
])
def test_index_terms(text: str, terms: set[tuple[str, str]]) -> None:
    assert Predicate.parse(text).index_terms() == terms


def _filter_text(s: str) -> str:
    # A string value written as a predicate value: SLP escapes plus the LDAP wildcard.
    return escape_value(s).replace("*", r"\2A")


_TAGS = ["a", "B", "c d"]
_STRINGS = ["x", "X ", " y", "Hello World", "hello  world", " 01", "a*b", "TRUE "]
_values = st.one_of(
    st.lists(st.integers(-3, 20), min_size=1, max_size=3).map(tuple),
    st.lists(st.booleans(), min_size=1, max_size=2).map(tuple),
    st.lists(st.sampled_from(_STRINGS), min_size=1, max_size=3).map(tuple),
    st.lists(st.sampled_from([b"\x00", b"\x0a\xff"]).map(Opaque), min_size=1, max_size=2).map(tuple),
    st.just(()),
)
_attr_sets = st.lists(st.builds(Attribute, st.sampled_from(_TAGS), _values),
                      min_size=1, max_size=3, unique_by=lambda a: a.key).map(
                          lambda xs: {a.key: a for a in xs})


def _spell(draw: st.DrawFn, v: object) -> str:
    """A filter value equal to ``v``, spelled in one of the ways the RFCs allow."""
    if isinstance(v, bool):
        return draw(st.sampled_from(["true", "TRUE", " True "] if v else ["false", "FALSE"]))
    if isinstance(v, int):
        return draw(st.sampled_from([str(v), f" {v} ", f"{'-' if v < 0 else ''}0{abs(v)}"]))
    if isinstance(v, Opaque):
        wire = v.wire()
        return draw(st.sampled_from([wire, wire.lower()]))
    assert isinstance(v, str)
    return _filter_text(draw(st.sampled_from([v, v.upper(), v.lower(), f"  {v} "])))


@st.composite
def _equality_predicates(draw: st.DrawFn, attrs: dict[str, Attribute]) -> str:
    """Equality items under (possibly nested) "&", some taken from ``attrs`` so that they match."""
    items = []
    for _ in range(draw(st.integers(1, 4))):
        valued = [a for a in attrs.values() if a.values]
        if valued and draw(st.integers(0, 3)):
            a = draw(st.sampled_from(valued))
            tag, text = draw(st.sampled_from([a.tag, a.tag.upper()])), _spell(draw, draw(
                st.sampled_from(a.values)))
        else:
            tag = draw(st.sampled_from(_TAGS))
            text = draw(st.sampled_from(["1", "01", "-0", "true", "x", "hello world", r"\FF\00",
                                         _filter_text(" 01")]))
        items.append(f"({tag}={text})")
    extra = draw(st.sampled_from(["", "", "(|(a=1)(b=*))", "(!(c d=x))"]))
    if len(items) > 1 and draw(st.booleans()):
        return f"(&{items[0]}(&{''.join(items[1:])}){extra})"
    if len(items) == 1 and not extra:
        return items[0]
    return f"(&{''.join(items)}{extra})"


@given(st.data())
@settings(max_examples=200, deadline=None)  # a loaded machine must not fail it
def test_matching_services_have_every_index_term_among_their_keys(data: st.DataObject) -> None:
    attrs = data.draw(_attr_sets)
    pred = Predicate.parse(data.draw(_equality_predicates(attrs)))
    if pred.matches(attrs):
        event("matched")
        keys = {k for a in attrs.values() for k in index_keys(a)}
        assert pred.index_terms() <= keys


def test_index_terms_find_a_matching_service_by_its_keys() -> None:
    attrs = parse_attr_list("(room=Living  Room),(floor=2),(tv=true)")
    pred = Predicate.parse("(&(ROOM=living room)(floor=2)(tv=TRUE))")
    assert pred.matches(attrs)
    assert pred.index_terms() == {("room", "living room"), ("floor", "2"), ("tv", "true")}
    assert pred.index_terms() <= {k for a in attrs.values() for k in index_keys(a)}


# The tokenizer and compiled closures against the recursive descent and the tree ------------------


_ITEM_TEXT = st.builds(
    lambda tag, op, value: f"{tag}{op}{value}",
    st.sampled_from(["a", "B", "c d", " a ", "c*", "*", "x", r"a\2a", "a!", "(a"]),
    st.sampled_from(["=", "~=", "<=", ">=", "<", "=="]),
    st.sampled_from(["1", "01", "-3", " 7 ", "true", "FALSE", "x", "X ", "hello  world", "a*b",
                     "*", "*x*", "h*o*d", r"\FF\00", r"\ff\0a\ff", r"\2a", r"x\2", "", " ",
                     "y(", "01*"]))


@st.composite
def _filters(draw: st.DrawFn, depth: int = 0) -> str:
    ws = draw(st.sampled_from(["", "", " ", "\t"]))
    if depth > 3 or draw(st.integers(0, 2)) == 0:
        return f"{ws}({draw(_ITEM_TEXT)}){ws}"
    op = draw(st.sampled_from(["&", "|", "!", "!!"]))
    if op == "!":
        return f"({ws}!{draw(_filters(depth + 1))})"
    if op == "!!":  # two filters under "!": malformed
        return f"(!{draw(_filters(depth + 1))}{draw(_filters(depth + 1))})"
    children = "".join(draw(_filters(depth + 1)) for _ in range(draw(st.integers(0, 3))))
    return f"({op}{ws}{children}){ws}"


def _outcome(parse: object, text: str) -> object:
    try:
        return parse(text)  # type: ignore[operator]
    except PredicateError as e:
        return str(e)


@given(st.one_of(_filters(), st.text(alphabet="()&|!=~<>*\\ab1F ", max_size=30)), _attr_sets)
@settings(max_examples=1500)
def test_fast_parse_and_compiled_match_agree_with_the_reference(
        text: str, attrs: dict[str, Attribute]) -> None:
    fast = _outcome(Predicate.parse, text)
    slow = _outcome(Predicate.parse_slowly, text)
    if isinstance(slow, str):
        event("malformed")
        assert fast == slow  # the same error, worded with the same offset
        return
    assert isinstance(fast, Predicate) and isinstance(slow, Predicate)
    assert fast.root == slow.root and fast.items == slow.items and fast.terms == slow.terms
    for candidate in (attrs, ATTRS, RFC2254_ATTRS, {}):
        expected = slow.matches_by_tree(candidate)
        event(f"matches: {expected}")
        assert fast.matches(candidate) is expected


@pytest.mark.parametrize(("text", "_"), SEMANTICS)
def test_compiled_match_agrees_with_the_tree_on_the_semantics_table(text: str, _: bool) -> None:
    p = Predicate.parse(text)
    assert p.matches(ATTRS) is p.matches_by_tree(ATTRS)
    assert p == Predicate.parse_slowly(text)


# Prepared shapes (`prepare`) against the recursive descent and the tree ---------------------------


_SLOT_VALUES = st.sampled_from(["1", "01", "0", "00", "7", "20", "x", "X", "y", "true", "FALSE",
                                "Hello", "a" * 64, "1" * 65, "x y", "*"])


@st.composite
def _shaped(draw: st.DrawFn, depth: int = 0) -> list[object]:
    """A filter as pieces: text, and ``(tag,)`` for an equality item whose value varies."""
    ws = draw(st.sampled_from(["", "", " "]))
    if depth > 3 or draw(st.integers(0, 2)) == 0:
        if draw(st.booleans()):
            return [f"{ws}(", (draw(st.sampled_from(["a", "B", "c d", " a ", "x"])),), f"){ws}"]
        return [f"{ws}({draw(_ITEM_TEXT)}){ws}"]
    op = draw(st.sampled_from(["&", "|", "!", "&"]))
    count = 1 if op == "!" else draw(st.integers(1, 3))
    out: list[object] = [f"({op}{ws}"]
    for _ in range(count):
        out += draw(_shaped(depth + 1))
    return [*out, f"){ws}"]


@given(_shaped(), st.lists(st.lists(_SLOT_VALUES, min_size=12, max_size=12), min_size=3,
                           max_size=3), _attr_sets)
@settings(max_examples=1000, deadline=None)  # a loaded machine must not fail it
def test_prepared_shapes_agree_with_the_reference(pieces: list[object], values: list[list[str]],
                                                  attrs: dict[str, Attribute]) -> None:
    for row in values:  # the same shape with other values: the second and third are bound
        slots = itertools.cycle(row)
        text = "".join(p if isinstance(p, str) else f"{p[0]}={next(slots)}" for p in pieces)
        bound = predicate.prepare(text)
        slow = _outcome(Predicate.parse_slowly, text)
        if bound is None:
            event("read as text")
            continue
        event("bound")
        assert isinstance(slow, Predicate), text  # only well-formed text is ever bound
        assert bound.items == slow.items and bound.terms == slow.terms
        for candidate in (attrs, ATTRS, RFC2254_ATTRS, {}):
            assert bound.match(candidate) is slow.matches_by_tree(candidate), (text, candidate)
        # What the index finds carries every term: there `residual` must agree as well. The
        # services are built to carry them, plus, in turn, each of the drawn attributes.
        carrying = _carrying(bound.terms)
        if carrying is None:
            continue
        for extra in (None, *attrs.values(), *ATTRS.values()):
            candidate = dict(carrying)
            if extra is not None and extra.key not in candidate:
                candidate[extra.key] = extra
            if not bound.terms <= {k for a in candidate.values() for k in index_keys(a)}:
                continue
            event("residual checked")
            residual = bound.residual is None or bound.residual(candidate)  # None: all match
            assert residual is slow.matches_by_tree(candidate), (text, candidate)


def _carrying(terms: frozenset[tuple[str, str]]) -> dict[str, Attribute] | None:
    """Attributes carrying exactly the index `terms`, or None when no attribute list can."""
    values: dict[str, list[str]] = {}
    for tag, key in sorted(terms):
        values.setdefault(tag, []).append(key)
    try:
        return parse_attr_list(",".join(f"({escape_tag(t)}={','.join(escape_value(v) for v in vs)})"
                                        for t, vs in values.items()))
    except (AttrParseError, SLPValueError):
        return None  # mixed types in one attribute, say
