"""Hypothesis strategies for SLPv2 message values (`sipmob.slp.messages`), one per message type.

Every value drawn here can be encoded by `sipmob.slp.wire.encode` and decodes back to itself:
strings are valid Unicode, numbers fit their fields, flags are the defined ones, URL entries have
the reserved byte 0, and extensions are optional ones unless asked for. Sizes are kept small so
that tests stay fast; pass larger ``max_size`` where size matters.

    from tests.unit.slp.strategies import messages, srv_rqsts
"""

from __future__ import annotations

from hypothesis import strategies as st

from sipmob.slp.messages import (
    AttrRply,
    AttrRqst,
    AuthBlock,
    DAAdvert,
    ErrorCode,
    Extension,
    Flags,
    FunctionId,
    Header,
    Message,
    SAAdvert,
    SrvAck,
    SrvDeReg,
    SrvReg,
    SrvRply,
    SrvRqst,
    SrvTypeRply,
    SrvTypeRqst,
    UrlEntry,
)

__all__ = [
    "STRATEGIES",
    "attr_rplys",
    "attr_rqsts",
    "auth_blocks",
    "da_adverts",
    "error_codes",
    "extensions",
    "flags",
    "headers",
    "language_tags",
    "messages",
    "sa_adverts",
    "slp_strings",
    "srv_acks",
    "srv_deregs",
    "srv_regs",
    "srv_rplys",
    "srv_rqsts",
    "srv_type_rplys",
    "srv_type_rqsts",
    "url_entries",
]

_U16 = st.integers(0, 0xFFFF)
_U32 = st.integers(0, 0xFFFFFFFF)


def slp_strings(max_size: int = 24) -> st.SearchStrategy[str]:
    """Any Unicode text (UTF-8 on the wire), short by default."""
    return st.text(max_size=max_size)


def language_tags() -> st.SearchStrategy[str]:
    """§8: 1*8ALPHA *("-" 1*8ALPHA)."""
    return st.from_regex(r"\A[a-zA-Z]{1,8}(-[a-zA-Z]{1,8}){0,2}\Z")


def flags() -> st.SearchStrategy[Flags]:
    """Any combination of the three defined flags (§8), never a reserved bit."""
    return st.sampled_from([Flags(v) for v in range(0, 0x10000, 0x2000)])


def error_codes() -> st.SearchStrategy[ErrorCode]:
    return st.sampled_from(list(ErrorCode))


def extensions(mandatory: bool = False, max_data: int = 16) -> st.SearchStrategy[Extension]:
    """Extensions with optional IDs (§9.1), or with mandatory ones (0x4000-0x7FFF) if asked."""
    ids = (st.integers(0x4000, 0x7FFF) if mandatory
           else st.one_of(st.integers(0, 0x3FFF), st.integers(0x8000, 0xFFFF)))
    return st.builds(Extension, ids, st.binary(max_size=max_data))


def headers(function_id: FunctionId,
            exts: st.SearchStrategy[Extension] | None = None) -> st.SearchStrategy[Header]:
    return st.builds(Header, st.just(function_id), _U16, language_tags(), flags(),
                     st.lists(exts if exts is not None else extensions(), max_size=3).map(tuple))


def auth_blocks() -> st.SearchStrategy[AuthBlock]:
    """§9.2 blocks with arbitrary BSDs and opaque authenticators (nothing here verifies them)."""
    return st.builds(AuthBlock, _U16, _U32, slp_strings(12), st.binary(max_size=40))


def _auths() -> st.SearchStrategy[tuple[AuthBlock, ...]]:
    return st.lists(auth_blocks(), max_size=3).map(tuple)


def url_entries() -> st.SearchStrategy[UrlEntry]:
    return st.builds(UrlEntry, slp_strings(40), _U16, _auths())


def _h(function_id: FunctionId) -> st.SearchStrategy[Header]:
    return headers(function_id)


def srv_rqsts() -> st.SearchStrategy[SrvRqst]:
    s = slp_strings
    return st.builds(SrvRqst, _h(FunctionId.SrvRqst), s(), s(), s(), s(), s())


def srv_rplys() -> st.SearchStrategy[SrvRply]:
    return st.builds(SrvRply, _h(FunctionId.SrvRply), error_codes(),
                     st.lists(url_entries(), max_size=5).map(tuple))


def srv_regs() -> st.SearchStrategy[SrvReg]:
    s = slp_strings
    return st.builds(SrvReg, _h(FunctionId.SrvReg), url_entries(), s(), s(), s(), _auths())


def srv_deregs() -> st.SearchStrategy[SrvDeReg]:
    s = slp_strings
    return st.builds(SrvDeReg, _h(FunctionId.SrvDeReg), s(), url_entries(), s())


def srv_acks() -> st.SearchStrategy[SrvAck]:
    return st.builds(SrvAck, _h(FunctionId.SrvAck), error_codes())


def attr_rqsts() -> st.SearchStrategy[AttrRqst]:
    s = slp_strings
    return st.builds(AttrRqst, _h(FunctionId.AttrRqst), s(), s(), s(), s(), s())


def attr_rplys() -> st.SearchStrategy[AttrRply]:
    return st.builds(AttrRply, _h(FunctionId.AttrRply), error_codes(), slp_strings(), _auths())


def da_adverts() -> st.SearchStrategy[DAAdvert]:
    s = slp_strings
    return st.builds(DAAdvert, _h(FunctionId.DAAdvert), error_codes(), _U32, s(), s(), s(), s(),
                     _auths())


def srv_type_rqsts() -> st.SearchStrategy[SrvTypeRqst]:
    s = slp_strings
    return st.builds(SrvTypeRqst, _h(FunctionId.SrvTypeRqst), s(), st.none() | s(), s())


def srv_type_rplys() -> st.SearchStrategy[SrvTypeRply]:
    return st.builds(SrvTypeRply, _h(FunctionId.SrvTypeRply), error_codes(), slp_strings())


def sa_adverts() -> st.SearchStrategy[SAAdvert]:
    s = slp_strings
    return st.builds(SAAdvert, _h(FunctionId.SAAdvert), s(), s(), s(), _auths())


# One strategy per message type, keyed by the type.
STRATEGIES: dict[type, st.SearchStrategy[Message]] = {
    SrvRqst: srv_rqsts(),
    SrvRply: srv_rplys(),
    SrvReg: srv_regs(),
    SrvDeReg: srv_deregs(),
    SrvAck: srv_acks(),
    AttrRqst: attr_rqsts(),
    AttrRply: attr_rplys(),
    DAAdvert: da_adverts(),
    SrvTypeRqst: srv_type_rqsts(),
    SrvTypeRply: srv_type_rplys(),
    SAAdvert: sa_adverts(),
}


def messages() -> st.SearchStrategy[Message]:
    """Any of the eleven SLPv2 messages."""
    return st.one_of(*STRATEGIES.values())
